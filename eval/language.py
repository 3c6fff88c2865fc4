"""Language-based detection with negative descriptions (OmniLabel- and D3-style AP).

A sample asks descriptions: those of its objects (positives), and its ``negatives.phrases`` and
``categories`` without an object there, which refer to nothing in that image (OmniLabel's and D3's
readers list an image's whole label space in ``categories``). Every description is an AP "category"; a prediction for a
description the image was not asked about is dropped (the model never saw that question).

- ``language/AP``: COCO-style AP over descriptions, predictions on negative descriptions included
  (they are false positives).
- ``language/AP_pos``: the same with the negative (image, description) pairs removed, as OmniLabel's
  AP on positive descriptions; the gap to ``language/AP`` is what answering absent descriptions costs.
- ``language/AP_categ`` / ``AP_descr`` and their harmonic mean ``language/AP_omnilabel`` when the
  plain category names are given.
- D3 ``d3/full``, ``d3/presence``, ``d3/absence``: AP over all descriptions, over those that state
  what is there, and over those that state what is absent ("a dog without a leash").
- ``ood/fpr@95tpr``, ``ood/auroc``: how well the top confidence for a description separates the
  asked-and-present ones from the asked-and-absent ones (0 when nothing was predicted).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .coco import build_coco, coco_eval
from .data import Prediction, gt_categories
from .ood import ood_metrics
from .protocols import Protocol, get_protocol

# Words that mark a D3 "absence" description, used only when a data set gives no flag of its own.
ABSENCE_PATTERN = re.compile(r"\b(no|not|without|none|nobody|nothing|never)\b|n't\b", re.I)


def is_absence_description(description: str) -> bool:
    """Heuristic: does a description state that something is absent?"""
    return bool(ABSENCE_PATTERN.search(description))


def _asked(sample: Mapping) -> tuple[set[str], set[str]]:
    """(descriptions present in the image, descriptions asked there that refer to nothing): the
    absent ones are the sample's ``negatives.phrases`` and its ``categories`` without an object."""
    positives = {str(o["phrase"]) for o in sample.get("objects", [])}
    asked = set(gt_categories(sample)) | {str(p) for p in (sample.get("negatives") or {}).get("phrases", [])}
    return positives, asked - positives


def _restrict(predictions: Mapping[str, Prediction], samples: list[dict], protocol: Protocol,
              drop_negatives: bool) -> dict[str, Prediction]:
    """Keep each sample's predictions for asked descriptions (and, optionally, not the negatives)."""
    out = {}
    for s in samples:
        pred = predictions.get(s["key"])
        if pred is None:
            continue
        positives, negatives = _asked(s)
        allowed = {protocol.normalize(p) for p in (positives if drop_negatives else positives | negatives)}
        keep = [i for i, label in enumerate(pred.labels) if protocol.normalize(label) in allowed]
        out[s["key"]] = Prediction(pred.boxes[keep], pred.scores[keep], [pred.labels[i] for i in keep])
    return out


def _ap(gt: dict, results: list[dict], names: set[str] | None, backend: str) -> float:
    """AP over the categories named ``names`` (all when None); -1 when none of them has ground truth."""
    if names is not None:
        ids = {c["id"] for c in gt["categories"] if c["name"] in names}
        gt = {"images": gt["images"], "categories": [c for c in gt["categories"] if c["id"] in ids],
              "annotations": [a for a in gt["annotations"] if a["category_id"] in ids]}
        results = [r for r in results if r["category_id"] in ids]
    if not gt["annotations"]:
        return -1.0
    for c in gt["categories"]:
        c.pop("frequency", None)  # plain COCO AP: no LVIS federation here
    return float(coco_eval(gt, results, backend, lvis=False).stats[0])


def language_metrics(samples: list[dict], predictions: Mapping[str, Prediction], protocol: str | Protocol = "strict",
                     category_names: Iterable[str] | None = None, absence: Iterable[str] | None = None,
                     backend: str = "faster_coco_eval") -> dict[str, float]:
    """OmniLabel-style AP, D3 Full / Presence / Absence and OOD separation (see the module docstring).

    ``category_names``: descriptions that are plain category names (OmniLabel's AP_categ split).
    ``absence``: the absence descriptions for D3; by default :func:`is_absence_description` decides.
    """
    protocol = get_protocol(protocol)
    samples = [dict(s, categories=sorted(set(gt_categories(s)) |
                                         set((s.get("negatives") or {}).get("phrases", []))))
               for s in samples]
    metrics = {}
    gt, results, _ = build_coco(samples, _restrict(predictions, samples, protocol, False), protocol)
    gt_pos, results_pos, _ = build_coco(samples, _restrict(predictions, samples, protocol, True), protocol)
    names = {c["name"] for c in gt["categories"]}
    metrics["language/AP"] = _ap(gt, results, None, backend)
    metrics["language/AP_pos"] = _ap(gt_pos, results_pos, None, backend)
    if category_names is not None:
        plain = {protocol.normalize(c) for c in category_names}
        categ = {n for n in names if protocol.normalize(n) in plain}
        ap_c, ap_d = _ap(gt, results, categ, backend), _ap(gt, results, names - categ, backend)
        metrics.update({"language/AP_categ": ap_c, "language/AP_descr": ap_d,
                        "language/AP_omnilabel": 2 * ap_c * ap_d / (ap_c + ap_d) if min(ap_c, ap_d) > 0 else 0.0})
    absent = ({n for n in names if is_absence_description(n)} if absence is None
              else {n for n in names if protocol.normalize(n) in {protocol.normalize(a) for a in absence}})
    metrics["d3/full"] = metrics["language/AP"]
    metrics["d3/presence"] = _ap(gt, results, names - absent, backend)
    metrics["d3/absence"] = _ap(gt, results, absent, backend)
    id_scores, ood_scores = description_confidences(samples, predictions, protocol)
    if id_scores and ood_scores:
        metrics.update(ood_metrics(id_scores, ood_scores))
    return metrics


def description_confidences(samples: list[dict], predictions: Mapping[str, Prediction],
                            protocol: str | Protocol = "strict") -> tuple[list[float], list[float]]:
    """Top confidence per asked (image, description): (present descriptions, absent descriptions)."""
    protocol = get_protocol(protocol)
    present, absent = [], []
    for s in samples:
        pred = predictions.get(s["key"], Prediction()).with_constant_score(protocol.constant_score)
        top: dict[str, float] = {}
        for label, score in zip(pred.labels, pred.scores.tolist()):
            key = protocol.normalize(label)
            top[key] = max(top.get(key, 0.0), score)
        positives, negatives = _asked(s)
        present += [top.get(protocol.normalize(p), 0.0) for p in sorted(positives)]
        absent += [top.get(protocol.normalize(n), 0.0) for n in sorted(negatives)]
    return present, absent
