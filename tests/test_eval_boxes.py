"""Box IoU and one-to-one matching (the implementation GRPO rewards call too)."""

import itertools

import numpy as np
import pytest
from rexomni.eval.boxes import box_area, box_iou, count_matches, match


def test_box_iou_hand_computed():
    a = [[0, 0, 10, 10], [5, 5, 15, 15]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    assert iou[0, 0] == pytest.approx(1.0)
    assert iou[0, 1] == pytest.approx(50 / 150)  # half overlap: 50 / (100 + 100 - 50)
    assert iou[0, 2] == 0.0
    assert iou[1, 0] == pytest.approx(25 / 175)
    assert iou[1, 1] == pytest.approx(50 / 150)


def test_box_iou_empty_and_degenerate():
    assert box_iou([], [[0, 0, 1, 1]]).shape == (0, 1)
    assert box_iou(np.zeros((3, 4)), []).shape == (3, 0)
    # two zero-area boxes: union 0, IoU defined as 0 rather than NaN
    assert box_iou([[1, 1, 1, 1]], [[1, 1, 1, 1]])[0, 0] == 0.0
    assert box_area([[0, 0, 2, 3], [5, 5, 4, 4]]).tolist() == [6.0, 0.0]


def test_box_iou_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        box_iou([[0, 0, 1]], [[0, 0, 1, 1]])


def test_hungarian_finds_more_pairs_than_greedy():
    # gt0 overlaps p0 best, but p0 is the only prediction for gt1; greedy by gt order takes p0 for gt0
    # and leaves gt1 unmatched; the optimal assignment pairs p1-gt0 and p0-gt1.
    iou = np.array([[0.9, 0.6],
                    [0.7, 0.0]])
    hungarian = match(None, None, 0.5, "hungarian", iou=iou)
    greedy = match(None, None, 0.5, "greedy", iou=iou)
    assert hungarian.tp == 2 and sorted(zip(hungarian.pred.tolist(), hungarian.gt.tolist())) == [(0, 1), (1, 0)]
    assert greedy.tp == 1 and greedy.pred.tolist() == [0] and greedy.gt.tolist() == [0]
    assert greedy.fp == 1 and greedy.fn == 1


def test_coco_matching_follows_scores():
    iou = np.array([[0.9, 0.6],
                    [0.7, 0.0]])
    # p1 ranks first, takes gt0, then p0 takes gt1: two pairs
    m = match(None, None, 0.5, "coco", scores=[0.1, 0.9], iou=iou)
    assert m.tp == 2 and m.gt_of_pred().tolist() == [1, 0]
    # p0 ranks first and takes gt0; p1 has nothing left
    m = match(None, None, 0.5, "coco", scores=[0.9, 0.1], iou=iou)
    assert m.tp == 1 and m.gt_of_pred().tolist() == [0, -1]


def test_one_to_one_duplicates_do_not_count_twice():
    gt = [[0, 0, 10, 10]]
    pred = [[0, 0, 10, 10], [0, 0, 10, 10.5]]
    for method in ("hungarian", "greedy", "coco"):
        m = match(pred, gt, 0.5, method)
        assert (m.tp, m.fp, m.fn) == (1, 1, 0)


def test_threshold_is_inclusive_and_ties_prefer_higher_iou():
    iou = np.array([[0.5, 0.8]])
    m = match(None, None, 0.5, "hungarian", iou=iou)
    assert m.tp == 1 and m.gt.tolist() == [1] and m.iou.tolist() == [0.8]
    assert match(None, None, 0.81, "hungarian", iou=iou).tp == 0


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="unknown matching method"):
        match([[0, 0, 1, 1]], [[0, 0, 1, 1]], method="nearest")


def _brute_force(iou, t):
    """Most pairs, then highest IoU total, over every one-to-one assignment."""
    n, m = iou.shape
    best = (0, 0.0)
    for k in range(min(n, m) + 1):
        for rows in itertools.permutations(range(n), k):
            for cols in itertools.combinations(range(m), k):
                vals = [iou[r, c] for r, c in zip(rows, cols)]
                if all(v >= t for v in vals):
                    best = max(best, (k, round(sum(vals), 9)))
    return best


def test_hungarian_is_optimal_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n, m = rng.integers(0, 5, size=2)
        iou = np.round(rng.uniform(0, 1, (n, m)) * (rng.uniform(size=(n, m)) < 0.6), 2)
        got = match(None, None, 0.3, "hungarian", iou=iou)
        assert (got.tp, round(float(got.iou.sum()), 9)) == _brute_force(iou, 0.3)
        assert len(set(got.pred.tolist())) == got.tp and len(set(got.gt.tolist())) == got.tp


def test_count_matches_equals_match_at_every_threshold():
    rng = np.random.default_rng(1)
    thresholds = np.arange(10) * 0.05 + 0.5
    for _ in range(200):
        n, m = rng.integers(0, 6, size=2)
        iou = rng.uniform(0, 1, (n, m)) * (rng.uniform(size=(n, m)) < 0.5)
        scores = rng.uniform(size=n)
        for method in ("hungarian", "greedy", "coco"):
            expected = [match(None, None, t, method, scores=scores, iou=iou).tp for t in thresholds]
            assert count_matches(iou, thresholds, method, scores).tolist() == expected
