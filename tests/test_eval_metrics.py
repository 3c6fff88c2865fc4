"""Hand-computed cases for pointing, keypoints (OKS), visual prompting, referring, language and OOD."""

import math

import numpy as np
import pytest
from rexomni.data_engines.masks import rle_encode
from rexomni.eval.data import Prediction, assign_keys
from rexomni.eval.keypoints import keypoint_scores, oks
from rexomni.eval.language import description_confidences, is_absence_description, language_metrics
from rexomni.eval.ood import auroc, fpr_at_tpr, ood_metrics
from rexomni.eval.pointing import pointing_f1, points_in_object
from rexomni.eval.referring import referring_accuracy
from rexomni.eval.visual_prompt import duplicates, visual_prompt_metrics


def _mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return rle_encode(m)


# ----------------------------------------------------------------------------- pointing


def test_point_in_mask_polygon_and_box():
    obj = {"phrase": "cat", "mask": _mask(20, 20, 5, 5, 10, 10), "bbox": [0, 0, 20, 20]}
    # the mask wins over the box: (2, 2) is inside the box but outside the mask
    inside = points_in_object([[7.5, 7.5], [2, 2], [9.99, 9.99], [10.0, 10.0]], obj)
    assert inside.tolist() == [True, False, True, False]
    triangle = {"phrase": "t", "polygon": [[0, 0], [10, 0], [0, 10]]}
    assert points_in_object([[2, 2], [8, 8]], triangle).tolist() == [True, False]
    assert points_in_object([[3, 3], [11, 3]], {"phrase": "b", "bbox": [0, 0, 10, 10]}).tolist() == [True, False]
    with pytest.raises(ValueError, match="no mask, polygon or bbox"):
        points_in_object([[0, 0]], {"phrase": "x"})


def test_pointing_f1_is_one_to_one():
    samples = assign_keys([{"image": "a", "width": 40, "height": 40, "objects": [
        {"phrase": "cat", "mask": _mask(40, 40, 0, 0, 10, 10)},
        {"phrase": "dog", "bbox": [20, 20, 30, 30]}]}])
    # two points on the one cat: one hit, one false positive; the dog found
    pred = Prediction(points=[[5, 5], [6, 6], [25, 25]], labels=["cat", "cat", "dog"])
    p, r, f = pointing_f1(samples, {"a": pred}).at(0.5)
    assert p == pytest.approx((0.5 + 1) / 2) and r == pytest.approx(1.0) and f == pytest.approx(2 * 0.75 / 1.75)
    # a point inside the right region under the wrong name is a miss
    wrong = Prediction(points=[[25, 25]], labels=["cat"])
    assert pointing_f1(samples, {"a": wrong}).at(0.5)[2] == 0.0


# ----------------------------------------------------------------------------- keypoints


def test_oks_hand_computed():
    gt = {"nose": [10.0, 10.0], "left eye": [20.0, 10.0], "right eye": None}
    assert oks({"nose": [10, 10], "left eye": [20, 10]}, gt, area=100, sigma=0.025) == pytest.approx(1.0)
    # one joint exact, one missing: the missing one scores 0; invisible ground truth joints do not count
    assert oks({"nose": [10, 10]}, gt, area=100, sigma=0.025) == pytest.approx(0.5)
    d2, area, s = 4.0, 100.0, 0.025
    expected = (1 + math.exp(-d2 / (2 * area * (2 * s) ** 2))) / 2
    assert oks({"nose": [10, 10], "left eye": [22, 10]}, gt, area=area, sigma=s) == pytest.approx(expected)
    assert oks({"nose": [0, 0]}, {"nose": [0, 0, 0]}, area=1) == 0.0  # v = 0: no visible joint


def test_keypoint_scores_match_instances():
    gt_a = {"nose": [10.0, 10.0], "left eye": [20.0, 10.0]}
    gt_b = {"nose": [60.0, 60.0], "left eye": [70.0, 60.0]}
    samples = assign_keys([{"image": "a", "width": 100, "height": 100, "objects": [
        {"phrase": "person", "bbox": [0, 0, 30, 30], "keypoints": gt_a},
        {"phrase": "person", "bbox": [50, 50, 80, 80], "keypoints": gt_b}]}])
    pred = Prediction(keypoints=[
        {"label": "person", "bbox": [50, 50, 80, 80], "keypoints": {"nose": [60.0, 60.0]}},  # half of b
        {"label": "person", "bbox": [0, 0, 30, 30], "keypoints": dict(gt_a)}])  # all of a
    mean_oks, f1 = keypoint_scores(samples, {"a": pred}, "rexomni")
    assert mean_oks == pytest.approx(0.75)
    assert f1.at(0.5)[2] == pytest.approx(1.0)  # both pairs reach OKS 0.5
    assert f1.at(0.75)[:2] == pytest.approx((0.5, 0.5))  # only the exact one reaches 0.75


# ----------------------------------------------------------------------------- visual prompting


def test_duplicates_and_count_error():
    boxes = [[0, 0, 10, 10], [0, 0, 10, 10.5], [0, 0, 10, 10.2], [50, 50, 60, 60]]
    assert duplicates(boxes) == (3, 2)  # three pairs above 0.9, two boxes repeat an earlier one
    samples = assign_keys([
        {"image": "a", "width": 100, "height": 100, "objects": [{"phrase": "o", "bbox": [0, 0, 10, 10]}] * 3},
        {"image": "b", "width": 100, "height": 100, "objects": [{"phrase": "o", "bbox": [0, 0, 10, 10]}] * 2}])
    preds = {"a": Prediction(boxes, [1] * 4, ["o"] * 4)}
    metrics = visual_prompt_metrics(samples, preds)
    assert metrics["vp/count_mae"] == pytest.approx((1 + 2) / 2)
    assert metrics["vp/duplicate_ratio"] == pytest.approx(2 / 4)
    assert metrics["vp/duplicate_pairs"] == 3


# ----------------------------------------------------------------------------- referring


def test_referring_accuracy_uses_the_top_prediction():
    box = [0, 0, 10, 10]
    samples = assign_keys([{"image": i, "width": 50, "height": 50, "objects": [{"phrase": "the cat", "bbox": box}]}
                           for i in "abc"])
    preds = {"a": Prediction([[40, 40, 50, 50], box], [0.2, 0.9], ["the cat"] * 2),  # top one right
             "b": Prediction([[40, 40, 50, 50], box], [0.9, 0.2], ["the cat"] * 2)}  # top one wrong
    assert referring_accuracy(samples, preds) == pytest.approx(1 / 3)


def test_referring_accuracy_per_expression():
    # one image asked two expressions (as the RefCOCO reader groups them): each is its own question
    samples = assign_keys([{"image": "a", "width": 50, "height": 50, "objects": [
        {"phrase": "left cat", "bbox": [0, 0, 10, 10]}, {"phrase": "right cat", "bbox": [30, 0, 40, 10]}]}])
    preds = {"a": Prediction([[30, 0, 40, 10], [30, 0, 40, 10]], [0.9, 0.9], ["left cat", "right cat"])}
    assert referring_accuracy(samples, preds) == pytest.approx(1 / 2)


# ----------------------------------------------------------------------------- language


def _language_samples():
    A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]
    samples = assign_keys([
        {"image": "1", "width": 60, "height": 60, "objects": [{"phrase": "red car", "bbox": A}],
         "negatives": {"phrases": ["blue car"]}},
        {"image": "2", "width": 60, "height": 60, "objects": [{"phrase": "blue car", "bbox": B}],
         "negatives": {"phrases": ["red car"]}},
        {"image": "3", "width": 60, "height": 60, "objects": [{"phrase": "a car without wheels", "bbox": C}]},
    ])
    preds = {"1": Prediction([A, A], [0.9, 0.8], ["red car", "blue car"]),
             "2": Prediction([B, B], [0.7, 0.95], ["blue car", "red car"]),
             "3": Prediction([C, C], [0.9, 0.99], ["a car without wheels", "red car"])}  # "red car": not asked
    return samples, preds


def test_language_ap_with_negative_descriptions():
    samples, preds = _language_samples()
    m = language_metrics(samples, preds, category_names=["red car", "blue car"])
    # red car: the confident answer on image 2 (asked, absent) ranks above the hit -> AP 0.5; same for
    # blue car; the absence description is found -> 1. Image 3's "red car" was never asked: dropped.
    assert m["language/AP"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert m["language/AP_pos"] == pytest.approx(1.0)
    assert m["language/AP_categ"] == pytest.approx(0.5) and m["language/AP_descr"] == pytest.approx(1.0)
    assert m["language/AP_omnilabel"] == pytest.approx(2 * 0.5 / 1.5)
    assert m["d3/full"] == m["language/AP"]
    assert m["d3/presence"] == pytest.approx(0.5) and m["d3/absence"] == pytest.approx(1.0)
    # present: 0.9 (red on 1), 0.7 (blue on 2), 0.9 (3); absent: 0.8 (blue on 1), 0.95 (red on 2)
    assert description_confidences(samples, preds) == ([0.9, 0.7, 0.9], [0.8, 0.95])
    assert m["ood/auroc"] == pytest.approx(2 / 6)
    assert m["ood/fpr@95tpr"] == pytest.approx(1.0)


def test_absent_descriptions_from_the_label_space():
    # OmniLabel/D3 readers list an image's whole label space in `categories`; those without an
    # object there refer to nothing
    A = [0, 0, 10, 10]
    samples = assign_keys([{"image": "1", "width": 20, "height": 20, "categories": ["red car", "blue car"],
                            "objects": [{"phrase": "red car", "bbox": A}]},
                           {"image": "2", "width": 20, "height": 20, "categories": ["blue car"],
                            "objects": [{"phrase": "blue car", "bbox": A}]}])
    preds = {"1": Prediction([A, A], [0.9, 0.95], ["red car", "blue car"]),
             "2": Prediction([A], [0.5], ["blue car"])}
    m = language_metrics(samples, preds)
    assert m["language/AP"] == pytest.approx((1 + 0.5) / 2)  # blue car: the absent one ranks first
    assert m["language/AP_pos"] == pytest.approx(1.0)
    assert description_confidences(samples, preds) == ([0.9, 0.5], [0.95])


def test_absence_heuristic():
    assert is_absence_description("a dog without a leash")
    assert is_absence_description("person not wearing a hat")
    assert is_absence_description("a cup that isn't full")
    assert not is_absence_description("a dog on a leash")
    assert not is_absence_description("snow boots")  # "no" only as a word


# ----------------------------------------------------------------------------- OOD


def test_ood_hand_computed():
    assert auroc([0.9, 0.8, 0.7], [0.1, 0.75]) == pytest.approx(5 / 6)
    assert auroc([0.5], [0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert auroc([1, 1], [0, 0]) == 1.0
    assert fpr_at_tpr([0.9, 0.8, 0.7], [0.1, 0.75]) == pytest.approx(0.5)
    # 20 in-distribution scores: 95% TPR lets the lowest one go, so the threshold is the second lowest
    ids = np.arange(1, 21) / 20
    assert fpr_at_tpr(ids, [0.06, 0.09, 0.5]) == pytest.approx(1 / 3)  # threshold 0.10: only 0.5 passes
    assert set(ood_metrics([1.0], [0.0])) == {"ood/fpr@95tpr", "ood/auroc"}
    with pytest.raises(ValueError, match="empty"):
        auroc([], [0.1])
