"""Mixtures: a YAML spec of sources, tasks and weights -> the stream of training examples that
SFT and GRPO read.

    seed: 0
    codec: center
    sources:
      - name: shapes
        synth: {mode: shapes, size: 224, negative_prob: 0.2}   # scenes drawn fresh, in memory
        weight: 4
        tasks: {grounding: 3, referring: 1, pointing: 1, visual_prompting: 1}
      - name: coco
        path: coco/annotations/instances_train2017.json       # any format read_dataset reads
        image_root: coco/train2017
        weight: 2
        tasks: {grounding: 2, pointing: 1}
        negatives: {k: 2, prob: 0.3}                          # add rule foils as negative phrases

Relative paths are taken from the spec file's folder. Each step picks a source by weight, a task
by the source's task weights and a sample, then builds the example with data_engines.tasks. A
sample that cannot serve the drawn task is skipped and counted. ``Mixture.counts`` holds the number
of examples per task, ``skipped`` the skips per (source, task).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from .negatives_text import RuleFoiler, add_negative_phrases
from .readers import read_dataset
from .synth import generate_scene
from .tasks import TASKS, TaskNotApplicable, build_example

SYNTH_MIX = os.path.join(os.path.dirname(__file__), "configs", "synth_mix.yaml")  # the shipped example spec
MAX_SKIPS_IN_A_ROW = 200  # a (source, task) pair that keeps failing is a spec error, not bad luck


@dataclass
class Source:
    """One entry of the spec."""

    name: str
    weight: float
    tasks: dict[str, float]
    synth: dict | None = None
    path: str | None = None
    format: str | None = None
    image_root: str | None = None
    check_images: bool = True
    negatives: dict | None = None
    samples: list[dict] | None = field(default=None, repr=False)

    def load(self) -> None:
        if self.synth is None and self.samples is None:
            self.samples, report = read_dataset(self.path, self.format, self.image_root, self.check_images)
            if not self.samples:
                raise ValueError(f"mixture source {self.name!r}: no usable sample in {self.path}\n{report}")

    def draw(self, rng: random.Random) -> dict:
        if self.synth is not None:
            options = dict(self.synth)
            modes = options.pop("modes", None)
            if modes:
                options["mode"] = rng.choice(modes)
            image, sample = generate_scene(rng.getrandbits(63), **options)
            sample["image"] = image
            return sample
        return _copy(rng.choice(self.samples))


def _copy(sample: dict) -> dict:
    # Samples are shared between draws; builders and the negative engine must not change the original.
    out = dict(sample)
    if "negatives" in out:
        out["negatives"] = {k: list(v) for k, v in out["negatives"].items()}
    return out


def _parse_source(entry: dict, base_dir: str, index: int) -> Source:
    if not isinstance(entry, dict):
        raise ValueError(f"mixture source #{index} must be a mapping, got {entry!r}")
    name = entry.get("name") or f"source{index}"
    if ("synth" in entry) == ("path" in entry):
        raise ValueError(f"mixture source {name!r} needs exactly one of 'synth' or 'path'")
    tasks = entry.get("tasks") or {"grounding": 1}
    if isinstance(tasks, list):
        tasks = {t: 1 for t in tasks}
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"mixture source {name!r}: unknown tasks {unknown}; expected some of {TASKS}")
    if any(w < 0 for w in tasks.values()) or not sum(tasks.values()):
        raise ValueError(f"mixture source {name!r}: task weights must be >= 0 and not all 0")
    weight = float(entry.get("weight", 1.0))
    if weight <= 0:
        raise ValueError(f"mixture source {name!r}: weight must be positive, got {weight}")

    def resolve(p):
        return p if p is None or os.path.isabs(p) else os.path.join(base_dir, p)

    synth = entry.get("synth")
    if synth is not None and not isinstance(synth, dict):
        synth = {}
    return Source(name=name, weight=weight, tasks={t: float(w) for t, w in tasks.items()}, synth=synth,
                  path=resolve(entry.get("path")), format=entry.get("format"),
                  image_root=resolve(entry.get("image_root")), check_images=entry.get("check_images", True),
                  negatives=entry.get("negatives"))


class Mixture:
    """An endless, seeded stream of training examples drawn from weighted sources.

        mix = Mixture.from_yaml("data_engines/configs/synth_mix.yaml")
        examples = mix.take(1000)
        print(mix.report())
    """

    def __init__(self, spec: dict, base_dir: str = "."):
        if not isinstance(spec, dict) or not spec.get("sources"):
            raise ValueError("a mixture spec needs a non-empty 'sources' list")
        self.seed = int(spec.get("seed", 0))
        self.codec = spec.get("codec", "center")
        self.paraphrase = bool(spec.get("paraphrase", True))
        self.sources = [_parse_source(e, base_dir, i) for i, e in enumerate(spec["sources"])]
        self.counts: Counter = Counter()
        self.source_counts: Counter = Counter()
        self.skipped: Counter = Counter()
        self._foiler: RuleFoiler | None = None

    @classmethod
    def from_yaml(cls, path: str) -> Mixture:
        import yaml

        with open(path, encoding="utf-8") as f:
            spec = yaml.safe_load(f)
        return cls(spec, base_dir=os.path.dirname(os.path.abspath(path)))

    def stream(self, seed: int | None = None, worker: int = 0) -> Iterator[dict]:
        """Examples without end. Different ``worker`` ids give disjoint random streams."""
        rng = random.Random(f"{self.seed if seed is None else seed}:{worker}")
        for source in self.sources:
            source.load()
        weights = [s.weight for s in self.sources]
        while True:
            source = rng.choices(self.sources, weights)[0]
            task = rng.choices(list(source.tasks), list(source.tasks.values()))[0]
            yield self._example(source, task, rng)

    __iter__ = stream

    def _example(self, source: Source, task: str, rng: random.Random) -> dict:
        for _ in range(MAX_SKIPS_IN_A_ROW):
            sample = source.draw(rng)
            if source.negatives and rng.random() < float(source.negatives.get("prob", 1.0)):
                self._foiler = self._foiler or RuleFoiler()
                add_negative_phrases(sample, self._foiler, rng, int(source.negatives.get("k", 2)))
            try:
                example = build_example(sample, task, rng, codec=self.codec, paraphrase=self.paraphrase)
            except TaskNotApplicable:
                self.skipped[(source.name, task)] += 1
                continue
            example["source"] = source.name
            self.counts[task] += 1
            self.source_counts[source.name] += 1
            return example
        raise ValueError(f"mixture source {source.name!r} failed the task {task!r} {MAX_SKIPS_IN_A_ROW} times in a "
                         f"row: its samples do not carry what {task!r} needs")

    def take(self, n: int, seed: int | None = None, progress: bool = False) -> list[dict]:
        """The first ``n`` examples of the stream."""
        from tqdm import tqdm

        stream = self.stream(seed)
        return [next(stream) for _ in tqdm(range(n), desc="mix", unit="example", disable=not progress)]

    def report(self) -> str:
        """Examples per task and per source, and the skips."""
        total = sum(self.counts.values())
        lines = [f"{total} examples"]
        lines += [f"  task   {t:<18} {n:>8}  {n / max(total, 1):6.1%}" for t, n in sorted(self.counts.items())]
        lines += [f"  source {s:<18} {n:>8}" for s, n in sorted(self.source_counts.items())]
        lines += [f"  skipped {s}/{t}: {n}" for (s, t), n in sorted(self.skipped.items())]
        return "\n".join(lines)
