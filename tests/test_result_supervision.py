"""`Result.to_supervision()`: the ecosystem's detection type (supervision.Detections)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from rexomni.result import Result


def _result(task="detection"):
    return Result(task=task, width=100, height=80, labels=["dog", "cat", "dog"],
                  scores=np.array([0.9, 0.4, 0.7], np.float32),
                  boxes=np.array([[1, 2, 30, 40], [50, 10, 90, 70], [20, 20, 60, 60]], np.float32))


def test_detections_hold_boxes_scores_and_names():
    sv = pytest.importorskip("supervision", reason="the supervision extra is not installed")
    detections = _result().to_supervision()
    assert isinstance(detections, sv.Detections)
    assert detections.xyxy.dtype == np.float32
    np.testing.assert_array_equal(detections.xyxy, _result().boxes)
    np.testing.assert_allclose(detections.confidence, [0.9, 0.4, 0.7])
    assert detections.class_id.tolist() == [0, 1, 0]  # order of first appearance
    assert detections.data["class_name"].tolist() == ["dog", "cat", "dog"]
    # The arrays line up, so supervision's own indexing keeps them together.
    confident = detections[detections.confidence > 0.5]
    assert confident.data["class_name"].tolist() == ["dog", "dog"]
    np.testing.assert_array_equal(confident.xyxy, _result().boxes[[0, 2]])


def test_class_names_fix_the_ids_and_drop_other_labels():
    pytest.importorskip("supervision", reason="the supervision extra is not installed")
    assert _result().to_supervision(["cat", "dog"]).class_id.tolist() == [1, 0, 1]
    only_cats = _result().to_supervision(["bird", "cat"])
    assert only_cats.class_id.tolist() == [1]
    assert only_cats.data["class_name"].tolist() == ["cat"]
    np.testing.assert_array_equal(only_cats.xyxy, [[50, 10, 90, 70]])


def test_empty_and_point_results():
    pytest.importorskip("supervision", reason="the supervision extra is not installed")
    empty = Result(task="detection", width=10, height=10).to_supervision()
    assert len(empty) == 0 and empty.xyxy.shape == (0, 4)
    points = Result(task="pointing", width=10, height=10, labels=["dog"], scores=np.array([0.5], np.float32),
                    points=np.array([[3, 4]], np.float32))
    with pytest.raises(ValueError, match="points"):
        points.to_supervision()


def test_a_model_answer_converts_and_annotates(tiny_rexomni):
    sv = pytest.importorskip("supervision", reason="the supervision extra is not installed")
    image = np.full((48, 64, 3), 127, np.uint8)
    result = tiny_rexomni.detect(image, ["dog", "cat"], max_new_tokens=40)
    detections = result.to_supervision(["dog", "cat"])
    assert len(result) > 0 and len(detections) == len(result)
    assert detections.data["class_name"].tolist() == result.labels
    np.testing.assert_allclose(detections.xyxy, result.boxes)
    drawn = sv.BoxAnnotator().annotate(image.copy(), detections)
    assert drawn.shape == image.shape


def test_missing_supervision_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # makes `import supervision` fail
    with pytest.raises(ImportError, match=r"rexomni\[supervision\]"):
        _result().to_supervision()
