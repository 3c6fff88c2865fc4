"""COCO AP / AP50 / AP75 / APs / APm / APl and LVIS APr / APc / APf, computed by COCOeval itself.

faster-coco-eval (C++) is the default backend; pycocotools gives the same numbers (tested) and is
kept as the reference. Samples and predictions are turned into COCO dicts here; the model's
confidence scores rank the detections unless the protocol fixes a constant score.

Areas for APs/m/l are the ``area`` of a ground-truth object when the source gave one, else the area
of its mask (COCO's areas are polygon areas, which differ from the rasterised mask by a few pixels
at the border), else its box area. Crowd regions are ignored only when the samples keep them with
``iscrowd: 1``. LVIS evaluation (federated: a category not verified for an image
is neither penalised nor rewarded there) is used when every category has a ``frequency``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .boxes import box_area
from .data import Prediction, gt_boxes
from .protocols import Protocol, get_protocol

BACKENDS = ("faster_coco_eval", "pycocotools")
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_KEYS = ("APr", "APc", "APf")


@dataclass
class CocoResult:
    """Flat metrics and the mean precision-recall curves (over categories) at IoU 0.5 and 0.75."""

    metrics: dict[str, float]
    recall_grid: np.ndarray = field(default_factory=lambda: np.linspace(0, 1, 101))
    pr_curves: dict[float, np.ndarray] = field(default_factory=dict)
    unknown_labels: int = 0


def build_coco(samples: list[dict], predictions: Mapping[str, Prediction], protocol: str | Protocol = "strict",
               category_frequency: Mapping[str, str] | None = None) -> tuple[dict, list[dict], int]:
    """Samples and predictions -> (COCO ground-truth dict, COCO results list, unknown-label count).

    Categories are the ground-truth phrases; a predicted label is mapped to the category whose name
    is equal under the protocol's normalisation, and dropped (and counted) when none is.
    """
    protocol = get_protocol(protocol)
    names: dict[str, str] = {}  # normalised -> first spelling seen
    for s in samples:
        for phrase in gt_boxes(s)[1] + [str(c) for c in s.get("categories", [])]:
            names.setdefault(protocol.normalize(phrase), phrase)
    cat_id = {norm: i + 1 for i, norm in enumerate(sorted(names))}
    frequency = dict(category_frequency or {})
    for s in samples:
        for o in s.get("objects", []):
            if o.get("frequency"):
                frequency.setdefault(o["phrase"], o["frequency"])
    categories = []
    for norm, cid in cat_id.items():
        cat = {"id": cid, "name": names[norm]}
        if names[norm] in frequency:
            cat["frequency"] = frequency[names[norm]]
        categories.append(cat)
    images, annotations, results, unknown = [], [], [], 0
    for image_id, s in enumerate(samples, 1):
        image = {"id": image_id, "width": s.get("width", 0), "height": s.get("height", 0), "file_name": s["key"]}
        # verified absent (LVIS's negatives): asked, or listed as negative, and not present
        present = {protocol.normalize(o["phrase"]) for o in s.get("objects", [])}
        asked = [str(c) for c in s.get("categories", [])] + list((s.get("negatives") or {}).get("phrases", []))
        image["neg_category_ids"] = sorted({cat_id[n] for n in map(protocol.normalize, asked)
                                            if n in cat_id and n not in present})
        image["not_exhaustive_category_ids"] = [cat_id[n] for n in map(protocol.normalize,
                                                s.get("not_exhaustive_categories", [])) if n in cat_id]
        images.append(image)
        objects = [o for o in s.get("objects", []) if o.get("bbox") is not None]
        boxes = np.asarray([o["bbox"] for o in objects], dtype=np.float64).reshape(-1, 4)
        areas = box_area(boxes)
        for o, (x0, y0, x1, y1), area in zip(objects, boxes.tolist(), areas.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": cat_id[protocol.normalize(o["phrase"])],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": _object_area(o, area),
                                "iscrowd": int(o.get("iscrowd", 0))})
        pred = predictions.get(s["key"])
        if pred is None:
            continue
        pred = pred.with_constant_score(protocol.constant_score)
        for (x0, y0, x1, y1), score, label in zip(pred.boxes.tolist(), pred.scores.tolist(), pred.labels):
            cid = cat_id.get(protocol.normalize(label))
            if cid is None:
                unknown += 1
                continue
            results.append({"image_id": image_id, "category_id": cid, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(score)})
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, results, unknown


def lvis_category_frequency(path: str | os.PathLike) -> dict[str, str]:
    """``{phrase: "r" | "c" | "f"}`` from an LVIS annotation file, phrases spelt as the reader spells them."""
    from rexomni.data_engines.readers import category_phrase  # the reader's own name cleaning: keys match

    with open(path, encoding="utf-8") as f:
        categories = json.load(f).get("categories", [])
    return {category_phrase(c["name"]): c["frequency"] for c in categories if c.get("frequency")}


def _object_area(obj: Mapping, box_area: float) -> float:
    """The area COCO sizes objects by: the source's ``area``, else the mask's, else the box's."""
    if obj.get("area") is not None:
        return float(obj["area"])
    mask = obj.get("mask")
    if isinstance(mask, Mapping) and isinstance(mask.get("counts"), (str, bytes)):
        from pycocotools import mask as mask_utils

        counts = mask["counts"].encode("ascii") if isinstance(mask["counts"], str) else mask["counts"]
        return float(mask_utils.area({"size": list(mask["size"]), "counts": counts}))
    return float(box_area)


def coco_eval(gt: dict, results: list[dict], backend: str = "faster_coco_eval", lvis: bool | None = None):
    """Run COCOeval (bbox) on a ground-truth dict and results; returns the evaluated COCOeval object."""
    if lvis is None:
        lvis = bool(gt["categories"]) and all("frequency" in c for c in gt["categories"])
    # Both backends add keys to the records they are given (ids, areas, ignore flags); copying the
    # records one level deep keeps the caller's dicts clean at a fraction of a deep copy's cost.
    gt = {key: [dict(r) for r in records] if isinstance(records, list) else records for key, records in gt.items()}
    results = [dict(r) for r in results]
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        coco_gt = COCO(gt)
        coco_dt = coco_gt.loadRes(results) if results else COCO()
        evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", lvis_style=lvis, print_function=logging.debug)
        if lvis:
            evaluator.params.maxDets = [1, 10, 300]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        return evaluator
    if backend == "pycocotools":
        if lvis:
            raise ValueError("LVIS-style evaluation needs the faster_coco_eval backend")
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(results) if results else COCO()
            evaluator = COCOeval(coco_gt, coco_dt, "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return evaluator
    raise ValueError(f"unknown COCO backend {backend!r}; expected one of {BACKENDS}")


def coco_ap(samples: list[dict], predictions: Mapping[str, Prediction], protocol: str | Protocol = "strict",
            backend: str = "faster_coco_eval", category_frequency: Mapping[str, str] | None = None) -> CocoResult:
    """COCO (and, with category frequencies, LVIS) box AP of ``predictions`` against ``samples``.

    Keys: ``coco/AP``, ``coco/AP50``, ``coco/AP75``, ``coco/APs``, ``coco/APm``, ``coco/APl``, and
    ``lvis/APr``, ``lvis/APc``, ``lvis/APf`` for LVIS. A value COCOeval cannot define (no ground truth
    in that area range) is reported as -1, as COCOeval does.
    """
    gt, results, unknown = build_coco(samples, predictions, protocol, category_frequency)
    if not gt["annotations"]:
        raise ValueError("COCO AP needs at least one ground-truth box; the annotations have none")
    evaluator = coco_eval(gt, results, backend)
    stats = [float(x) for x in evaluator.stats[:6]]
    metrics = {f"coco/{k}": v for k, v in zip(COCO_KEYS, stats)}
    if getattr(evaluator, "lvis_style", False):
        as_dict = evaluator.stats_as_dict
        metrics.update({f"lvis/{k}": float(as_dict[k]) for k in LVIS_KEYS})
    recall_grid = np.asarray(evaluator.params.recThrs)
    precision = np.asarray(evaluator.eval["precision"])  # (T, R, K, A, M)
    curves = {}
    for t in (0.5, 0.75):
        ti = int(np.argmin(np.abs(np.asarray(evaluator.params.iouThrs) - t)))
        per_cat = precision[ti, :, :, 0, -1]  # all areas, largest maxDets
        valid = per_cat > -1
        curves[t] = np.where(valid.any(1), np.where(valid, per_cat, 0).sum(1) / np.maximum(valid.sum(1), 1), 0.0)
    return CocoResult(metrics, recall_grid, curves, unknown)
