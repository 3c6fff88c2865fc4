"""The two protocols disagree exactly where docs/eval.md says they do: one crafted case per difference."""

import math

import pytest
from rexomni.eval.coco import coco_ap
from rexomni.eval.data import Prediction, assign_keys
from rexomni.eval.f1 import box_f1
from rexomni.eval.keypoints import keypoint_scores
from rexomni.eval.protocols import PROTOCOLS, REXOMNI, STRICT, get_protocol, normalize_name

CAT, DOG, FAR = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]


def _sample(image, *objects, **extra):
    return {"image": image, "width": 100, "height": 100,
            "objects": [{"phrase": p, "bbox": b} for p, b in objects], **extra}


def _f1(samples, preds, protocol, coco_style=True, detection_set=True):
    return box_f1(assign_keys(samples), preds, protocol, coco_style, detection_set).at(0.5)[2]


def test_protocol_registry():
    assert set(PROTOCOLS) == {"strict", "rexomni"}
    assert get_protocol("strict") is STRICT and get_protocol(REXOMNI) is REXOMNI
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("paper")


def test_zero_categories_counted_or_dropped():
    samples = [_sample("1", ("cat", CAT), ("dog", DOG)), _sample("2", ("cat", CAT))]
    preds = {"1": Prediction([CAT, FAR], [0.9, 0.8], ["cat", "cat"]), "2": Prediction([CAT], [0.9], ["cat"])}
    # cat: P 2/3, R 1; dog: P 0, R 0. strict averages the zeros in, rexomni leaves them out.
    assert _f1(samples, preds, "strict") == pytest.approx(0.4)
    assert _f1(samples, preds, "rexomni") == pytest.approx(0.8)


# Two ground truths and two predictions on a line (x only; every box spans y 0..10):
#   gt0 = [1, 11], gt1 = [3, 13], p0 = [2, 12] (the bridge), p1 = [0, 8]
# IoU(p0, gt0) = IoU(p0, gt1) = 9/11; IoU(p1, gt0) = 7/11; IoU(p1, gt1) = 5/13 < 0.5.
# Optimal: p1-gt0 and p0-gt1. Greedy: gt0 takes its best, p0, and gt1 is left with nothing.
BRIDGE_GT = [("box", [1, 0, 11, 10]), ("box", [3, 0, 13, 10])]
BRIDGE_PRED = [[2, 0, 12, 10], [0, 0, 8, 10]]


def test_one_to_one_optimal_versus_greedy_matching():
    samples = [_sample("1", *BRIDGE_GT)]
    preds = {"1": Prediction(BRIDGE_PRED, [0.5, 0.5], ["box", "box"])}
    assert box_f1(assign_keys(samples), preds, "strict", coco_style=False).at(0.5) == pytest.approx((1, 1, 1))
    assert box_f1(assign_keys(samples), preds, "rexomni", coco_style=False).at(0.5) == pytest.approx((.5, .5, .5))


def test_coco_sets_match_in_prediction_order_under_rexomni():
    # same geometry, COCO-style data set: rexomni uses COCOeval's rule with the constant score, so the
    # first prediction (the bridge) takes its best ground truth and the second finds none left
    samples = [_sample("1", *BRIDGE_GT)]
    preds = {"1": Prediction(BRIDGE_PRED, [0.1, 0.9], ["box", "box"])}
    assert _f1(samples, preds, "strict") == pytest.approx(1.0)
    assert _f1(samples, preds, "rexomni") == pytest.approx(0.5)


def test_constant_confidence_changes_ap():
    samples = assign_keys([_sample("1", ("cat", CAT))])
    # the false positive comes first in the answer but the model is unsure of it
    preds = {"1": Prediction([FAR, CAT], [0.1, 0.9], ["cat", "cat"])}
    strict = coco_ap(samples, preds, "strict").metrics["coco/AP50"]
    released = coco_ap(samples, preds, "rexomni").metrics["coco/AP50"]
    assert strict == pytest.approx(1.0)  # ranked by confidence: the hit first
    assert released == pytest.approx(0.5)  # tied at 0.2: answer order, precision 1/2 at recall 1


def test_name_normalisation():
    assert normalize_name("Traffic  Light", "strict") == "traffic light"
    assert normalize_name("traffic_light", "strict") != normalize_name("traffic light", "strict")
    assert normalize_name("Traffic-Light 2", "released", detection_set=True) == "trafficlight"
    assert normalize_name("the_red car", "released", detection_set=False) == "theredcar"
    samples = [_sample("1", ("traffic light", CAT))]
    preds = {"1": Prediction([CAT], [0.9], ["traffic_light"])}
    assert _f1(samples, preds, "strict") == 0.0
    assert _f1(samples, preds, "rexomni") == 1.0


def test_class_agnostic_matching_on_non_coco_sets():
    samples = [_sample("1", ("cat", CAT), ("dog", DOG))]
    preds = {"1": Prediction([CAT, DOG], [0.9, 0.9], ["dog", "cat"])}  # boxes right, names swapped
    assert _f1(samples, preds, "strict", coco_style=False) == 0.0
    assert _f1(samples, preds, "rexomni", coco_style=False) == 1.0


def test_unasked_labels_are_dropped_only_by_rexomni():
    samples = [_sample("1", ("cat", CAT), categories=["cat"])]
    preds = {"1": Prediction([CAT, FAR], [0.9, 0.9], ["cat", "unicorn"])}
    # strict: "unicorn" is a category of its own with precision 0 -> P = (1 + 0) / 2, R = 1
    assert _f1(samples, preds, "strict", coco_style=False) == pytest.approx(2 * 0.5 / 1.5)
    assert _f1(samples, preds, "rexomni", coco_style=False) == 1.0


def test_empty_samples_score_one_under_sample_averaging():
    samples = [_sample("1", ("cat", CAT)), _sample("2")]
    preds = {}
    assert _f1(samples, preds, "strict", coco_style=False) == 0.0
    assert _f1(samples, preds, "rexomni", coco_style=False) == pytest.approx(0.5)


def test_keypoint_sigmas_and_area():
    gt_points = {"left hip": [50.0, 50.0]}
    samples = assign_keys([{"image": "1", "width": 100, "height": 100,
                            "objects": [{"phrase": "person", "bbox": [0, 0, 100, 100], "area": 2500.0,
                                         "keypoints": gt_points}]}])
    instance = {"label": "person", "bbox": [0, 0, 100, 100], "keypoints": {"left hip": [55.0, 50.0]}}
    pred = Prediction(keypoints=[instance])
    strict, _ = keypoint_scores(samples, {"1": pred}, "strict")
    released, _ = keypoint_scores(samples, {"1": pred}, "rexomni")
    # strict: COCO sigma 0.107 for a hip and the annotated area 2500; rexomni: 0.025 and the box area
    assert strict == pytest.approx(math.exp(-25 / (2 * 2500 * (2 * 0.107) ** 2)))
    assert released == pytest.approx(math.exp(-25 / (2 * 10000 * (2 * 0.025) ** 2)))
