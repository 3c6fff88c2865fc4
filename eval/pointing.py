"""Pointing: a predicted point is right when it falls inside a ground-truth region of its category.

The region is the object's mask (COCO RLE, compressed or not), else its polygon, else its box.
Points and objects are paired one-to-one (two points on one object score one hit and one miss),
then precision, recall and F1 are averaged as for boxes (see f1.py) at a single "threshold" of 0.5
on the 1/0 inside matrix.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from rexomni.data_engines.masks import rle_decode

from .data import Prediction
from .f1 import F1Result, GeometryView, f1_score
from .protocols import Protocol


def points_in_object(points: np.ndarray, obj: Mapping) -> np.ndarray:
    """(N,) bool: which (N, 2) pixel points fall inside ``obj``'s mask, polygon or box."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if obj.get("mask") is not None:
        mask = rle_decode(obj["mask"])
        h, w = mask.shape
        x = np.floor(points[:, 0]).astype(np.int64)
        y = np.floor(points[:, 1]).astype(np.int64)
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        out = np.zeros(len(points), dtype=bool)
        out[inside] = mask[y[inside], x[inside]] > 0
        return out
    if obj.get("polygon") is not None:
        from matplotlib.path import Path

        return Path(np.asarray(obj["polygon"], dtype=np.float64).reshape(-1, 2)).contains_points(points)
    if obj.get("bbox") is not None:
        x0, y0, x1, y1 = obj["bbox"]
        return (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)
    raise ValueError(f"object {obj.get('phrase')!r} has no mask, polygon or bbox to point into")


def _inside_matrix(points, objects) -> np.ndarray:
    if len(points) == 0 or not objects:
        return np.zeros((len(points), len(objects)))
    return np.stack([points_in_object(points, o) for o in objects], axis=1).astype(np.float64)


def _predicted_points(pred: Prediction):
    if len(pred.points):
        return pred.points, pred.labels, pred.scores
    if len(pred.boxes):  # a box answer to a pointing prompt: its centre is the point
        centres = (pred.boxes[:, :2] + pred.boxes[:, 2:]) / 2
        return centres, pred.labels, pred.scores
    return np.zeros((0, 2)), [], np.zeros(0)


POINT_VIEW = GeometryView(
    predicted=_predicted_points,
    ground_truth=lambda s: [o for o in s.get("objects", [])
                            if any(o.get(k) is not None for k in ("mask", "polygon", "bbox"))],
    similarity=_inside_matrix,
)


def pointing_f1(samples: list[dict], predictions: Mapping[str, Prediction], protocol: str | Protocol = "strict",
                coco_style: bool = True, detection_set: bool = True) -> F1Result:
    """Pointing precision / recall / F1 (one threshold: the point is inside or not)."""
    return f1_score(samples, predictions, POINT_VIEW, protocol, coco_style, detection_set, thresholds=[0.5])
