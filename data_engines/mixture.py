"""Mixtures: a YAML spec of sources, tasks and weights -> the stream of training examples that
SFT and GRPO read.

    seed: 0
    codec: center
    sources:
      - name: shapes
        synth: {mode: shapes, size: 224, negative_prob: 0.2}   # scenes drawn fresh, in memory
        weight: 4
        tasks: {grounding: 3, referring: 1, pointing: 1, visual_prompting: 1,
                detect_all: {weight: 1, granularity: color kind}}   # a weight and the task's options
      - name: coco
        path: coco/annotations/instances_train2017.json       # any format read_dataset reads
        image_root: coco/train2017
        weight: 2
        tasks: {grounding: 2, pointing: 1}
        negatives: {k: 2, prob: 0.3}                          # add rule foils as negative phrases

Relative paths are taken from the spec file's folder.

Negatives (docs/negatives.md): a sample's own negatives (its file's, or the synthetic engine's hard
distractors with ``negative_prob``) are dropped with probability ``negative_drop_prob`` (spec level,
0.5 by default; a source may set its own), so that positive-only prompts stay trained. ``negatives:
{k, prob}`` adds foils of the sample's phrases: rule foils, or a language model's with ``llm: {path:
FOLDER}`` or ``llm: {endpoint: URL, model: NAME}`` (plus ``cache_dir``, ``method``). A synthetic
shapes source with ``negative_images: {prob: 0.2, packing: separate | concat | both}`` replaces that
share of its scenes by negative images (data_engines.negatives_image.packed_negative). Every example
carries the ``negatives`` its prompt holds. Each step picks a source by weight, a task
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

from .negatives_image import PACKINGS, packed_negative
from .negatives_text import ChatCompletionsGenerator, LLMFoiler, RuleFoiler, TransformersGenerator, add_negative_phrases
from .readers import read_dataset
from .synth import generate_scene
from .tasks import TASKS, TaskNotApplicable, build_example, check_options

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
    negative_drop_prob: float | None = None  # None: the spec's
    negative_images: dict | None = None
    task_options: dict[str, dict] = field(default_factory=dict)  # task -> its options (data_engines.tasks)
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
            if self.negative_images and rng.random() < float(self.negative_images.get("prob", 1.0)):
                packing = self.negative_images.get("packing", "both")
                packing = rng.choice(PACKINGS) if packing == "both" else packing
                image, sample = packed_negative(rng.getrandbits(63), packing, rng=rng, **options)
            else:
                image, sample = generate_scene(rng.getrandbits(63), **options)
            sample["image"] = image
            return sample
        return _copy(rng.choice(self.samples))


def llm_foiler(spec: dict, source: str) -> LLMFoiler:
    """An LLM foil engine from a source's ``negatives.llm``: ``path`` (a local causal LM folder) or
    ``endpoint`` and ``model`` (an OpenAI-compatible server), plus ``cache_dir`` and ``method``."""
    spec = dict(spec)
    if "path" in spec:
        generator = TransformersGenerator(spec.pop("path"), device=spec.pop("device", "cpu"))
    elif "endpoint" in spec and "model" in spec:
        generator = ChatCompletionsGenerator(spec.pop("endpoint"), spec.pop("model"))
    else:
        raise ValueError(f"mixture source {source!r}: negatives.llm needs 'path' or 'endpoint' and 'model'")
    return LLMFoiler(generator, **spec)


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
    options = {t: dict(w) for t, w in tasks.items() if isinstance(w, dict)}  # {weight: 1, option: value, ...}
    tasks = {t: options[t].pop("weight", 1) if t in options else w for t, w in tasks.items()}
    try:
        options = {t: check_options(t, o) for t, o in options.items()}
    except ValueError as e:
        raise ValueError(f"mixture source {name!r}: {e}") from None
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
    negative_images = entry.get("negative_images")
    if negative_images is not None:
        modes = (synth or {}).get("modes") or [(synth or {}).get("mode", "shapes")]
        if synth is None or not set(modes) <= {"shapes", "single"}:
            raise ValueError(f"mixture source {name!r}: negative_images need a synth source of shapes or single scenes")
        if negative_images.get("packing", "both") not in (*PACKINGS, "both"):
            raise ValueError(f"mixture source {name!r}: negative_images packing must be one of {PACKINGS} or both, "
                             f"got {negative_images['packing']!r}")
    drop = entry.get("negative_drop_prob")
    if drop is not None and not 0 <= float(drop) <= 1:
        raise ValueError(f"mixture source {name!r}: negative_drop_prob must be in [0, 1], got {drop}")
    return Source(name=name, weight=weight, tasks={t: float(w) for t, w in tasks.items()}, synth=synth,
                  path=resolve(entry.get("path")), format=entry.get("format"),
                  image_root=resolve(entry.get("image_root")), check_images=entry.get("check_images", True),
                  negatives=entry.get("negatives"), task_options=options, negative_images=negative_images,
                  negative_drop_prob=None if drop is None else float(drop))


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
        self.negative_drop_prob = float(spec.get("negative_drop_prob", 0.5))
        if not 0 <= self.negative_drop_prob <= 1:
            raise ValueError(f"negative_drop_prob must be in [0, 1], got {self.negative_drop_prob}")
        self.sources = [_parse_source(e, base_dir, i) for i, e in enumerate(spec["sources"])]
        self.counts: Counter = Counter()
        self.source_counts: Counter = Counter()
        self.skipped: Counter = Counter()
        self._foilers: dict[str, RuleFoiler | LLMFoiler] = {}  # source name -> its foil engine

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
            drop = self.negative_drop_prob if source.negative_drop_prob is None else source.negative_drop_prob
            if sample.get("negatives") and drop and rng.random() < drop:
                del sample["negatives"]  # in place: GRPO reads the drawn sample back
            if source.negatives and rng.random() < float(source.negatives.get("prob", 1.0)):
                add_negative_phrases(sample, self._foiler(source), rng, int(source.negatives.get("k", 2)))
            try:
                example = build_example(sample, task, rng, codec=self.codec, paraphrase=self.paraphrase,
                                        options=source.task_options.get(task))
            except TaskNotApplicable:
                self.skipped[(source.name, task)] += 1
                continue
            example["source"] = source.name
            example["negatives"] = {k: list(v) for k, v in (sample.get("negatives") or {}).items()}
            self.counts[task] += 1
            self.source_counts[source.name] += 1
            return example
        raise ValueError(f"mixture source {source.name!r} failed the task {task!r} {MAX_SKIPS_IN_A_ROW} times in a "
                         f"row: its samples do not carry what {task!r} needs")

    def _foiler(self, source: Source) -> RuleFoiler | LLMFoiler:
        """The source's foil engine, built on first use: the shared rule engine, or its language model."""
        key = source.name if "llm" in source.negatives else ""
        if key not in self._foilers:
            self._foilers[key] = llm_foiler(source.negatives["llm"], source.name) if key else RuleFoiler()
        return self._foilers[key]

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
