"""Box geometry and one-to-one matching: the one implementation that metrics and GRPO rewards call.

Boxes are pixel ``xyxy`` arrays of shape ``(N, 4)``. Three matchers pair predictions with ground
truths, each prediction and each ground truth used at most once:

- ``hungarian``: the largest possible number of pairs with IoU >= threshold, and among those the
  largest total IoU (an optimal assignment, ``scipy.optimize.linear_sum_assignment``). Strict
  protocol; the number of true positives cannot be raised by any other one-to-one pairing.
- ``greedy``: the released Rex-Omni evaluation: ground truths in their order, each takes the unused
  prediction of highest IoU >= threshold.
- ``coco``: COCOeval's rule: predictions by descending score (ties keep their order), each takes the
  unused ground truth of highest IoU >= threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MATCH_METHODS = ("hungarian", "greedy", "coco")


def as_boxes(boxes, name: str = "boxes") -> np.ndarray:
    """Any box-like input (list, array, empty) -> float64 ``(N, 4)``; a clear error otherwise."""
    arr = np.asarray(boxes if boxes is not None else [], dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) as [x0, y0, x1, y1]; got shape {arr.shape}")
    return arr


def box_area(boxes) -> np.ndarray:
    """Areas of ``(N, 4)`` xyxy boxes; inverted boxes have area 0."""
    return _area(as_boxes(boxes))


def _area(b: np.ndarray) -> np.ndarray:
    return np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)


def box_iou(a, b) -> np.ndarray:
    """Intersection over union of every box in ``a`` (N, 4) with every box in ``b`` (M, 4) -> (N, M).

    Pairs whose union is empty (two degenerate boxes) have IoU 0.
    """
    a, b = as_boxes(a, "a"), as_boxes(b, "b")
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


@dataclass
class Matching:
    """Pairs found by :func:`match`: ``pred[k]`` is matched with ``gt[k]`` at IoU ``iou[k]``."""

    pred: np.ndarray
    gt: np.ndarray
    iou: np.ndarray
    num_pred: int
    num_gt: int

    @property
    def tp(self) -> int:
        return len(self.pred)

    @property
    def fp(self) -> int:
        return self.num_pred - self.tp

    @property
    def fn(self) -> int:
        return self.num_gt - self.tp

    def gt_of_pred(self) -> np.ndarray:
        """For each prediction, the index of its ground truth or -1."""
        out = np.full(self.num_pred, -1, dtype=np.int64)
        out[self.pred] = self.gt
        return out


def match(pred, gt, iou_threshold: float = 0.5, method: str = "hungarian", *, scores=None,
          iou: np.ndarray | None = None) -> Matching:
    """Pair predicted boxes with ground-truth boxes one-to-one at ``iou >= iou_threshold``.

    ``pred`` (N, 4) and ``gt`` (M, 4) are xyxy boxes; ``method`` is one of ``MATCH_METHODS`` (see the
    module docstring); ``scores`` orders predictions for ``coco``; ``iou`` is an optional precomputed
    ``box_iou(pred, gt)`` (pass it to match one pair of box sets at several thresholds cheaply).
    For other geometries (points in masks, OKS) pass any (N, M) similarity as ``iou``.
    """
    if iou is None:
        iou = box_iou(pred, gt)
    iou = np.asarray(iou, dtype=np.float64)
    n, m = iou.shape
    if n == 0 or m == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Matching(empty, empty, np.zeros(0), n, m)
    if method == "hungarian":
        rows, cols = _hungarian(iou, iou_threshold)
    elif method == "greedy":
        rows, cols = _greedy_by_gt(iou, iou_threshold)
    elif method == "coco":
        order = np.arange(n) if scores is None else np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        rows, cols = _greedy_by_pred(iou, iou_threshold, order)
    else:
        raise ValueError(f"unknown matching method {method!r}; expected one of {MATCH_METHODS}")
    return Matching(rows, cols, iou[rows, cols], n, m)


def count_matches(iou: np.ndarray, thresholds, method: str = "hungarian", scores=None) -> np.ndarray:
    """Number of one-to-one pairs at each of ``thresholds`` (ascending) for one similarity matrix.

    The same counts as ``match(..., iou=iou).tp`` threshold by threshold, faster: when no prediction
    or ground truth has two candidates at the lowest threshold, every candidate pair is matched at
    every threshold (by any method), and the counts are read off at once.
    """
    iou = np.asarray(iou, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    out = np.zeros(len(thresholds), dtype=np.int64)
    if iou.size == 0:
        return out
    valid = iou >= thresholds.min()
    if valid.sum(0).max() <= 1 and valid.sum(1).max() <= 1:
        return (iou[valid][None, :] >= thresholds[:, None]).sum(1)
    best = iou.max()
    for k, t in enumerate(thresholds):
        if best < t:  # nothing left to pair at this threshold or above
            break
        out[k] = match(None, None, t, method, scores=scores, iou=iou).tp
    return out


def _hungarian(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    valid = iou >= threshold
    if not valid.any():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if valid.sum(0).max() <= 1 and valid.sum(1).max() <= 1:  # no conflicts: every candidate pair is kept
        rows, cols = np.nonzero(valid)
        return rows.astype(np.int64), cols.astype(np.int64)
    # Only rows and columns with a candidate pair enter the assignment: keeps it small.
    r_keep, c_keep = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    sub_valid = valid[np.ix_(r_keep, c_keep)]
    # Each valid pair weighs `bonus + iou` with bonus > the largest possible IoU total, so the optimum
    # has the most pairs first and the highest IoU second.
    from scipy.optimize import linear_sum_assignment  # here: scipy.optimize takes a second to import

    bonus = min(sub_valid.shape) + 1.0
    weight = np.where(sub_valid, bonus + iou[np.ix_(r_keep, c_keep)], 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    keep = sub_valid[rows, cols]
    return r_keep[rows[keep]], c_keep[cols[keep]]


def _greedy_by_gt(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    used = np.zeros(iou.shape[0], dtype=bool)
    rows, cols = [], []
    for j in range(iou.shape[1]):
        column = np.where(used, -1.0, iou[:, j])
        i = int(np.argmax(column))
        if column[i] >= threshold:
            used[i] = True
            rows.append(i)
            cols.append(j)
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)


def _greedy_by_pred(iou: np.ndarray, threshold: float, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used = np.zeros(iou.shape[1], dtype=bool)
    rows, cols = [], []
    for i in order:
        row = np.where(used, -1.0, iou[i])
        j = int(np.argmax(row))
        if row[j] >= threshold:
            used[j] = True
            rows.append(int(i))
            cols.append(j)
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
