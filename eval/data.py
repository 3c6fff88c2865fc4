"""What the metrics read: ground-truth samples (the project's sample schema) and predictions.

Ground truth is a list of sample dicts (see docs/format.md); each gets a unique ``key`` (its ``id``,
else its image path, with ``#2``, ``#3`` ... for further samples of the same image, as referring sets
ask one image several times). Predictions are :class:`Prediction` objects stored under those keys.

Prediction files come in two forms:

- the project's prediction JSONL (one line per sample: ``key`` or ``image``, then ``boxes`` xyxy,
  ``scores``, ``labels``, optional ``points`` and ``keypoints``; the runner's cache is this file);
- a COCO results JSON (a list of ``{image_id, category_id, bbox: [x, y, w, h], score}``), mapped to
  samples through the COCO ground-truth file's ``images`` and ``categories``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .boxes import as_boxes

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One sample's predictions. ``labels`` and ``scores`` describe ``boxes`` when present, else
    ``points``. ``keypoints``: one dict per instance with ``label``, ``bbox``, ``keypoints``
    (name -> [x, y] or None) and ``score``."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    labels: list[str] = field(default_factory=list)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    keypoints: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.boxes = as_boxes(self.boxes, "prediction boxes")
        self.points = _as_points(self.points)
        self.labels = [str(label) for label in self.labels]
        n = len(self.boxes) if len(self.boxes) else len(self.points)
        if len(self.labels) != n:
            raise ValueError(f"prediction has {n} boxes/points but {len(self.labels)} labels")
        scores = np.asarray(self.scores if self.scores is not None else [], dtype=np.float64).reshape(-1)
        if len(scores) == 0 and n:
            scores = np.ones(n)  # a source without confidences: every detection ranks the same
        if len(scores) != n:
            raise ValueError(f"prediction has {n} boxes/points but {len(scores)} scores")
        self.scores = scores

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Prediction:
        """From a prediction JSONL line or a model result's ``to_dict()``."""
        d = d.get("prediction", d)
        return cls._build(d.get("boxes"), d.get("scores"), d.get("labels"), d.get("points"), d.get("keypoints"))

    @classmethod
    def from_result(cls, result: Any) -> Prediction:
        """From any object with ``boxes``, ``scores``, ``labels`` (and optionally ``points``,
        ``keypoints``) attributes, such as the detector API's ``Result``."""
        def get(name):
            value = getattr(result, name, None)
            return value.tolist() if hasattr(value, "tolist") else value

        return cls._build(get("boxes"), get("scores"), get("labels"), get("points"), get("keypoints"))

    @classmethod
    def _build(cls, boxes, scores, labels, points, keypoints) -> Prediction:
        labels = [str(x) for x in (labels if labels is not None else [])]
        instances = []
        for i, inst in enumerate(keypoints or []):
            if isinstance(inst, Mapping) and "keypoints" in inst:
                instances.append(dict(inst))
            else:  # the detector API's form: one name -> [x, y] dict per instance, along boxes and labels
                instances.append({"label": labels[i] if i < len(labels) else "", "keypoints": dict(inst or {}),
                                  "bbox": list(boxes[i]) if boxes is not None and i < len(boxes) else None,
                                  "score": float(scores[i]) if scores is not None and i < len(scores) else 1.0})
        return cls(boxes=boxes, scores=scores, labels=labels, points=points, keypoints=instances)

    def to_dict(self) -> dict:
        out = {"boxes": self.boxes.tolist(), "scores": self.scores.tolist(), "labels": list(self.labels)}
        if len(self.points):
            out["points"] = self.points.tolist()
        if self.keypoints:
            out["keypoints"] = self.keypoints
        return out

    def with_constant_score(self, score: float | None) -> Prediction:
        if score is None:
            return self
        return Prediction(self.boxes, np.full(len(self.scores), float(score)), self.labels, self.points,
                          self.keypoints)


def _as_points(points) -> np.ndarray:
    arr = np.asarray(points if points is not None else [], dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"prediction points must have shape (N, 2); got {arr.shape}")
    return arr


# --------------------------------------------------------------------------- ground truth


def assign_keys(samples: list[dict]) -> list[dict]:
    """Give every sample a unique ``key`` (in place) and return the list."""
    seen: dict[str, int] = defaultdict(int)
    for i, sample in enumerate(samples):
        if "image" not in sample and "id" not in sample:
            raise ValueError(f"sample {i} has neither 'image' nor 'id'")
        base = str(sample.get("id", sample.get("image")))
        seen[base] += 1
        sample["key"] = base if seen[base] == 1 else f"{base}#{seen[base]}"
    return samples


def load_annotations(path: str | os.PathLike, fmt: str | None = None, image_root: str | None = None,
                     check_images: bool | None = None, **options) -> tuple[list[dict], int]:
    """Ground-truth samples with unique keys, and the number of images the reader dropped, from any
    format the data readers know (``rexomni.data_engines.readers.read_dataset``; ``fmt`` None
    detects the format).

    ``check_images`` None: images are opened only when the annotations lack image sizes (the
    released evaluation files do), since scoring a predictions file needs no pixels. True: every
    image is checked and a missing or corrupt one is dropped and counted.
    """
    from rexomni.data_engines.readers import UNKNOWN_SIZE, read_dataset

    kwargs = dict(format=fmt, image_root=image_root, **options)
    samples, report = read_dataset(path, check_images=bool(check_images), **kwargs)
    if check_images is None and report.dropped.get(UNKNOWN_SIZE):
        logger.info("%s: annotations without image sizes; reading the sizes from the images", path)
        samples, report = read_dataset(path, check_images=True, **kwargs)
    if report.dropped:
        logger.warning("%s: %s", path, report)
    return assign_keys(list(samples)), report.dropped_images


def read_jsonl(path: str | os.PathLike) -> Iterable[dict]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None


def gt_categories(sample: Mapping) -> list[str]:
    """The phrases a sample asks for: its ``categories`` when given, else its objects' phrases in order."""
    if sample.get("categories"):
        return [str(c) for c in sample["categories"]]
    return list(dict.fromkeys(str(o["phrase"]) for o in sample.get("objects", [])))


def gt_boxes(sample: Mapping) -> tuple[np.ndarray, list[str]]:
    """A sample's ground-truth boxes (M, 4) and their phrases."""
    objects = [o for o in sample.get("objects", []) if o.get("bbox") is not None]
    return as_boxes([o["bbox"] for o in objects], f"ground-truth boxes of {sample.get('image')!r}"), \
        [str(o["phrase"]) for o in objects]


def is_coco_style(samples: list[dict]) -> bool:
    """COCO and LVIS are scored per category (the released evaluation does so too)."""
    for s in samples[:1]:
        name = str(s.get("dataset_name") or s.get("source") or "").lower()
        return name.startswith(("coco", "lvis"))
    return False


# --------------------------------------------------------------------------- predictions


def load_predictions(path: str | os.PathLike, samples: list[dict],
                     coco_annotations: str | os.PathLike | None = None) -> dict[str, Prediction]:
    """Predictions keyed like ``samples``, from the project's JSONL or a COCO results JSON.

    ``coco_annotations``: the COCO ground-truth JSON that a COCO results file's ids refer to.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"predictions file {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as f:
        head = f.read(1 << 12).lstrip()
    if head.startswith("["):
        if coco_annotations is None:
            raise ValueError(f"{str(path)!r} is a COCO results list; it needs the COCO annotation JSON it refers to")
        with open(path, encoding="utf-8") as f:
            return predictions_from_coco(json.load(f), samples, coco_annotations)
    return predictions_from_jsonl(read_jsonl(path), samples)


def predictions_from_jsonl(lines: Iterable[dict], samples: list[dict]) -> dict[str, Prediction]:
    """Lines carry ``key`` (as the runner writes) or ``image`` (when that image is asked once)."""
    keys = {s["key"] for s in samples}
    by_image = defaultdict(list)
    for s in samples:
        for name in dict.fromkeys(_image_names(s.get("image"))):
            by_image[name].append(s["key"])
    out = {}
    for n, line in enumerate(lines, 1):
        if line.get("skipped"):
            continue
        key = line.get("key")
        if key is None:
            # The path as written, then as an absolute path (`rexomni detect` writes paths as given on
            # its command line), then the file name when only one sample has it.
            candidates = next((by_image[name] for name in _image_names(line.get("image")) if by_image.get(name)), [])
            if len(candidates) != 1:
                raise ValueError(f"prediction line {n}: image {line.get('image')!r} matches {len(candidates)} "
                                 "samples; give a 'key'")
            key = candidates[0]
        if key in keys:
            out[key] = Prediction.from_dict(line)
    return out


def _image_names(image) -> list[str]:
    """The names an image path can be matched by, most specific first."""
    if image is None:
        return []
    text = str(image)
    return [text, os.path.abspath(text), os.path.basename(text)]


def predictions_from_coco(results: list[dict], samples: list[dict],
                          coco_annotations: str | os.PathLike) -> dict[str, Prediction]:
    """COCO results (xywh) -> predictions (xyxy) keyed like ``samples`` (matched by image file name)."""
    with open(coco_annotations, encoding="utf-8") as f:
        coco = json.load(f)
    file_of = {img["id"]: img["file_name"] for img in coco.get("images", [])}
    from rexomni.data_engines.readers import category_phrase  # names spelt as the reader spells them

    name_of = {cat["id"]: category_phrase(cat["name"]) for cat in coco.get("categories", [])}
    key_of = {}
    for s in samples:
        key_of.setdefault(str(s.get("image")), s["key"])
        key_of.setdefault(os.path.basename(str(s.get("image"))), s["key"])
    grouped: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        if r["image_id"] not in file_of:
            raise ValueError(f"COCO result names image_id {r['image_id']} absent from {str(coco_annotations)!r}")
        if r["category_id"] not in name_of:
            raise ValueError(f"COCO result names category_id {r['category_id']} absent from {str(coco_annotations)!r}")
        file_name = file_of[r["image_id"]]
        key = key_of.get(file_name, key_of.get(os.path.basename(file_name)))
        if key is not None:
            grouped[key].append(r)
    out = {}
    for key, rs in grouped.items():
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rs)]
        out[key] = Prediction(boxes, [r.get("score", 1.0) for r in rs], [name_of[r["category_id"]] for r in rs])
    return out
