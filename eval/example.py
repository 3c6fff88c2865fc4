"""One answer against one image's ground truth: the per-example scorer.

    score = score_answer(text, objects, width, height, codec="center")
    score.f1, score.mean_iou, score.pairs

Boxes are matched one to one (:func:`rexomni.eval.boxes.match`, Hungarian on IoU) within each
phrase, so a duplicate box is a false positive and a box given under the wrong phrase matches
nothing. Data-set metrics (``rexomni eval``), training-time held-out scores and GRPO rewards all
read answers through this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rexomni.grammar import parse_output
from rexomni.result import build_result

from .boxes import match
from .data import Prediction


@dataclass
class ExampleScore:
    """Matches of one prediction: ``pairs`` holds (phrase, prediction index, ground-truth index, IoU)."""

    num_pred: int
    num_gt: int
    pairs: list[tuple[str, int, int, float]] = field(default_factory=list)
    best_iou: list[float] = field(default_factory=list)  # per ground-truth box: IoU of its best one-to-one partner
    problems: list[str] = field(default_factory=list)

    @property
    def tp(self) -> int:
        return len(self.pairs)

    @property
    def precision(self) -> float:
        return self.tp / self.num_pred if self.num_pred else float(self.num_gt == 0)

    @property
    def recall(self) -> float:
        return self.tp / self.num_gt if self.num_gt else float(self.num_pred == 0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def mean_iou(self) -> float:
        """Mean over ground-truth boxes of the IoU with the box matched to it at any overlap (0 when none)."""
        return float(np.mean(self.best_iou)) if self.best_iou else float(self.num_pred == 0)


def score_prediction(prediction: Prediction, objects: Sequence[Mapping], iou_threshold: float = 0.5) -> ExampleScore:
    """Match ``prediction``'s boxes with the ``objects`` (sample schema: ``phrase``, ``bbox``) phrase by phrase."""
    gt_boxes = [(str(o["phrase"]), o["bbox"]) for o in objects if o.get("bbox") is not None]
    out = ExampleScore(num_pred=len(prediction.boxes), num_gt=len(gt_boxes))
    labels = np.asarray(prediction.labels, dtype=object)
    for phrase in dict.fromkeys(p for p, _ in gt_boxes) | dict.fromkeys(prediction.labels):
        pred_index = np.flatnonzero(labels == phrase)
        gt_index = [i for i, (p, _) in enumerate(gt_boxes) if p == phrase]
        pred = prediction.boxes[pred_index]
        gt = np.asarray([gt_boxes[i][1] for i in gt_index], dtype=np.float64).reshape(-1, 4)
        strict = match(pred, gt, iou_threshold)
        out.pairs += [(phrase, int(pred_index[p]), gt_index[g], float(iou))
                      for p, g, iou in zip(strict.pred, strict.gt, strict.iou)]
        # For mean IoU any overlap counts: how close the boxes came, whether or not they passed the threshold.
        loose = match(pred, gt, 1e-9)
        out.best_iou += list(loose.iou) + [0.0] * loose.fn
    return out


def score_answer(text: str, objects: Sequence[Mapping], width: int, height: int, codec: str = "center",
                 task: str = "detection", iou_threshold: float = 0.5) -> ExampleScore:
    """Parse a model's answer ``text`` (never raises) and score its boxes against ``objects``."""
    parsed = parse_output(text, width, height, codec)
    result = build_result(task, parsed, width, height, [], text)
    score = score_prediction(Prediction.from_result(result), objects, iou_threshold)
    score.problems = list(result.problems)
    return score


def absent_answers(prediction: Prediction, sample: Mapping) -> tuple[int, int]:
    """(phrases asked that the image lacks, how many of them the prediction still gave items for)."""
    from .data import gt_categories

    present = {str(o["phrase"]) for o in sample.get("objects", [])}
    absent = [p for p in gt_categories(sample) if p not in present]
    answered = set(prediction.labels)
    return len(absent), sum(p in answered for p in absent)
