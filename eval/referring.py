"""Referring expressions: accuracy at IoU 0.5 (the RefCOCO convention).

Each sample asks one expression; it is right when its top prediction (the highest score; the first
one written when scores tie) overlaps one of the expression's ground-truth boxes with IoU >= 0.5.
A sample with no prediction is wrong. Multi-target sets (HumanRef) are better scored with box F1.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .boxes import box_iou
from .data import Prediction, gt_boxes


def referring_accuracy(samples: list[dict], predictions: Mapping[str, Prediction],
                       iou_threshold: float = 0.5) -> float:
    """Share of samples whose top prediction hits a ground-truth box at ``iou_threshold``."""
    if not samples:
        return 0.0
    hits = 0
    empty = Prediction()
    for sample in samples:
        pred = predictions.get(sample["key"], empty)
        gt, _ = gt_boxes(sample)
        if len(pred.boxes) == 0 or len(gt) == 0:
            continue
        top = int(np.argmax(pred.scores))  # argmax keeps the first of tied scores
        hits += bool(box_iou(pred.boxes[top], gt).max() >= iou_threshold)
    return hits / len(samples)
