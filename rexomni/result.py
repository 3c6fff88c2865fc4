"""What the model found in one image: :class:`Result`, and :func:`build_result`, the one adapter from a
parsed answer to boxes, points, polygons or keypoints with labels and scores. The detector API,
evaluation (through ``Prediction.from_result``) and GRPO rewards all read answers through it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .grammar import ParsedOutput
from .tasks import get_task


@dataclass
class Result:
    """What the model found in one image, in pixels of the original image.

    ``labels`` and ``scores`` run along the task's items: boxes (detection, visual prompts, OCR
    boxes, GUI grounding), points (pointing, GUI pointing), polygons (OCR polygons; ``boxes``
    then holds their bounding boxes) or keypoint instances (``boxes`` holds the instance boxes).
    """

    task: str
    width: int
    height: int
    labels: list[str] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float32))
    points: np.ndarray | None = None
    polygons: list[np.ndarray] | None = None
    keypoints: list[dict[str, list[float] | None]] | None = None
    absent: list[str] = field(default_factory=list)  # phrases the model answered with None
    # Per item, with negatives and ood=True (rexomni.negatives): high for a known category, low for an
    # out-of-distribution object.
    ood_scores: np.ndarray | None = None
    raw_text: str = ""
    problems: list[str] = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    seconds: float = 0.0  # this image's share of its batch's wall time
    timing: dict[str, float] = field(default_factory=dict)  # the batch's stages, in seconds

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, keep) -> Result:
        """A copy holding the items where the boolean mask ``keep`` is true."""
        keep = np.asarray(keep, dtype=bool).reshape(-1)
        if len(keep) != len(self):
            raise ValueError(f"select: a mask of {len(keep)} for {len(self)} items")

        def pick(items):
            return None if items is None else [x for x, k in zip(items, keep) if k]

        return dataclasses.replace(
            self, labels=pick(self.labels), scores=self.scores[keep],
            boxes=self.boxes[keep] if len(self.boxes) == len(keep) else self.boxes,  # points carry no boxes
            points=None if self.points is None else self.points[keep], polygons=pick(self.polygons),
            keypoints=pick(self.keypoints), ood_scores=None if self.ood_scores is None else self.ood_scores[keep])

    def filter(self, min_score: float) -> Result:
        """A copy without the items scoring below ``min_score`` (items without a score are kept)."""
        return self.select(~(np.asarray(self.scores) < min_score))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types."""
        out = {
            "task": self.task, "width": self.width, "height": self.height, "labels": list(self.labels),
            "scores": [float(s) for s in self.scores], "boxes": np.asarray(self.boxes, dtype=float).tolist(),
            "absent": list(self.absent), "raw_text": self.raw_text, "problems": list(self.problems),
            "num_prompt_tokens": self.num_prompt_tokens, "num_generated_tokens": self.num_generated_tokens,
            "seconds": self.seconds, "timing": dict(self.timing),
        }
        if self.points is not None:
            out["points"] = np.asarray(self.points, dtype=float).tolist()
        if self.polygons is not None:
            out["polygons"] = [np.asarray(p, dtype=float).tolist() for p in self.polygons]
        if self.keypoints is not None:
            out["keypoints"] = self.keypoints
        if self.ood_scores is not None:
            out["ood_scores"] = [float(s) for s in self.ood_scores]
        return out

    def to_coco(self, image_id: int, category_ids: dict[str, int] | None = None) -> list[dict[str, Any]]:
        """COCO detections ``{image_id, category_id, bbox: [x, y, w, h], score}``.

        ``category_ids`` maps labels to ids; labels not in it are skipped. Without it the
        ``category_id`` is the label itself (a string), for callers that map later.
        """
        detections = []
        for label, score, (x0, y0, x1, y1) in zip(self.labels, self.scores, np.asarray(self.boxes)):
            if category_ids is not None and label not in category_ids:
                continue
            detections.append({
                "image_id": image_id, "category_id": category_ids[label] if category_ids is not None else label,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(score),
            })
        return detections

    def to_pipeline(self) -> list[dict[str, Any]]:
        """The ``zero-shot-object-detection`` schema, exactly as transformers' pipeline writes it:
        ``[{score, label, box: {xmin, ymin, xmax, ymax}}]`` with integer pixel boxes (truncated)."""
        return [
            {"score": float(s), "label": label, "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), map(int, b)))}
            for label, s, b in zip(self.labels, self.scores, np.asarray(self.boxes))
        ]

    def to_supervision(self, class_names: Sequence[str] | None = None):
        """A ``supervision.Detections`` (Roboflow's supervision; the ``supervision`` extra).

        ``xyxy`` holds the boxes (float pixels), ``confidence`` the scores, ``data["class_name"]``
        the labels and ``class_id`` each label's index in ``class_names``. Pass the categories you
        asked for as ``class_names`` so that ids agree across images; labels not in it are skipped,
        as in :meth:`to_coco`. Without it the ids number the labels in order of first appearance.
        Boxes of keypoint instances and of OCR polygons are kept; point answers have no boxes.
        """
        try:
            import supervision as sv
        except ImportError as e:
            raise ImportError("Result.to_supervision needs supervision: pip install 'rexomni[supervision]'") from e
        if self.points is not None:
            raise ValueError(f"to_supervision: the {self.task} task answers with points, not boxes; use .points")
        names = list(dict.fromkeys(self.labels)) if class_names is None else list(class_names)
        class_id = {name: i for i, name in enumerate(names)}
        kept = self.select([label in class_id for label in self.labels])
        return sv.Detections(
            xyxy=np.asarray(kept.boxes, dtype=np.float32).reshape(-1, 4),
            confidence=np.asarray(kept.scores, dtype=np.float32),
            class_id=np.array([class_id[label] for label in kept.labels], dtype=int),
            data={"class_name": np.array(kept.labels, dtype=str)},
        )


def item_score(logprobs: Sequence[float]) -> float:
    """Confidence of one item: the geometric mean probability of the coordinate tokens that wrote it.

    ``exp(mean(log p))`` with p the model's softmax probability (temperature 1, before any
    constraint or penalty) of each coordinate token as it was written.
    """
    if len(logprobs) == 0:
        return float("nan")
    return float(math.exp(sum(logprobs) / len(logprobs)))


def build_result(task: str, parsed: ParsedOutput, width: int, height: int, coord_logprobs: list[tuple[int, float]],
                 raw_text: str) -> Result:
    """Parsed answer + per-coordinate-token log-probabilities -> a :class:`Result`.

    ``coord_logprobs`` are the (bin, log p) of the coordinate tokens in the order they were written;
    they are paired with the items' bins in text order.
    """
    kind = get_task(task).item
    result = Result(task=task, width=width, height=height, raw_text=raw_text, problems=list(parsed.problems))
    cursor = 0
    labels, scores, boxes, points, polygons, keypoints = [], [], [], [], [], []
    skipped = 0
    for phrase, items in parsed.phrases.items():
        if not items:
            result.absent.append(phrase)
        for item in items:
            bins = list(item.bins)
            found, cursor = _match_bins(coord_logprobs, bins, cursor)
            if item.kind != kind and not (kind == "box" and item.kind == "keypoints"):
                skipped += 1
                continue
            labels.append(phrase)
            scores.append(item_score(found))
            if item.kind in ("box", "keypoints"):
                boxes.append(item.coords)
                if item.kind == "keypoints":
                    keypoints.append(item.keypoints or {})
            elif item.kind == "point":
                points.append(item.coords)
            else:
                poly = np.asarray(item.coords, dtype=np.float32)
                polygons.append(poly)
                boxes.append([*poly.min(0), *poly.max(0)])
    if skipped:
        result.problems.append(f"{skipped} items not of kind {kind} ignored")
    result.labels = labels
    result.scores = np.asarray(scores, dtype=np.float32)
    result.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if kind == "point":
        result.points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if kind == "polygon":
        result.polygons = polygons
    if kind == "keypoints":
        result.keypoints = keypoints
    return result


def _match_bins(coord_logprobs: list[tuple[int, float]], bins: list[int], cursor: int) -> tuple[list[float], int]:
    """Log-probs of ``bins`` written in order from ``cursor``; stray coordinate tokens are skipped."""
    found, i = [], cursor
    for b in bins:
        j = i
        while j < len(coord_logprobs) and coord_logprobs[j][0] != b:
            j += 1
        if j == len(coord_logprobs):
            return found, i  # not found (e.g. written as text pieces): score from what matched
        found.append(coord_logprobs[j][1])
        i = j + 1
    return found, i
