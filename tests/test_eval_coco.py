"""COCO AP through faster-coco-eval agrees with pycocotools' COCOeval; hand-computed AP cases."""

import numpy as np
import pytest
from rexomni.eval.coco import COCO_KEYS, build_coco, coco_ap, coco_eval
from rexomni.eval.data import Prediction, assign_keys


def random_detections(n_images=40, seed=0, categories=("cat", "dog", "car")):
    rng = np.random.default_rng(seed)
    samples, preds = [], {}
    for i in range(n_images):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 500, (n, 2))
        boxes = np.c_[xy, xy + rng.uniform(4, 200, (n, 2))]  # small, medium and large objects
        labels = [str(c) for c in rng.choice(categories, n)]
        samples.append({"image": f"{i}.jpg", "width": 700, "height": 700,
                        "objects": [{"phrase": c, "bbox": b.tolist()} for c, b in zip(labels, boxes)]})
        k = int(rng.integers(0, 5))
        noisy = boxes + rng.normal(0, 6, boxes.shape)
        extra_xy = rng.uniform(0, 500, (k, 2))
        extra = np.c_[extra_xy, extra_xy + rng.uniform(10, 80, (k, 2))]
        preds[f"{i}.jpg"] = Prediction(np.r_[noisy, extra], rng.uniform(size=n + k),
                                       labels + [str(c) for c in rng.choice(categories, k)])
    return assign_keys(samples), preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faster_coco_eval_agrees_with_pycocotools(seed):
    samples, preds = random_detections(seed=seed)
    fast = coco_ap(samples, preds, backend="faster_coco_eval").metrics
    ref = coco_ap(samples, preds, backend="pycocotools").metrics
    assert set(fast) == {f"coco/{k}" for k in COCO_KEYS}
    for key in fast:
        assert fast[key] == pytest.approx(ref[key], abs=1e-6), key
    assert 0 < fast["coco/AP"] < fast["coco/AP50"] < 1  # the data is neither trivial nor hopeless


def test_full_stats_agree_including_recall():
    samples, preds = random_detections(seed=3)
    gt, results, _ = build_coco(samples, preds)
    fast = np.asarray(coco_eval(gt, results, "faster_coco_eval").stats[:12])
    ref = np.asarray(coco_eval(gt, results, "pycocotools").stats[:12])
    np.testing.assert_allclose(fast, ref, atol=1e-6)


def test_hand_computed_ap():
    samples = assign_keys([{"image": "a", "width": 100, "height": 100,
                            "objects": [{"phrase": "cat", "bbox": [0, 0, 50, 50]}]}])
    perfect = coco_ap(samples, {"a": Prediction([[0, 0, 50, 50]], [0.9], ["cat"])}).metrics
    assert perfect["coco/AP"] == pytest.approx(1.0) and perfect["coco/APm"] == pytest.approx(1.0)
    assert perfect["coco/APs"] == -1 and perfect["coco/APl"] == -1  # no ground truth of those sizes
    # a confident false positive ranked above the hit: precision 1/2 at recall 1 -> AP 0.5
    ranked = coco_ap(samples, {"a": Prediction([[60, 60, 90, 90], [0, 0, 50, 50]], [0.9, 0.5], ["cat", "cat"])})
    assert ranked.metrics["coco/AP50"] == pytest.approx(0.5)
    # a box with IoU 0.8 (x1 = 40): a hit up to threshold 0.8, a miss above -> AP 7/10
    shifted = coco_ap(samples, {"a": Prediction([[0, 0, 40, 50]], [0.9], ["cat"])}).metrics
    assert shifted["coco/AP50"] == pytest.approx(1.0) and shifted["coco/AP"] == pytest.approx(0.7)
    assert shifted["coco/AP75"] == pytest.approx(1.0)


def test_unknown_labels_are_counted_and_dropped():
    samples = assign_keys([{"image": "a", "width": 100, "height": 100,
                            "objects": [{"phrase": "cat", "bbox": [0, 0, 50, 50]}]}])
    result = coco_ap(samples, {"a": Prediction([[0, 0, 50, 50], [0, 0, 50, 50]], [0.9, 0.9], ["cat", "zebra"])})
    assert result.unknown_labels == 1 and result.metrics["coco/AP"] == pytest.approx(1.0)


def test_pr_curve_shape():
    samples, preds = random_detections(seed=4)
    result = coco_ap(samples, preds)
    assert set(result.pr_curves) == {0.5, 0.75}
    curve = result.pr_curves[0.5]
    assert curve.shape == result.recall_grid.shape == (101,)
    assert np.all(np.diff(curve) <= 1e-12)  # COCO's interpolated precision never rises with recall


def test_lvis_metrics_when_categories_have_frequencies():
    samples, preds = random_detections(seed=5)
    frequency = {"cat": "r", "dog": "c", "car": "f"}
    # every category verified on every image (listed in `categories`, as the COCO reader does):
    # LVIS's federated rules then score like plain COCO
    exhaustive = [dict(s, categories=["car", "cat", "dog"]) for s in samples]
    metrics = coco_ap(exhaustive, preds, category_frequency=frequency).metrics
    assert {"lvis/APr", "lvis/APc", "lvis/APf"} <= set(metrics)
    # one category per frequency group: each group's AP is that category's own AP
    per_cat = [coco_ap([dict(s, objects=[o for o in s["objects"] if o["phrase"] == c]) for s in samples],
                       {k: _only(p, c) for k, p in preds.items()}).metrics["coco/AP"] for c in ("cat", "dog", "car")]
    assert [metrics["lvis/APr"], metrics["lvis/APc"], metrics["lvis/APf"]] == pytest.approx(per_cat, abs=1e-6)
    # without verified negatives, detections on images where a category was not verified are ignored
    federated = coco_ap(samples, preds, category_frequency=frequency).metrics
    assert federated["lvis/APr"] > metrics["lvis/APr"]


def _only(pred, label):
    keep = [i for i, lb in enumerate(pred.labels) if lb == label]
    return Prediction(pred.boxes[keep], pred.scores[keep], [label] * len(keep))


def test_no_ground_truth_is_a_clear_error():
    samples = assign_keys([{"image": "a", "width": 10, "height": 10, "objects": []}])
    with pytest.raises(ValueError, match="at least one ground-truth box"):
        coco_ap(samples, {})
