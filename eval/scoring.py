"""One entry that scores a data set with the metrics its task calls for, as flat keys plus curves."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from .coco import coco_ap
from .data import Prediction, is_coco_style
from .detect_all import map_phrases
from .example import absent_answers, score_prediction
from .f1 import box_f1
from .keypoints import keypoint_scores
from .language import language_metrics
from .pointing import pointing_f1
from .protocols import Protocol, get_protocol
from .referring import referring_accuracy
from .visual_prompt import visual_prompt_metrics

logger = logging.getLogger(__name__)

TASK_METRICS = ("f1", "agnostic", "coco", "pointing", "keypoints", "visual_prompt", "referring", "language")
DEFAULT_METRICS = {
    "detection": ["f1", "coco"],
    "detect_all": ["f1", "agnostic"],
    "referring": ["f1", "referring"],
    "language": ["f1", "language"],
    "pointing": ["pointing"],
    "visual_prompting": ["f1", "visual_prompt"],
    "keypoint": ["keypoints"],
}
# The released evaluation normalises names to letters only on these tasks.
DETECTION_TASKS = ("detection", "detect_all", "pointing", "visual_prompting", "keypoint")


def score(samples: list[dict], predictions: Mapping[str, Prediction], task: str = "detection",
          metrics: list[str] | None = None, protocol: str | Protocol = "strict",
          coco_style: bool | None = None,
          category_frequency: Mapping[str, str] | None = None) -> tuple[dict[str, float], dict]:
    """Flat metrics (``f1@0.5``, ``coco/AP``, ``point/f1``, ...) and curves for the plots.

    ``metrics`` default to the task's (``DEFAULT_METRICS``); ``coco_style`` defaults to whether the
    samples come from COCO or LVIS.
    """
    if task not in DEFAULT_METRICS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(DEFAULT_METRICS)}")
    metrics = list(metrics or DEFAULT_METRICS[task])
    unknown = set(metrics) - set(TASK_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; expected some of {TASK_METRICS}")
    protocol = get_protocol(protocol)
    coco_style = is_coco_style(samples) if coco_style is None else coco_style
    out: dict[str, float] = {}
    curves: dict = {}
    if task == "visual_prompting":  # the example boxes define the class: names play no part
        samples, predictions = _one_class(samples, predictions)
    if task == "detect_all":  # the model named the objects: its phrases become ground-truth names first
        predictions, out["detect_all/phrases_not_in_gt"] = map_phrases(samples, predictions)
    detection_set = task in DETECTION_TASKS
    if "f1" in metrics:
        f1 = box_f1(samples, predictions, protocol, coco_style, detection_set)
        out.update(f1.metrics())
        out["mean_iou"] = mean_iou(samples, predictions)
        curves["f1_vs_iou"] = {"thresholds": f1.thresholds.tolist(), "f1": f1.f1.tolist(),
                               "precision": f1.precision.tolist(), "recall": f1.recall.tolist()}
    if "agnostic" in metrics:  # localisation alone: every phrase and label taken as one class
        out.update(box_f1(*_one_class(samples, predictions), protocol, coco_style, detection_set).metrics("agnostic/"))
    if {"f1", "pointing"} & set(metrics) and task != "detect_all":  # detect_all asks no phrase, absent or not
        asked, answered = map(sum, zip(*(absent_answers(predictions.get(s["key"], Prediction()), s)
                                         for s in samples))) if samples else (0, 0)
        if asked:
            out["absent/fp_rate"] = answered / asked  # absent phrases that still got boxes or points
    if "coco" in metrics:
        if any(o.get("bbox") is not None for s in samples for o in s.get("objects", [])):
            coco = coco_ap(samples, predictions, protocol, category_frequency=category_frequency)
            out.update(coco.metrics)
            out["coco/unknown_labels"] = float(coco.unknown_labels)
            curves["pr"] = {f"{t:g}": {"recall": coco.recall_grid.tolist(), "precision": p.tolist()}
                            for t, p in coco.pr_curves.items()}
        else:
            logger.warning("COCO AP skipped: the annotations have no boxes")
    if "pointing" in metrics:
        result = pointing_f1(samples, predictions, protocol, coco_style, detection_set)
        p, r, f = result.at(0.5)
        out.update({"point/precision": p, "point/recall": r, "point/f1": f})
    if "keypoints" in metrics:
        mean_oks, kp = keypoint_scores(samples, predictions, protocol, coco_style)
        out["kp/mean_oks"] = mean_oks
        for t in (0.5, 0.75):
            p, r, f = kp.at(t)
            out.update({f"kp/precision@{t:g}": p, f"kp/recall@{t:g}": r, f"kp/f1@{t:g}": f})
    if "visual_prompt" in metrics:
        out.update(visual_prompt_metrics(samples, predictions))
    if "referring" in metrics:
        out["ref/acc@0.5"] = referring_accuracy(samples, predictions, 0.5, protocol)
    if "language" in metrics:
        out.update(language_metrics(samples, predictions, protocol))
    return out, curves


def mean_iou(samples: list[dict], predictions: Mapping[str, Prediction]) -> float:
    """Mean over every ground-truth box of its IoU with the prediction matched to it one to one
    within its phrase (0 when none overlaps), by the per-example scorer."""
    ious = []
    for sample in samples:
        prediction = predictions.get(sample["key"], Prediction())
        ious += score_prediction(prediction, sample.get("objects", [])).best_iou
    return float(np.mean(ious)) if ious else 0.0


def _one_class(samples: list[dict], predictions: Mapping[str, Prediction], name: str = "object"):
    """The same samples and predictions with every phrase and label replaced by ``name``."""
    samples = [dict(s, categories=[name], objects=[dict(o, phrase=name) for o in s.get("objects", [])])
               for s in samples]
    predictions = {k: Prediction(p.boxes, p.scores, [name] * len(p.labels), p.points, p.keypoints)
                   for k, p in predictions.items()}
    return samples, predictions
