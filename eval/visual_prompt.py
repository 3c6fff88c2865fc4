"""Visual prompting: counting error and duplicate boxes.

- count MAE: mean over samples of |number of predicted boxes - number of ground-truth boxes|;
- duplicate ratio: the share of predicted boxes that overlap an earlier box of the same sample
  with IoU > 0.9 (a model that repeats itself scores high); ``duplicate_pairs`` counts the pairs.

Box F1 on the same predictions comes from f1.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .boxes import box_iou
from .data import Prediction, gt_boxes

DUPLICATE_IOU = 0.9


def duplicates(boxes, iou_threshold: float = DUPLICATE_IOU) -> tuple[int, int]:
    """(pairs with IoU > threshold, boxes that overlap an earlier box that much) in one set of boxes."""
    iou = np.triu(box_iou(boxes, boxes), k=1)  # each unordered pair once, no self pairs
    over = iou > iou_threshold
    return int(over.sum()), int(over.any(0).sum())


def visual_prompt_metrics(samples: list[dict], predictions: Mapping[str, Prediction],
                          iou_threshold: float = DUPLICATE_IOU) -> dict[str, float]:
    """``vp/count_mae``, ``vp/duplicate_ratio``, ``vp/duplicate_pairs`` over ``samples``."""
    errors, pairs, repeated, total = [], 0, 0, 0
    empty = Prediction()
    for sample in samples:
        pred = predictions.get(sample["key"], empty)
        errors.append(abs(len(pred.boxes) - len(gt_boxes(sample)[0])))
        p, r = duplicates(pred.boxes, iou_threshold)
        pairs, repeated, total = pairs + p, repeated + r, total + len(pred.boxes)
    return {
        "vp/count_mae": float(np.mean(errors)) if errors else 0.0,
        "vp/duplicate_ratio": repeated / total if total else 0.0,
        "vp/duplicate_pairs": float(pairs),
    }
