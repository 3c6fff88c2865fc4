"""Box F1 on hand-computed cases."""

import numpy as np
import pytest
from rexomni.eval.data import Prediction, assign_keys
from rexomni.eval.f1 import IOU_THRESHOLDS, box_f1

CAT = [0, 0, 10, 10]
DOG = [20, 20, 30, 30]
FAR = [50, 50, 60, 60]


def _samples():
    return assign_keys([
        {"image": "1.jpg", "width": 100, "height": 100,
         "objects": [{"phrase": "cat", "bbox": CAT}, {"phrase": "dog", "bbox": DOG}]},
        {"image": "2.jpg", "width": 100, "height": 100, "objects": [{"phrase": "cat", "bbox": CAT}]},
    ])


def _predictions():
    return {"1.jpg": Prediction([CAT, FAR], [0.9, 0.8], ["cat", "cat"]),
            "2.jpg": Prediction([CAT], [0.9], ["cat"])}


def test_thresholds_are_the_coco_ten():
    assert np.allclose(IOU_THRESHOLDS, np.arange(10) * 0.05 + 0.5)


def test_strict_category_average_counts_zero_categories():
    # cat: 2 TP of 3 predictions and 2 ground truths -> P 2/3, R 1; dog: never predicted -> P 0, R 0
    result = box_f1(_samples(), _predictions(), "strict")
    p, r, f = result.at(0.5)
    assert p == pytest.approx(1 / 3) and r == pytest.approx(0.5) and f == pytest.approx(0.4)
    metrics = result.metrics()
    assert metrics["f1@0.5"] == pytest.approx(0.4)
    assert metrics["f1@0.95"] == pytest.approx(0.4)  # exact boxes: IoU 1 at every threshold
    assert metrics["f1@mean"] == pytest.approx(0.4)


def test_prediction_of_a_label_without_ground_truth_lowers_precision_only():
    preds = _predictions()
    preds["2.jpg"] = Prediction([CAT, FAR], [0.9, 0.5], ["cat", "bird"])
    p, r, _ = box_f1(_samples(), preds, "strict").at(0.5)
    assert p == pytest.approx((2 / 3 + 0 + 0) / 3)  # cat, dog, bird
    assert r == pytest.approx(0.5)  # bird has no recall to average


def test_f1_falls_with_the_iou_threshold():
    samples = assign_keys([{"image": "a", "width": 100, "height": 100,
                            "objects": [{"phrase": "x", "bbox": [0, 0, 10, 10]}]}])
    # IoU of [0, 0, 10, 8] with the ground truth is 0.8: a hit up to threshold 0.8, a miss above
    result = box_f1(samples, {"a": Prediction([[0, 0, 10, 8]], [1.0], ["x"])}, "strict")
    assert result.f1.tolist() == [1.0] * 7 + [0.0] * 3
    assert result.metrics()["f1@mean"] == pytest.approx(0.7)


def test_missing_prediction_counts_as_empty():
    p, r, f = box_f1(_samples(), {}, "strict").at(0.5)
    assert (p, r, f) == (0.0, 0.0, 0.0)


def test_sample_average_with_empty_sample():
    samples = _samples() + assign_keys([{"image": "3.jpg", "width": 100, "height": 100, "objects": []}])
    samples[2]["key"] = "3.jpg"
    result = box_f1(samples, _predictions(), "rexomni", coco_style=False)
    # sample 1: agnostic greedy, 1 of 2 predictions right, 1 of 2 ground truths found -> P 1/2, R 1/2
    # sample 2: P 1, R 1; sample 3: nothing expected, nothing predicted -> P 1, R 1
    p, r, _ = result.at(0.5)
    assert p == pytest.approx(5 / 6) and r == pytest.approx(5 / 6)
    assert result.averaging == "sample" and result.num_units == 3


def test_unknown_threshold_is_a_key_error():
    with pytest.raises(KeyError):
        box_f1(_samples(), _predictions()).at(0.42)


def _random_set(seed, n_images=15):
    rng = np.random.default_rng(seed)
    samples, preds = [], {}
    for i in range(n_images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 80, (n, 2))
        gt = np.c_[xy, xy + rng.uniform(5, 30, (n, 2))]
        labels = [str(c) for c in rng.choice(["a", "b", "c"], n)]
        samples.append({"image": str(i), "width": 120, "height": 120,
                        "objects": [{"phrase": c, "bbox": b.tolist()} for c, b in zip(labels, gt)]})
        boxes = np.r_[gt + rng.normal(0, 3, gt.shape), np.c_[xy[:2], xy[:2] + 12]]
        preds[str(i)] = Prediction(boxes, rng.uniform(size=len(boxes)), labels + labels[:2])
    return assign_keys(samples), preds


def _shuffled(pred, rng):
    order = rng.permutation(len(pred.labels))
    return Prediction(pred.boxes[order], pred.scores[order], [pred.labels[i] for i in order])


def test_strict_f1_does_not_depend_on_answer_order():
    rng = np.random.default_rng(0)
    for seed in range(5):
        samples, preds = _random_set(seed)
        shuffled = {k: _shuffled(p, rng) for k, p in preds.items()}
        np.testing.assert_allclose(box_f1(samples, preds).f1, box_f1(samples, shuffled).f1)


def test_perfect_answers_score_one_under_both_protocols():
    samples, _ = _random_set(7)
    perfect = {s["key"]: Prediction([o["bbox"] for o in s["objects"]], [0.9] * len(s["objects"]),
                                    [o["phrase"] for o in s["objects"]]) for s in samples}
    for protocol in ("strict", "rexomni"):
        for coco_style in (True, False):
            assert box_f1(samples, perfect, protocol, coco_style).f1 == pytest.approx(np.ones(10))
