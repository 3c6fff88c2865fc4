"""Evaluation: metrics, the strict and rexomni protocols, the benchmark runner and reports.

``box_iou`` and ``match`` are the project's one implementation of box overlap and one-to-one
matching; GRPO rewards import them from here. See docs/eval.md.
"""

from .boxes import MATCH_METHODS, Matching, box_area, box_iou, count_matches, match
from .coco import coco_ap
from .data import Prediction, load_annotations, load_predictions
from .f1 import IOU_THRESHOLDS, F1Result, box_f1
from .protocols import PROTOCOLS, Protocol, get_protocol
from .scoring import score

__all__ = [
    "F1Result", "IOU_THRESHOLDS", "MATCH_METHODS", "Matching", "PROTOCOLS", "Prediction", "Protocol", "box_area",
    "box_f1", "box_iou", "coco_ap", "count_matches", "get_protocol", "load_annotations", "load_predictions", "match",
    "score",
]
