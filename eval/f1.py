"""Box F1 as the Rex-Omni paper reports it: precision and recall averaged, F1 their harmonic mean.

At each IoU threshold (0.5, 0.55, ..., 0.95) predictions are matched one-to-one with ground truths
(the protocol's matcher), then either

- ``category`` averaging: true positives, predictions and ground truths are pooled per category over
  the data set; precision and recall are computed per category and averaged over categories;
- ``sample`` averaging: precision and recall per sample, averaged over samples (a sample with neither
  ground truth nor prediction scores 1 and 1).

``F1@t = 2 P R / (P + R)`` of those averages; ``f1@mean`` is the mean of F1 over the thresholds.
Per-category zero-division rules (strict): a category with ground truth but no prediction has
precision 0; a category with predictions but no ground truth has precision 0 and no recall (it is
left out of the recall mean only, since recall is undefined there).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .boxes import box_iou, count_matches
from .data import Prediction, gt_categories
from .protocols import Protocol, get_protocol

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)


@dataclass
class F1Result:
    """Precision, recall and F1 at each IoU threshold, plus what they were computed over."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    num_units: int  # categories or samples averaged
    averaging: str

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(p + r > 0, 2 * p * r / (p + r), 0.0)

    def at(self, threshold: float) -> tuple[float, float, float]:
        i = int(np.argmin(np.abs(self.thresholds - threshold)))
        if abs(self.thresholds[i] - threshold) > 1e-9:
            raise KeyError(f"IoU threshold {threshold} was not computed; have {self.thresholds.tolist()}")
        return float(self.precision[i]), float(self.recall[i]), float(self.f1[i])

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat keys: ``f1@0.5``, ``precision@0.5``, ``recall@0.5``, the same at 0.95, and ``f1@mean``."""
        out = {}
        for t in (0.5, 0.95):
            if np.any(np.isclose(self.thresholds, t)):
                p, r, f = self.at(t)
                out.update({f"{prefix}f1@{t:g}": f, f"{prefix}precision@{t:g}": p, f"{prefix}recall@{t:g}": r})
        out[f"{prefix}f1@mean"] = float(self.f1.mean())
        out[f"{prefix}precision@mean"] = float(self.precision.mean())
        out[f"{prefix}recall@mean"] = float(self.recall.mean())
        return out


def box_f1(samples: list[dict], predictions: Mapping[str, Prediction], protocol: str | Protocol = "strict",
           coco_style: bool = True, detection_set: bool = True,
           thresholds=IOU_THRESHOLDS) -> F1Result:
    """Box F1 of ``predictions`` (key -> Prediction) against ``samples`` under ``protocol``.

    ``coco_style``: a COCO/LVIS-like data set (always averaged per category; the rexomni protocol
    then matches with COCOeval's rule). ``detection_set`` picks the released name normalisation.
    A sample without a prediction counts as one that predicted nothing.
    """
    return f1_score(samples, predictions, BOX_VIEW, protocol, coco_style, detection_set, thresholds)


@dataclass(frozen=True)
class GeometryView:
    """How one kind of geometry is scored: which predictions and ground truths take part, and the
    (N, M) similarity matched against the thresholds (IoU for boxes, 1/0 for point-in-region, OKS)."""

    predicted: Callable[[Prediction], tuple[Sequence, list[str], np.ndarray]]  # -> geometry, labels, scores
    ground_truth: Callable[[dict], list[dict]]  # sample -> its scorable objects
    similarity: Callable[[Sequence, list[dict]], np.ndarray]


def _box_similarity(boxes, objects) -> np.ndarray:
    return box_iou(boxes, [o["bbox"] for o in objects])


BOX_VIEW = GeometryView(
    predicted=lambda p: (p.boxes, p.labels, p.scores),
    ground_truth=lambda s: [o for o in s.get("objects", []) if o.get("bbox") is not None],
    similarity=_box_similarity,
)


def f1_score(samples: list[dict], predictions: Mapping[str, Prediction], view: GeometryView,
             protocol: str | Protocol = "strict", coco_style: bool = True, detection_set: bool = True,
             thresholds=IOU_THRESHOLDS) -> F1Result:
    """F1 for any geometry (see :class:`GeometryView`), with the protocol's matching and averaging."""
    protocol = get_protocol(protocol)
    thresholds = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    empty = Prediction()
    units = [_sample_counts(sample, predictions.get(sample["key"], empty), view, protocol, coco_style, detection_set,
                            thresholds)
             for sample in samples]
    if protocol.averaging(coco_style) == "category":
        return _category_average(units, protocol, thresholds)
    return _sample_average(units, thresholds)


def _sample_counts(sample: dict, pred: Prediction, view: GeometryView, protocol: Protocol, coco_style: bool,
                   detection_set: bool, thresholds: np.ndarray) -> list[tuple[str, np.ndarray, int, int]]:
    """One sample's ``(category, true positives per threshold, predictions, ground truths)`` rows."""
    norm = lambda phrase: protocol.normalize(phrase, detection_set)
    geometry, labels, scores = view.predicted(pred.with_constant_score(protocol.constant_score))
    scores = np.asarray(scores)
    objects = view.ground_truth(sample)
    gt_labels = [norm(o["phrase"]) for o in objects]
    pred_labels = [norm(label) for label in labels]
    per_sample = protocol.averaging(coco_style) == "sample"
    if per_sample:  # the released rule: only predictions named like one of the sample's phrases
        asked = {norm(c) for c in gt_categories(sample)} | set(gt_labels)
        keep = [i for i, label in enumerate(pred_labels) if label in asked]
        geometry, scores, pred_labels = _take(geometry, keep), scores[keep], [pred_labels[i] for i in keep]
    if per_sample and protocol.class_agnostic:
        groups = {"": (list(range(len(pred_labels))), list(range(len(objects))))}
    else:
        groups = _groups(pred_labels, gt_labels)
    rows = []
    for name, (pi, gi) in groups.items():
        tp = np.zeros(len(thresholds))
        if pi and gi:
            sim = view.similarity(_take(geometry, pi), [objects[j] for j in gi])
            tp = count_matches(sim, thresholds, protocol.matcher(coco_style), scores[pi]).astype(np.float64)
        rows.append((name, tp, len(pi), len(gi)))
    return rows


def _take(geometry, index: list[int]):
    if isinstance(geometry, np.ndarray):
        return geometry[np.asarray(index, dtype=np.int64)]
    return [geometry[i] for i in index]


def _groups(pred_labels: list[str], gt_labels: list[str]) -> dict[str, tuple[list[int], list[int]]]:
    groups: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for i, label in enumerate(pred_labels):
        groups[label][0].append(i)
    for j, label in enumerate(gt_labels):
        groups[label][1].append(j)
    return dict(groups)


def _category_average(units, protocol: Protocol, thresholds: np.ndarray) -> F1Result:
    tp = defaultdict(lambda: np.zeros(len(thresholds)))
    n_pred, n_gt = defaultdict(int), defaultdict(int)
    for rows in units:
        for name, t, npred, ngt in rows:
            tp[name] += t
            n_pred[name] += npred
            n_gt[name] += ngt
    names = sorted(tp)
    if not names:
        zeros = np.zeros(len(thresholds))
        return F1Result(thresholds, zeros, zeros.copy(), 0, "category")
    tps = np.stack([tp[n] for n in names])  # (C, T)
    npred = np.array([n_pred[n] for n in names], dtype=np.float64)[:, None]
    ngt = np.array([n_gt[n] for n in names], dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(npred > 0, tps / npred, 0.0)
        recall = np.where(ngt > 0, tps / ngt, np.nan)  # NaN: undefined, left out of the mean
    return F1Result(thresholds, _mean(precision, protocol), _mean(recall, protocol), len(names), "category")


def _mean(values: np.ndarray, protocol: Protocol) -> np.ndarray:
    """Mean over the first axis, per threshold; NaN left out; zeros too under ``drop_zero_categories``."""
    keep = ~np.isnan(values)
    if protocol.drop_zero_categories:
        keep &= values > 0
    counts = keep.sum(0)
    total = np.where(keep, values, 0.0).sum(0)
    return np.where(counts > 0, total / np.maximum(counts, 1), 0.0)


def _sample_average(units, thresholds: np.ndarray) -> F1Result:
    precisions, recalls = [], []
    for rows in units:
        tp = sum((t for _, t, _, _ in rows), np.zeros(len(thresholds)))
        npred = sum(n for _, _, n, _ in rows)
        ngt = sum(n for _, _, _, n in rows)
        if npred == 0 and ngt == 0:
            p = r = np.ones(len(thresholds))
        else:
            p = tp / npred if npred else np.zeros(len(thresholds))
            r = tp / ngt if ngt else np.zeros(len(thresholds))
        precisions.append(p)
        recalls.append(r)
    if not precisions:
        zeros = np.zeros(len(thresholds))
        return F1Result(thresholds, zeros, zeros.copy(), 0, "sample")
    return F1Result(thresholds, np.mean(precisions, 0), np.mean(recalls, 0), len(precisions), "sample")
