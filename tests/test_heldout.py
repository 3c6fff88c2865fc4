"""Training-time held-out scores and `rexomni eval` go through one inference and scoring path: on the same
checkpoint and the same scenes they give the same numbers. Also the per-example scorer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from rexomni.data_engines.mixture import Mixture
from rexomni.eval.data import Prediction
from rexomni.eval.example import score_answer, score_prediction
from rexomni.sft.heldout import HELDOUT_TASKS, evaluate_heldout, heldout_sets

MIXTURE = {"seed": 3, "codec": "center", "paraphrase": False,
           "sources": [{"name": "shapes", "synth": {"mode": "single", "size": 112, "num_objects": [1, 3]},
                        "tasks": {"grounding": 1, "referring": 1, "pointing": 1}}]}


def test_heldout_sets_cover_each_scored_task_and_never_change():
    sets = heldout_sets(Mixture(MIXTURE), 4)
    assert set(sets) == set(HELDOUT_TASKS)
    again = heldout_sets(Mixture(MIXTURE), 4)
    for task, samples in sets.items():
        assert [s["objects"] for s in samples] == [s["objects"] for s in again[task]]
        assert len({s["key"] for s in samples}) == 4


def test_heldout_scores_equal_rexomni_eval_on_the_saved_checkpoint(tiny_rexomni, tiny_checkpoint, tmp_path):
    from rexomni.eval.cli import main as eval_main

    sets = heldout_sets(Mixture(MIXTURE), 6)
    live = evaluate_heldout(tiny_rexomni.model, tiny_rexomni.processor, tiny_rexomni.settings, sets,
                            batch_size=4, max_new_tokens=24)
    # The same scenes on disk, scored by the command line on the saved checkpoint.
    datasets = []
    for task, samples in sets.items():
        folder = tmp_path / task
        os.makedirs(folder / "images")
        with open(folder / "samples.jsonl", "w") as f:
            for i, sample in enumerate(samples):
                sample = dict(sample)
                sample.pop("key")
                sample["image"].save(folder / "images" / f"{i}.png")
                sample["image"] = f"images/{i}.png"
                f.write(json.dumps(sample) + "\n")
        benchmark_task, ask = HELDOUT_TASKS[task]
        metrics = ["pointing"] if task == "pointing" else ["f1"] + (["referring"] if task == "referring" else [])
        datasets.append({"name": task, "annotations": f"{task}/samples.jsonl", "format": "jsonl",
                         "task": benchmark_task, "ask": ask, "metrics": metrics,
                         "predict": {"max_new_tokens": 24}})
    spec = tmp_path / "heldout.yaml"
    spec.write_text(yaml.safe_dump({"name": "heldout", "batch_size": 4, "datasets": datasets}))
    assert eval_main(["--model", tiny_checkpoint, "--benchmark", str(spec), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "results.json") as f:
        saved = json.load(f)
    saved = saved.get("results", saved)
    compared = 0
    for key, value in live.items():
        task, metric = key.split("/", 1)
        assert saved[task][metric] == pytest.approx(value, abs=1e-9), key
        compared += 1
    assert compared >= 9 and any(k.endswith("parsed_clean") for k in live)


def test_per_example_scorer_punishes_duplicates_and_wrong_phrases():
    objects = [{"phrase": "dog", "bbox": [10, 10, 50, 50]}, {"phrase": "cat", "bbox": [60, 60, 90, 90]}]
    exact = Prediction(boxes=[[10, 10, 50, 50], [60, 60, 90, 90]], labels=["dog", "cat"])
    assert score_prediction(exact, objects).f1 == 1.0 and score_prediction(exact, objects).mean_iou == 1.0
    duplicate = Prediction(boxes=[[10, 10, 50, 50], [10, 10, 50, 50], [60, 60, 90, 90]], labels=["dog", "dog", "cat"])
    assert score_prediction(duplicate, objects).precision == pytest.approx(2 / 3)
    swapped = Prediction(boxes=[[10, 10, 50, 50], [60, 60, 90, 90]], labels=["cat", "dog"])
    assert score_prediction(swapped, objects).tp == 0 and score_prediction(swapped, objects).mean_iou == 0.0
    loose = score_prediction(Prediction(boxes=[[10, 10, 30, 50]], labels=["dog"]), objects)
    assert loose.tp == 1 and loose.mean_iou == pytest.approx(0.25)  # (0.5 + 0 for the missed cat) / 2


def test_score_answer_reads_model_text_as_far_as_it_goes():
    objects = [{"phrase": "dog", "bbox": [0, 0, 50, 50]}]
    text = "<|object_ref_start|>dog<|object_ref_end|><|box_start|><0><0><500><500>,<10><10"
    score = score_answer(text, objects, 100, 100)
    assert score.tp == 1 and score.num_pred == 1 and score.problems
    inter = 49.95 ** 2  # the center codec decodes <0> to 0.05 and <500> to 50.05 px
    assert np.isclose(score.pairs[0][3], inter / (2 * 50 ** 2 - inter))


def test_a_benchmark_of_synthetic_scenes_drawn_in_memory(tiny_rexomni, tmp_path):
    from rexomni.eval.runner import BenchmarkSpec, run_benchmark

    spec = tmp_path / "synth.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "datasets": [{
        "name": "det", "task": "detection", "ask": "categories", "metrics": ["f1"],
        "synth": {"mode": "single", "size": 112, "num_objects": [1, 2], "distractors": True, "n": 3, "seed": 5}}]}))
    results = run_benchmark(tiny_rexomni, BenchmarkSpec.from_yaml(spec), tmp_path / "out", progress=False)
    assert results["det"]["samples"] == 3 and 0 <= results["det"]["absent/fp_rate"] <= 1
    again = run_benchmark(tiny_rexomni, BenchmarkSpec.from_yaml(spec), tmp_path / "out", progress=False)
    assert again == results, "the same scenes every run (the second run reads the cache)"


def test_absent_phrases_with_boxes_are_counted():
    from rexomni.eval.example import absent_answers

    sample = {"objects": [{"phrase": "red star", "bbox": [0, 0, 5, 5]}],
              "categories": ["red star", "blue star", "red ring"]}
    pred = Prediction(boxes=[[0, 0, 5, 5], [1, 1, 4, 4]], labels=["red star", "blue star"])
    assert absent_answers(pred, sample) == (2, 1)
