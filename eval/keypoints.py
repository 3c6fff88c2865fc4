"""Keypoints: object keypoint similarity (OKS) between predicted and ground-truth instances.

``OKS = mean over the ground truth's visible joints of exp(-d^2 / (2 * area * (2 sigma)^2))``, with
``d`` the pixel distance of the predicted joint (a joint the prediction left out counts as
infinitely far) and ``area`` the object's area. Instances are paired one-to-one by OKS (the
protocol's matcher); the report gives the mean OKS over ground-truth instances (an unmatched one
scores 0) and precision / recall / F1 at OKS 0.5 and 0.75.

Strict protocol: COCO's per-joint sigmas for the 17 person joints (0.025 for any other joint name)
and the object's ``area`` when the source gave one, else its box area. The ``rexomni`` protocol: sigma
0.025 for every joint and the box area, as the released evaluation does.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rexomni.prompts import PERSON_KEYPOINTS

from .boxes import box_area, match
from .data import Prediction
from .f1 import F1Result, GeometryView, f1_score
from .protocols import COCO_PERSON_SIGMAS, Protocol, get_protocol

DEFAULT_SIGMA = 0.025
_COCO_SIGMA = dict(zip(PERSON_KEYPOINTS, COCO_PERSON_SIGMAS))


def _visible(p) -> bool:
    return p is not None and len(p) >= 2 and (len(p) < 3 or p[2] > 0)


def oks(pred_keypoints: Mapping, gt_keypoints: Mapping, area: float, sigma: float | None = None) -> float:
    """OKS of one predicted instance (name -> [x, y] or None) against one ground truth.

    ``sigma``: one sigma for every joint, or None for COCO's per-joint sigmas. Returns 0 when the
    ground truth has no visible joint.
    """
    names = [n for n, p in gt_keypoints.items() if _visible(p)]
    if not names:
        return 0.0
    total = 0.0
    area = max(float(area), np.finfo(np.float64).eps)
    for name in names:
        p = (pred_keypoints or {}).get(name)
        if not _visible(p):
            continue
        s = sigma if sigma is not None else _COCO_SIGMA.get(name, DEFAULT_SIGMA)
        d2 = (p[0] - gt_keypoints[name][0]) ** 2 + (p[1] - gt_keypoints[name][1]) ** 2
        total += float(np.exp(-d2 / (2 * area * (2 * s) ** 2)))
    return total / len(names)


def _gt_area(obj: Mapping, protocol: Protocol) -> float:
    if protocol.keypoint_sigma is None and obj.get("area") is not None:
        return float(obj["area"])
    return float(box_area([obj["bbox"]])[0])


def oks_matrix(instances: list[Mapping], objects: list[Mapping], protocol: str | Protocol = "strict") -> np.ndarray:
    """(N, M) OKS of predicted instances against ground-truth objects."""
    protocol = get_protocol(protocol)
    out = np.zeros((len(instances), len(objects)))
    for j, obj in enumerate(objects):
        area = _gt_area(obj, protocol)
        for i, inst in enumerate(instances):
            out[i, j] = oks(inst.get("keypoints") or {}, obj["keypoints"], area, protocol.keypoint_sigma)
    return out


def _view(protocol: Protocol) -> GeometryView:
    def predicted(pred: Prediction):
        instances = list(pred.keypoints)
        labels = [str(k.get("label", k.get("phrase", ""))) for k in instances]
        scores = np.array([float(k.get("score", 1.0)) for k in instances])
        return instances, labels, scores

    return GeometryView(
        predicted=predicted,
        ground_truth=lambda s: [o for o in s.get("objects", []) if o.get("keypoints") and o.get("bbox") is not None],
        similarity=lambda instances, objects: oks_matrix(instances, objects, protocol),
    )


def keypoint_scores(samples: list[dict], predictions: Mapping[str, Prediction], protocol: str | Protocol = "strict",
                    coco_style: bool = True) -> tuple[float, F1Result]:
    """(mean OKS over ground-truth instances, F1 at OKS 0.5 and 0.75)."""
    protocol = get_protocol(protocol)
    view = _view(protocol)
    total, count = 0.0, 0
    empty = Prediction()
    for sample in samples:
        instances, labels, _ = view.predicted(predictions.get(sample["key"], empty))
        objects = view.ground_truth(sample)
        count += len(objects)
        for label in {o["phrase"] for o in objects}:
            gi = [o for o in objects if o["phrase"] == label]
            pi = [inst for inst, lb in zip(instances, labels) if protocol.normalize(lb) == protocol.normalize(label)]
            if pi:
                sim = oks_matrix(pi, gi, protocol)
                total += float(match(None, None, 1e-12, protocol.match_method, iou=sim).iou.sum())
    f1 = f1_score(samples, predictions, view, protocol, coco_style, thresholds=[0.5, 0.75])
    return (total / count if count else 0.0), f1
