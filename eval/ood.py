"""Out-of-distribution detection: FPR at 95% TPR and AUROC, and the detection-level metrics of the
negatives benchmark (boxes on held-out shapes, boxes on distractors).

In-distribution items are positives and should score higher than out-of-distribution ones (for a
detector: the confidence it gives a description that is in the image vs one that refers to nothing,
or the OOD score it gives a box on a known object vs one on a shape of a kind it never learned).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _scores(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty: OOD metrics need at least one in-distribution and one OOD score")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite scores")
    return arr


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """Share of OOD items scoring at or above the highest threshold that keeps ``tpr`` of the ID items."""
    id_scores, ood_scores = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    allowed_misses = int(np.floor(len(id_scores) * (1 - tpr) + 1e-9))
    threshold = np.sort(id_scores)[allowed_misses]
    return float(np.mean(ood_scores >= threshold))


def auroc(id_scores, ood_scores) -> float:
    """Probability that a random ID item outscores a random OOD item (ties count one half)."""
    id_scores, ood_scores = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    from scipy.stats import rankdata  # here: scipy.stats is slow to import

    ranks = rankdata(np.concatenate([id_scores, ood_scores]))  # average ranks: ties share
    n_id, n_ood = len(id_scores), len(ood_scores)
    return float((ranks[:n_id].sum() - n_id * (n_id + 1) / 2) / (n_id * n_ood))


def ood_metrics(id_scores, ood_scores, prefix: str = "ood/") -> dict[str, float]:
    return {f"{prefix}fpr@95tpr": fpr_at_tpr(id_scores, ood_scores), f"{prefix}auroc": auroc(id_scores, ood_scores)}


# --------------------------------------------------------------------------- detections (docs/negatives.md)


def _hits(boxes, targets, iou_threshold: float) -> np.ndarray:
    """(N,) bool: predicted box i overlaps one of ``targets`` at IoU >= ``iou_threshold``."""
    from .boxes import box_iou

    if not len(boxes) or not len(targets):
        return np.zeros(len(boxes), dtype=bool)
    return box_iou(np.asarray(boxes, dtype=np.float64), np.asarray(targets, dtype=np.float64)).max(1) >= iou_threshold


def detection_ood_metrics(samples: list[dict], records: Mapping[str, Mapping], iou_threshold: float = 0.5,
                          prefix: str = "ood/") -> dict[str, float]:
    """FPR at 95% TPR and AUROC of the detector's per-box OOD score and of its plain box score.

    In-distribution boxes: predictions on a ground-truth object of their own label (IoU >= the
    threshold). OOD boxes: predictions on one of the sample's ``held_out`` objects, shapes of kinds the
    model never learned. Other predictions take no part. ``records`` are the prediction records by
    sample key (``boxes``, ``labels``, ``scores``, ``ood_scores``). Counts of both kinds are reported;
    the rates are NaN when either kind is missing.
    """
    scores = {"id": [], "ood": []}
    box_scores = {"id": [], "ood": []}
    for sample in samples:
        record = records.get(sample["key"])
        if not record or not record.get("boxes"):
            continue
        if "ood_scores" not in record:
            raise ValueError(f"sample {sample['key']!r}: its prediction has no ood_scores (predict with ood=True)")
        boxes, labels = record["boxes"], record["labels"]
        on_held_out = _hits(boxes, [h["bbox"] for h in sample.get("held_out", [])], iou_threshold)
        own = np.array([_hits([box], [o["bbox"] for o in sample.get("objects", []) if o["phrase"] == label],
                              iou_threshold)[0] for box, label in zip(boxes, labels)])
        for kind, keep in (("id", own), ("ood", on_held_out)):
            scores[kind] += [record["ood_scores"][i] for i in np.flatnonzero(keep)]
            box_scores[kind] += [record["scores"][i] for i in np.flatnonzero(keep)]
    out = {f"{prefix}id_boxes": float(len(scores["id"])), f"{prefix}ood_boxes": float(len(scores["ood"]))}
    for name, values in (("", scores), ("box_score_", box_scores)):
        if values["id"] and values["ood"]:
            out.update(ood_metrics(values["id"], values["ood"], prefix=f"{prefix}{name}"))
        else:
            out.update({f"{prefix}{name}fpr@95tpr": float("nan"), f"{prefix}{name}auroc": float("nan")})
    return out


def distractor_hits(samples: list[dict], records: Mapping[str, Mapping],
                    iou_threshold: float = 0.5) -> dict[str, float]:
    """How often the detector boxes what it must not find: the share of the samples' ``distractors``
    (objects of the negative phrases, and ``held_out`` shapes) that a prediction overlaps at IoU >= the
    threshold, whatever its label; NaN without distractors."""
    found = total = 0
    for sample in samples:
        targets = [o["bbox"] for o in sample.get("distractors", []) + sample.get("held_out", [])]
        boxes = (records.get(sample["key"]) or {}).get("boxes") or []
        total += len(targets)
        found += int(_hits(targets, boxes, iou_threshold).sum())
    return {"distractors/boxed": found / total if total else float("nan"), "distractors/count": float(total)}
