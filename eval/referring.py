"""Referring expressions: accuracy at IoU 0.5 (the RefCOCO convention).

Each expression of a sample is one question; it is answered right when the top prediction under
that expression (the highest score; the first one written when scores tie) overlaps one of the
expression's ground-truth boxes with IoU >= 0.5. An expression with no prediction is wrong.
Multi-target sets (HumanRef) are better scored with box F1.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .boxes import box_iou
from .data import Prediction, gt_boxes
from .protocols import Protocol, get_protocol


def referring_accuracy(samples: list[dict], predictions: Mapping[str, Prediction], iou_threshold: float = 0.5,
                       protocol: str | Protocol = "strict") -> float:
    """Share of (sample, expression) pairs whose top prediction hits a ground-truth box."""
    protocol = get_protocol(protocol)
    norm = lambda phrase: protocol.normalize(phrase, detection_set=False)
    hits = total = 0
    empty = Prediction()
    for sample in samples:
        pred = predictions.get(sample["key"], empty)
        gt, phrases = gt_boxes(sample)
        pred_labels = np.array([norm(label) for label in pred.labels], dtype=object)
        gt_labels = np.array([norm(p) for p in phrases], dtype=object)
        for expression in dict.fromkeys(gt_labels.tolist()):
            total += 1
            mine = np.flatnonzero(pred_labels == expression) if len(pred_labels) else np.zeros(0, dtype=int)
            if len(mine) == 0:
                continue
            top = mine[int(np.argmax(pred.scores[mine]))]  # argmax keeps the first of tied scores
            hits += bool(box_iou(pred.boxes[top], gt[gt_labels == expression]).max() >= iou_threshold)
    return hits / total if total else 0.0
