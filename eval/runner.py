"""The benchmark runner: read a benchmark spec, run a model on its data sets, score, report.

A spec is YAML (see eval/benchmarks/):

```yaml
name: coco-mini
protocol: strict            # or rexomni
batch_size: 8
datasets:
  - name: coco-val
    annotations: /data/coco/annotations/instances_val2017.json
    format: coco            # optional: the readers detect it
    image_root: /data/coco/val2017
    task: detection         # detection, detect_all, referring, pointing, visual_prompting, keypoint, language
    metrics: [f1, coco]     # optional: the task's defaults
    limit: 500              # optional: the first N samples
    ask: categories         # what the model is asked: the sample's categories, only the present ones,
                            # or each present phrase in a request of its own (referring comprehension)
    predict: {}             # optional keyword arguments for model.predict
    negatives: ask          # the sample's negative phrases: asked like categories (ask), or look-alikes
                            # not to find (exclude: left out; give: passed as negatives= and negative_boxes=;
                            # both score only the samples that have negative phrases)
    ood: false              # score each box's OOD score against the samples' held-out shapes
```

Predictions are cached in ``OUT/predictions/<dataset>.jsonl``, one line per sample, flushed per
batch: a re-run reads the cache and runs only the samples not in it, so a killed run resumes. The
cache is kept only for the same model and request (``<dataset>.fingerprint.json``: the model's name,
its weight files' sizes and times, the data set's options); another one starts it over.
An image that cannot be read is recorded as skipped (and not retried), counted, and left out of the
scores.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rexomni.tasks import get_task

from .data import Prediction, load_annotations
from .ood import detection_ood_metrics, distractor_hits
from .protocols import get_protocol
from .scoring import DEFAULT_METRICS, TASK_METRICS, score

logger = logging.getLogger(__name__)

# Benchmark tasks: each asks the core task it names or aliases (rexomni.tasks) and is scored by its metrics.
BENCHMARK_TASKS = tuple(DEFAULT_METRICS)
# What a data set asks: every category of the sample, the present phrases together, or each present phrase
# in a request of its own.
ASK = ("categories", "present", "each")
NEGATIVES = ("ask", "exclude", "give")  # what a data set does with a sample's negative phrases


@dataclass
class DatasetSpec:
    name: str
    annotations: str = ""
    task: str = "detection"
    format: str | None = None
    image_root: str | None = None
    metrics: list[str] | None = None
    limit: int | None = None
    ask: str = "categories"
    coco_style: bool | None = None
    predict: dict = field(default_factory=dict)
    # Scenes drawn by the synthetic engine instead of read from ``annotations``: generate_scene's
    # options plus ``n`` (scenes) and ``seed`` (scene i uses seed * 1000003 + i, as `rexomni data synth`).
    synth: dict | None = None
    # The sample's negative phrases: "ask" them like categories (language sets: descriptions of nothing),
    # or treat them as look-alikes that must not be found: not asked, their objects no ground truth, and
    # either left out ("exclude") or given to the model as negatives= with their boxes ("give": in the
    # prompt, unless predict says negatives_in_prompt: false); then only the samples that have negative
    # phrases are scored.
    negatives: str = "ask"
    ood: bool = False  # predict with ood=True and score the OOD score against the held-out shapes

    def __post_init__(self):
        if self.annotations and self.synth:
            raise ValueError(f"dataset {self.name!r}: give 'annotations' or 'synth', not both")
        if self.task not in BENCHMARK_TASKS:
            raise ValueError(f"dataset {self.name!r}: unknown task {self.task!r}; expected one of {BENCHMARK_TASKS}")
        if self.ask not in ASK:
            raise ValueError(f"dataset {self.name!r}: ask must be one of {ASK}, got {self.ask!r}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"dataset {self.name!r}: negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        unknown = set(self.metrics or []) - set(TASK_METRICS)
        if unknown:
            raise ValueError(f"dataset {self.name!r}: unknown metrics {sorted(unknown)}; known: {sorted(TASK_METRICS)}")


@dataclass
class BenchmarkSpec:
    name: str
    datasets: list[DatasetSpec]
    protocol: str = "strict"
    batch_size: int = 8
    # Tables of the report, each with a bar plot: {title, datasets: [names], metrics: [keys]}.
    tables: list[dict] = field(default_factory=list)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> BenchmarkSpec:
        """Read a spec; relative paths in it are taken from the spec's folder."""
        import yaml

        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
        if not isinstance(raw, Mapping) or not raw.get("datasets"):
            raise ValueError(f"benchmark spec {str(path)!r} needs a 'datasets' list")
        base = Path(path).resolve().parent
        datasets = []
        for i, d in enumerate(raw["datasets"]):
            if not isinstance(d, Mapping) or not ("annotations" in d or "synth" in d):
                raise ValueError(f"benchmark spec {str(path)!r}: dataset {i} needs 'annotations' or 'synth'")
            d = dict(d)
            d.setdefault("name", Path(d["annotations"]).stem if "annotations" in d else f"synth{i}")
            for key in ("annotations", "image_root"):
                if d.get(key) and not os.path.isabs(d[key]):
                    d[key] = str(base / d[key])
            try:
                datasets.append(DatasetSpec(**d))
            except TypeError as e:
                raise ValueError(f"benchmark spec {str(path)!r}: dataset {d['name']!r}: {e}") from None
        get_protocol(raw.get("protocol", "strict"))  # fail early on a bad name
        tables = list(raw.get("tables") or [])
        names = {d.name for d in datasets}
        for table in tables:
            if not isinstance(table, Mapping) or not {"title", "datasets", "metrics"} <= set(table):
                raise ValueError(f"benchmark spec {str(path)!r}: a table needs title, datasets and metrics: {table!r}")
            unknown = [d for d in table["datasets"] if d not in names]
            if unknown:
                raise ValueError(f"benchmark spec {str(path)!r}: table {table['title']!r} names unknown data sets "
                                 f"{unknown}")
        return cls(name=str(raw.get("name", Path(path).stem)), datasets=datasets,
                   protocol=raw.get("protocol", "strict"), batch_size=int(raw.get("batch_size", 8)), tables=tables)


# --------------------------------------------------------------------------- prediction cache


class PredictionCache:
    """An append-only JSONL of predictions, one line per sample key; ``path`` None keeps them in memory.

    ``fingerprint`` (JSON-able) says what the predictions depend on (:func:`run_fingerprint`); it is kept
    next to the file, and a file made under another fingerprint (another model, new weights in the same
    folder, other request options) is started over, not reused."""

    def __init__(self, path: str | os.PathLike | None = None, fingerprint: Mapping | None = None):
        self.path = Path(path) if path is not None else None
        self.lines: dict[str, dict] = {}
        if self.path is not None and fingerprint is not None:
            self._check_fingerprint(json.loads(json.dumps(fingerprint, sort_keys=True, default=str)))
        if self.path is not None and self.path.exists():
            self._read()

    def _check_fingerprint(self, fingerprint: dict) -> None:
        stamp = self.path.with_suffix(".fingerprint.json")
        if self.path.exists():
            previous = json.loads(stamp.read_text(encoding="utf-8")) if stamp.exists() else None
            if previous != fingerprint:
                logger.warning("%s holds predictions of another model or request; predicting again", self.path)
                self.path.unlink()
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(fingerprint, sort_keys=True, indent=1), encoding="utf-8")

    def _read(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the line a killed run was writing
                    logger.warning("%s:%d: unreadable cache line ignored (an interrupted write)", self.path, n)
                    continue
                if isinstance(record, dict) and "key" in record:
                    self.lines[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self.lines

    def write(self, records: list[dict]) -> None:
        if self.path is None:
            self.lines.update((record["key"], record) for record in records)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            if f.tell() and not self._ends_with_newline():
                f.write("\n")  # never glue a record onto a half-written line
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                self.lines[record["key"]] = record

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def predictions(self) -> dict[str, Prediction]:
        return {k: Prediction.from_dict(r) for k, r in self.lines.items() if not r.get("skipped")}

    def skipped(self) -> set[str]:
        return {k for k, r in self.lines.items() if r.get("skipped")}

    def clean_share(self) -> float | None:
        """The share of answers the parser read without a problem (None when no record says)."""
        counted = [r["problems"] for r in self.lines.values() if not r.get("skipped") and "problems" in r]
        return sum(not p for p in counted) / len(counted) if counted else None


# --------------------------------------------------------------------------- running a model


def asked_categories(sample: Mapping, ask: str = "categories") -> list[str]:
    """The phrases a sample asks the model about."""
    present = list(dict.fromkeys(str(o["phrase"]) for o in sample.get("objects", [])))
    if ask in ("present", "each"):
        return present
    categories = [str(c) for c in sample.get("categories") or []] or present
    negatives = [str(p) for p in (sample.get("negatives") or {}).get("phrases", [])]
    return list(dict.fromkeys(categories + negatives))


def _request(sample: Mapping, spec: DatasetSpec) -> dict[str, Any]:
    """Keyword arguments for ``model.predict`` for one sample (besides images and task)."""
    request: dict[str, Any] = {}
    if not get_task(spec.task).free_phrases:  # detect_all is asked nothing: the model names what it sees
        request["categories"] = asked_categories(sample, spec.ask)
    if spec.task == "visual_prompting":
        request["visual_prompt"] = sample.get("visual_prompt") or example_boxes(sample)
    negatives = sample.get("negatives") or {}
    if spec.negatives != "ask" and "categories" in request:
        request["categories"] = [c for c in request["categories"] if c not in set(negatives.get("phrases", []))]
    if spec.negatives == "give":
        request.update(negatives=list(negatives.get("phrases", [])), negative_boxes=list(negatives.get("boxes", [])))
    if spec.ood:
        request["ood"] = True
    return {**spec.predict, **request}


def without_negatives(sample: dict) -> dict:
    """The sample as a benchmark that treats its negative phrases as look-alikes scores it: their objects
    are no ground truth (they become ``distractors``) and they are no category; ``negatives`` stays, to be
    given to the model."""
    phrases = set((sample.get("negatives") or {}).get("phrases", []))
    if not phrases:
        return sample
    objects = sample.get("objects", [])
    return dict(sample, objects=[o for o in objects if o["phrase"] not in phrases],
                distractors=[o for o in objects if o["phrase"] in phrases],
                categories=[c for c in sample.get("categories") or [] if c not in phrases])


def example_boxes(sample: Mapping, per_phrase: int = 3) -> dict[str, list]:
    """A visual prompt from a sample's own ground truth: up to ``per_phrase`` boxes of each phrase
    (used when the data set gives no prompt of its own)."""
    prompt: dict[str, list] = {}
    for obj in sample.get("objects", []):
        if obj.get("bbox") is not None and len(prompt.setdefault(obj["phrase"], [])) < per_phrase:
            prompt[obj["phrase"]].append(list(obj["bbox"]))
    return prompt


def predict_dataset(model: Any, samples: list[dict], spec: DatasetSpec, cache: PredictionCache,
                    batch_size: int = 8, progress: bool = True) -> None:
    """Run ``model.predict`` on every sample not yet in ``cache``, batch by batch.

    ``model`` is anything with ``predict(images, task=..., categories=[...], **kwargs)`` returning
    one result per image (the detector API's ``RexOmni`` or a stand-in). Samples in one call share
    the same request, so images asking different phrases go in separate calls.
    """
    from tqdm import tqdm

    from rexomni.images import ImageLoadError, load_image

    todo = [s for s in samples if s["key"] not in cache]
    bar = tqdm(total=len(todo), desc=f"predict {spec.name}", unit="img", disable=not progress or None)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        records, groups = [], {}
        for sample in batch:
            try:
                image = load_image(sample["image"])
            except (ImageLoadError, OSError, ValueError) as e:
                records.append({"key": sample["key"], "image": str(sample["image"]), "skipped": str(e)[:200]})
                continue
            request = _request(sample, spec)
            group = groups.setdefault(json.dumps(request, sort_keys=True), (request, [], []))
            group[1].append(sample)
            group[2].append(image)
        for request, group_samples, images in groups.values():
            results = model.predict(images, task=get_task(spec.task).name, batch_size=batch_size, **request)
            if len(results) != len(images):
                raise RuntimeError(f"model.predict returned {len(results)} results for {len(images)} images")
            for sample, result in zip(group_samples, results):
                record = {"key": sample["key"], **Prediction.from_result(result).to_dict()}
                if isinstance(sample["image"], str):  # in-memory images (held-out scenes) are not recorded
                    record["image"] = sample["image"]
                for name in ("raw_text", "problems"):  # what the detector API's results carry besides geometry
                    if getattr(result, name, None) is not None:
                        record[name] = getattr(result, name)
                if getattr(result, "ood_scores", None) is not None:
                    record["ood_scores"] = [float(v) for v in result.ood_scores]
                records.append(record)
        cache.write(records)
        bar.update(len(batch))
    bar.close()


def evaluate_samples(model: Any, samples: list[dict], dataset: DatasetSpec, protocol: str = "strict",
                     batch_size: int = 8, cache: PredictionCache | None = None,
                     progress: bool = True) -> tuple[dict[str, float], dict]:
    """Predict what ``cache`` lacks, then score: one data set of a benchmark, or samples held in memory
    (training's held-out scenes, whose ``image`` is a PIL image). Returns (flat metrics, curves)."""
    cache = cache if cache is not None else PredictionCache()
    if dataset.ask == "each":
        samples = one_phrase_each(samples)
    if dataset.negatives != "ask":
        samples = [without_negatives(s) for s in samples if (s.get("negatives") or {}).get("phrases")]
    predict_dataset(model, samples, dataset, cache, batch_size, progress)
    skipped = cache.skipped()
    scored = [s for s in samples if s["key"] not in skipped]
    frequency = _lvis_frequency(dataset.annotations, dataset.format) if dataset.annotations else None
    metrics, curves = score(scored, cache.predictions(), dataset.task, dataset.metrics, protocol,
                            dataset.coco_style, frequency)
    metrics["samples"] = float(len(scored))
    metrics["skipped_images"] = float(len(skipped & {s["key"] for s in samples}))
    clean = cache.clean_share()
    if clean is not None:
        metrics["parsed_clean"] = clean
    if dataset.negatives != "ask" or any(s.get("held_out") for s in scored):
        metrics.update(distractor_hits(scored, cache.lines))
    if dataset.ood:
        metrics.update(detection_ood_metrics(scored, cache.lines))
    return metrics, curves


# --------------------------------------------------------------------------- the whole benchmark


def run_benchmark(model: Any, spec: BenchmarkSpec | str | os.PathLike, out_dir: str | os.PathLike,
                  protocol: str | None = None, progress: bool = True) -> dict[str, dict[str, float]]:
    """Predict (resuming from the cache), score every data set and write the reports.

    Returns ``{dataset name: flat metrics}``; writes ``results.json``, ``results.md`` and
    ``plots/*.png`` in ``out_dir``.
    """
    from .report import write_reports

    if not isinstance(spec, BenchmarkSpec):
        spec = BenchmarkSpec.from_yaml(spec)
    protocol = protocol or spec.protocol
    out_dir = Path(out_dir)
    results, curves = {}, {}
    for dataset in spec.datasets:
        if dataset.synth:
            options = dict(dataset.synth, n=min(dataset.synth["n"], dataset.limit or dataset.synth["n"]))
            samples, unreadable = synth_samples(options), 0
        else:
            samples, unreadable = load_annotations(dataset.annotations, dataset.format, dataset.image_root,
                                                   check_images=True)
        if dataset.limit is not None:
            samples = samples[: dataset.limit]
        cache = PredictionCache(out_dir / "predictions" / f"{dataset.name}.jsonl", run_fingerprint(model, dataset))
        metrics, dataset_curves = evaluate_samples(model, samples, dataset, protocol, spec.batch_size, cache, progress)
        metrics["skipped_images"] += unreadable
        results[dataset.name], curves[dataset.name] = metrics, dataset_curves
    write_reports(results, curves, out_dir, title=f"{spec.name} ({get_protocol(protocol).name} protocol)",
                  tables=spec.tables)
    return results


def run_fingerprint(model: Any, dataset: DatasetSpec) -> dict:
    """What a data set's predictions depend on: the model (its name and, for a folder, the size and time
    of its weight and config files, so that new weights under the same name count as another model) and
    how the data set is asked (everything but ``limit`` and ``metrics``, which only choose and score)."""
    name = str(getattr(model, "name", None) or type(model).__name__)
    files = {}
    if os.path.isdir(name):
        for file in sorted(os.listdir(name)):
            if file.endswith(".safetensors") or file in ("config.json", "rexomni_config.json"):
                stat = os.stat(os.path.join(name, file))
                files[file] = [stat.st_size, stat.st_mtime_ns]
    asked = {k: v for k, v in asdict(dataset).items() if k not in ("limit", "metrics")}
    return {"model": name, "files": files, "dataset": asked}


def one_phrase_each(samples: list[dict]) -> list[dict]:
    """One sample per present phrase, holding that phrase's objects only and keyed ``<key>#<phrase>``:
    referring comprehension asks each expression in a request of its own and scores it alone."""
    split = []
    for sample in samples:
        for phrase in dict.fromkeys(str(o["phrase"]) for o in sample.get("objects", [])):
            objects = [o for o in sample["objects"] if str(o["phrase"]) == phrase]
            split.append(dict(sample, objects=objects, categories=[phrase], key=f"{sample['key']}#{phrase}"))
    return split


def synth_samples(options: Mapping[str, Any]) -> list[dict]:
    """The scenes a ``synth`` data set names, drawn in memory (same options, same scenes, every run)."""
    from rexomni.data_engines.synth import generate_scene

    from .data import assign_keys

    options = dict(options)
    n, seed, size = int(options.pop("n")), int(options.pop("seed", 0)), options.pop("size", 224)
    samples = []
    for i in range(n):
        image, sample = generate_scene(seed * 1_000_003 + i, size, **options)
        samples.append(dict(sample, image=image, id=f"synth-{seed}-{i}"))
    return assign_keys(samples)


def _lvis_frequency(annotations: str | os.PathLike, fmt: str | None) -> dict[str, str] | None:
    """Category frequencies when the annotations are LVIS (the sample schema does not carry them)."""
    from rexomni.data_engines.readers import detect_format

    if (fmt or detect_format(str(annotations))) != "lvis":
        return None
    from .coco import lvis_category_frequency

    return lvis_category_frequency(annotations)


def score_files(predictions: str | os.PathLike, annotations: str | os.PathLike, task: str = "detection",
                metrics: list[str] | None = None, protocol: str = "strict", fmt: str | None = None,
                coco_style: bool | None = None) -> tuple[dict[str, float], dict]:
    """Score a predictions file (project JSONL or COCO results JSON) against annotations."""
    from .data import load_predictions

    samples, unreadable = load_annotations(annotations, fmt)
    coco_gt = annotations if str(annotations).endswith(".json") else None
    preds = load_predictions(predictions, samples, coco_annotations=coco_gt)
    result, curves = score(samples, preds, task, metrics, protocol, coco_style, _lvis_frequency(annotations, fmt))
    result["samples"] = float(len(samples))
    result["samples_without_prediction"] = float(sum(s["key"] not in preds for s in samples))
    if unreadable:
        result["skipped_images"] = float(unreadable)
    return result, curves


__all__ = ["BenchmarkSpec", "DatasetSpec", "PredictionCache", "evaluate_samples", "predict_dataset", "run_benchmark",
           "score_files"]
