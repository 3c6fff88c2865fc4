"""The negatives benchmark: what a data set does with a sample's negatives, detection-level OOD and
distractor metrics computed by hand, and eval/benchmarks/negatives.yaml run end to end with its tables."""

from __future__ import annotations

import json
import math
import os

import pytest
from rexomni.eval.ood import detection_ood_metrics, distractor_hits
from rexomni.eval.runner import BenchmarkSpec, DatasetSpec, _request, run_benchmark, without_negatives

from rexomni.api import RexOmni

SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eval", "benchmarks",
                    "negatives.yaml")
SAMPLE = {"key": "a", "width": 100, "height": 100, "categories": ["red circle", "blue circle", "red square"],
          "objects": [{"phrase": "red circle", "bbox": [0, 0, 10, 10]},
                      {"phrase": "blue circle", "bbox": [50, 50, 60, 60]}],
          "negatives": {"phrases": ["blue circle"], "boxes": [[50, 50, 60, 60]]}}


def test_a_data_set_asks_excludes_or_gives_the_negatives():
    spec = DatasetSpec(name="d", synth={"n": 1})
    assert _request(SAMPLE, spec)["categories"] == ["red circle", "blue circle", "red square"]
    spec.negatives = "exclude"
    assert _request(SAMPLE, spec) == {"categories": ["red circle", "red square"]}
    spec.negatives, spec.ood = "give", True
    assert _request(SAMPLE, spec) == {"categories": ["red circle", "red square"], "negatives": ["blue circle"],
                                      "negative_boxes": [[50, 50, 60, 60]], "ood": True}
    scored = without_negatives(SAMPLE)
    assert [o["phrase"] for o in scored["objects"]] == ["red circle"]
    assert [o["phrase"] for o in scored["distractors"]] == ["blue circle"]
    assert scored["categories"] == ["red circle", "red square"] and scored["negatives"] == SAMPLE["negatives"]
    with pytest.raises(ValueError, match="negatives must be one of"):
        DatasetSpec(name="d", synth={"n": 1}, negatives="hide")


def test_detection_ood_and_distractor_metrics_by_hand():
    samples = [dict(without_negatives(SAMPLE), held_out=[{"phrase": "red heart", "bbox": [80, 0, 95, 15]}])]
    records = {"a": {"boxes": [[0, 0, 10, 10], [80, 0, 95, 15], [50, 50, 60, 60], [30, 30, 40, 40]],
                     "labels": ["red circle", "red circle", "red circle", "red square"],
                     "scores": [0.2, 0.9, 0.5, 0.5], "ood_scores": [0.8, 0.3, 0.5, 0.5]}}
    metrics = detection_ood_metrics(samples, records)
    # one box on its own object (ID), one on the heart (OOD); the others take no part
    assert metrics["ood/id_boxes"] == 1 and metrics["ood/ood_boxes"] == 1
    assert metrics["ood/auroc"] == 1.0 and metrics["ood/fpr@95tpr"] == 0.0
    assert metrics["ood/box_score_auroc"] == 0.0 and metrics["ood/box_score_fpr@95tpr"] == 1.0
    # the blue circle (a negative's object) and the heart both got a box
    assert distractor_hits(samples, records) == {"distractors/boxed": 1.0, "distractors/count": 2.0}
    assert distractor_hits(samples, {"a": dict(records["a"], boxes=[[0, 0, 10, 10]])})["distractors/boxed"] == 0.0
    no_ood = detection_ood_metrics(samples, {"a": dict(records["a"], boxes=[[0, 0, 10, 10]], labels=["red circle"])})
    assert math.isnan(no_ood["ood/auroc"]) and no_ood["ood/ood_boxes"] == 0
    with pytest.raises(ValueError, match="ood_scores"):
        detection_ood_metrics(samples, {"a": {k: v for k, v in records["a"].items() if k != "ood_scores"}})


def test_spec_tables_must_name_its_data_sets(tmp_path):
    spec = BenchmarkSpec.from_yaml(SPEC)
    assert [t["title"] for t in spec.tables] == ["Hard distractors", "Out-of-distribution shapes",
                                                 "OOD score against the plain box score"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(SPEC).read().replace("datasets: [ood-auto, ood-auto-scoring]", "datasets: [ood-nowhere]"))
    with pytest.raises(ValueError, match="ood-nowhere"):
        BenchmarkSpec.from_yaml(bad)


def test_the_negatives_benchmark_runs_with_its_tables(tmp_path):
    spec = BenchmarkSpec.from_yaml(SPEC)
    for dataset in spec.datasets:
        dataset.limit = 3
    results = run_benchmark(RexOmni.from_pretrained(device="cpu"), spec, tmp_path, progress=False)
    assert set(results) == {d.name for d in spec.datasets}
    assert results["distractors-positive"]["distractors/count"] > 0
    assert {"ood/auroc", "ood/box_score_auroc", "ood/id_boxes"} <= set(results["ood-auto"])
    for name in ("ood-auto", "ood-auto-scoring"):
        records = [json.loads(line) for line in open(tmp_path / "predictions" / f"{name}.jsonl")]
        assert all(len(r["ood_scores"]) == len(r["boxes"]) for r in records)
    for name in ("distractors-negatives-nnc", "distractors-nnc-only", "ood-auto-nnc"):
        kept = [s for line in open(tmp_path / "predictions" / f"{name}.jsonl") for s in json.loads(line)["scores"]]
        assert all(s >= 0.5 for s in kept), "suppression keeps only boxes at or above its threshold"
    report = (tmp_path / "results.md").read_text()
    for table in spec.tables:
        assert f"## {table['title']}" in report
    assert len(list((tmp_path / "plots").glob("table_*.png"))) == 3
