"""The benchmark runner (batches, cache, resume, skipped images, reports) and `rexomni eval`."""

import glob
import json
import os
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image
from rexomni.data_engines.masks import rle_encode
from rexomni.eval import cli
from rexomni.eval.data import Prediction, assign_keys
from rexomni.eval.runner import (
    BenchmarkSpec,
    DatasetSpec,
    PredictionCache,
    example_boxes,
    predict_dataset,
    run_benchmark,
    score_files,
)
from rexomni.eval.scoring import score

# Where the stand-in model "sees" each category, whatever the image.
SEEN = {"cat": [0, 0, 10, 10], "dog": [20, 20, 30, 30], "bird": [40, 40, 50, 50]}


@dataclass
class Result:
    boxes: np.ndarray
    scores: np.ndarray
    labels: list
    raw_text: str = ""


@dataclass
class StandIn:
    """A deterministic predictor with the detector API's ``predict`` signature."""

    calls: list = field(default_factory=list)
    fail_after: int | None = None
    name: str | None = None

    def predict(self, images, task="detection", categories=(), negatives=None, **kwargs):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls.append((len(images), task, list(categories)))
        boxes = [SEEN[c] for c in categories if c in SEEN]
        labels = [c for c in categories if c in SEEN]
        return [Result(np.asarray(boxes, dtype=float).reshape(-1, 4), np.full(len(boxes), 0.5), labels, "text")
                for _ in images]


@pytest.fixture
def benchmark(tmp_path):
    """Six images: cats seen right, dogs in the wrong place, one corrupt file; a spec over them."""
    samples = []
    for i in range(6):
        name = f"img{i}.png"
        if i == 5:
            (tmp_path / name).write_bytes(b"not a png")
        else:
            Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(tmp_path / name)
        samples.append({"image": name, "width": 64, "height": 64, "categories": ["cat", "dog"],
                        "objects": [{"phrase": "cat", "bbox": SEEN["cat"]},
                                    {"phrase": "dog", "bbox": [2, 40, 12, 50]}]})
    with open(tmp_path / "gt.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    (tmp_path / "spec.yaml").write_text(
        "name: toy\nbatch_size: 2\ndatasets:\n  - name: toy-set\n    annotations: gt.jsonl\n    format: jsonl\n"
        "    task: detection\n    metrics: [f1, coco]\n")
    return tmp_path


def test_spec_reading_and_errors(benchmark):
    spec = BenchmarkSpec.from_yaml(benchmark / "spec.yaml")
    assert spec.batch_size == 2 and spec.protocol == "strict"
    assert spec.datasets[0].annotations == str(benchmark / "gt.jsonl")  # relative to the spec
    (benchmark / "bad.yaml").write_text("datasets:\n  - annotations: gt.jsonl\n    task: dancing\n")
    with pytest.raises(ValueError, match="unknown task 'dancing'"):
        BenchmarkSpec.from_yaml(benchmark / "bad.yaml")
    (benchmark / "bad2.yaml").write_text("datasets:\n  - annotations: gt.jsonl\n    metrics: [f1, bleu]\n")
    with pytest.raises(ValueError, match="unknown metrics"):
        BenchmarkSpec.from_yaml(benchmark / "bad2.yaml")


def test_run_scores_caches_and_reports(benchmark):
    model = StandIn()
    out = benchmark / "out"
    results = run_benchmark(model, benchmark / "spec.yaml", out, progress=False)
    metrics = results["toy-set"]
    # cat always right (P 1, R 1), dog always wrong (P 0, R 0): strict F1 = 2 * .5 * .5 / 1 = 0.5
    assert metrics["f1@0.5"] == pytest.approx(0.5) and metrics["f1@mean"] == pytest.approx(0.5)
    assert metrics["coco/AP"] == pytest.approx(0.5)  # cat AP 1, dog AP 0
    assert metrics["samples"] == 5 and metrics["skipped_images"] == 1
    assert [c[0] for c in model.calls] == [2, 2, 1]  # batches of 2; the corrupt image never reached the model
    assert model.calls[0][1:] == ("detection", ["cat", "dog"])
    cache = (out / "predictions" / "toy-set.jsonl").read_text().splitlines()
    assert len(cache) == 5  # the corrupt image was dropped (and counted) when the annotations were read
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["toy-set"]["f1@0.5"] == pytest.approx(0.5)
    table = (out / "results.md").read_text()
    assert "| toy-set |" in table and "f1@0.5" in table and "50.0" in table
    assert (out / "plots" / "toy-set_pr.png").stat().st_size > 1000
    assert (out / "plots" / "toy-set_f1_vs_iou.png").stat().st_size > 1000
    # a second run finds everything cached and asks the model nothing
    again = StandIn()
    assert run_benchmark(again, benchmark / "spec.yaml", out, progress=False) == results
    assert again.calls == []


def test_the_cache_is_started_over_for_another_model_or_new_weights(benchmark):
    """Cached predictions belong to one model: another model, or new weights in the same folder, predicts again
    (a stale cache would score the old model under the new one's name)."""
    folder = benchmark / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"old weights")
    out = benchmark / "out"
    run_benchmark(StandIn(name=str(folder)), benchmark / "spec.yaml", out, progress=False)
    same = StandIn(name=str(folder))
    run_benchmark(same, benchmark / "spec.yaml", out, progress=False)
    assert same.calls == []
    (folder / "model.safetensors").write_bytes(b"new weights, longer")
    retrained = StandIn(name=str(folder))
    run_benchmark(retrained, benchmark / "spec.yaml", out, progress=False)
    assert len(retrained.calls) == 3
    other = StandIn(name="another-model")
    run_benchmark(other, benchmark / "spec.yaml", out, progress=False)
    assert len(other.calls) == 3
    assert len((out / "predictions" / "toy-set.jsonl").read_text().splitlines()) == 5  # not appended to the old


def test_an_image_unreadable_at_prediction_time_is_skipped_once(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    samples = [{"key": k, "image": str(tmp_path / k), "objects": [], "categories": ["cat"]}
               for k in ("ok.png", "gone.png")]
    cache = PredictionCache(tmp_path / "cache.jsonl")
    model = StandIn()
    predict_dataset(model, samples, DatasetSpec(name="d", annotations="-"), cache, progress=False)
    assert cache.skipped() == {"gone.png"} and set(cache.predictions()) == {"ok.png"}
    assert "gone.png" in cache.lines["gone.png"]["skipped"]  # the reason names the file
    predict_dataset(model, samples, DatasetSpec(name="d", annotations="-"), PredictionCache(cache.path), progress=False)
    assert len(model.calls) == 1  # nothing retried


def test_a_killed_run_resumes(benchmark):
    out = benchmark / "out"
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(StandIn(fail_after=1), benchmark / "spec.yaml", out, progress=False)
    cached = PredictionCache(out / "predictions" / "toy-set.jsonl")
    assert len(cached.lines) == 2  # the first batch was written before the kill
    # a half-written line (the kill hit mid-write) is ignored, and the next write starts a fresh line
    with open(out / "predictions" / "toy-set.jsonl", "a") as f:
        f.write('{"key": "trunc')
    model = StandIn()
    resumed = run_benchmark(model, benchmark / "spec.yaml", out, progress=False)
    assert sum(c[0] for c in model.calls) == 3  # images 2, 3, 4 (image 5 is corrupt, dropped on reading)
    fresh = run_benchmark(StandIn(), benchmark / "spec.yaml", benchmark / "fresh", progress=False)
    assert resumed == fresh


def test_rexomni_protocol_from_the_command(benchmark):
    spec = (benchmark / "spec.yaml").read_text() + "    coco_style: true\n"
    (benchmark / "coco_spec.yaml").write_text(spec)
    strict = run_benchmark(StandIn(), benchmark / "coco_spec.yaml", benchmark / "out", progress=False)
    released = run_benchmark(StandIn(), benchmark / "coco_spec.yaml", benchmark / "out", protocol="rexomni",
                             progress=False)
    # the released protocol drops the dog's zeros: only the cat is averaged
    assert strict["toy-set"]["f1@0.5"] == pytest.approx(0.5)
    assert released["toy-set"]["f1@0.5"] == pytest.approx(1.0)


def _predictions_jsonl(path, samples_dir):
    lines = [{"image": str(samples_dir / f"img{i}.png"), "boxes": [SEEN["cat"], SEEN["dog"]], "scores": [0.9, 0.3],
              "labels": ["cat", "dog"]} for i in range(6)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_score_a_predictions_file_from_the_command_line(benchmark, capsys):
    _predictions_jsonl(benchmark / "pred.jsonl", benchmark)
    out = benchmark / "metrics.json"
    assert cli.main(["--predictions", str(benchmark / "pred.jsonl"), "--annotations", str(benchmark / "gt.jsonl"),
                     "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["f1@0.5"] == pytest.approx(0.5) and metrics["coco/AP50"] == pytest.approx(0.5)
    assert metrics["samples"] == 6 and metrics["samples_without_prediction"] == 0
    assert json.loads(capsys.readouterr().out) == metrics


def test_score_coco_results_against_coco_annotations(tmp_path):
    coco = {"images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 100},
                       {"id": 8, "file_name": "b.jpg", "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 8, "category_id": 2, "bbox": [10, 10, 20, 20], "area": 400,
                             "iscrowd": 0}]}
    results = [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
               {"image_id": 8, "category_id": 2, "bbox": [50, 50, 20, 20], "score": 0.8},
               {"image_id": 8, "category_id": 2, "bbox": [10, 10, 20, 20], "score": 0.4}]
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    (tmp_path / "res.json").write_text(json.dumps(results))
    metrics, _ = score_files(tmp_path / "res.json", tmp_path / "gt.json")
    # cat: AP 1; dog: false positive ranked first -> AP 0.5
    assert metrics["coco/AP"] == pytest.approx(0.75)
    assert metrics["f1@0.5"] == pytest.approx(2 * 0.75 / 1.75)  # P (1 + 1/2)/2, R 1


def test_command_line_errors(benchmark, capsys):
    assert cli.main(["--predictions", str(benchmark / "missing.jsonl"), "--annotations",
                     str(benchmark / "gt.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--predictions", "x"])  # --annotations missing


class Counting:
    """Wraps a model and counts the images it is asked about."""

    def __init__(self, model):
        self.model, self.images, self.name = model, 0, model.name  # the same model, for the cache

    def predict(self, images, **kwargs):
        self.images += len(images)
        return self.model.predict(images, **kwargs)


def test_end_to_end_with_the_tiny_checkpoint(benchmark, tiny_checkpoint, tiny_rexomni, capsys):
    """A random model writes garbage, but the command completes, caches, resumes and reports."""
    spec = (benchmark / "spec.yaml").read_text() + "    limit: 4\n    predict: {max_new_tokens: 24}\n"
    (benchmark / "tiny.yaml").write_text(spec)
    out = benchmark / "tiny_out"
    assert cli.main(["--model", tiny_checkpoint, "--benchmark", str(benchmark / "tiny.yaml"), "--out", str(out),
                     "--quiet"]) == 0
    assert "| toy-set |" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())["results"]["toy-set"]
    assert 0.0 <= results["f1@0.5"] <= 1.0 and results["samples"] == 4
    lines = [json.loads(x) for x in (out / "predictions" / "toy-set.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all("raw_text" in x and len(x["boxes"]) == len(x["labels"]) for x in lines)
    counting = Counting(tiny_rexomni)
    again = run_benchmark(counting, benchmark / "tiny.yaml", out, progress=False)
    assert counting.images == 0 and again["toy-set"] == results
    assert (out / "results.md").exists() and (out / "plots" / "toy-set_f1_vs_iou.png").exists()


def _released_eval_files(tmp_path, dataset_name, gt_key="gt"):
    """Two images in the released evaluation's JSONL (no sizes: read from the images)."""
    records = []
    for i in range(2):
        Image.new("RGB", (40, 40)).save(tmp_path / f"r{i}.png")
        if gt_key == "gt":
            gt = {"cat": [[0, 0, 10, 10]], "dog": [[20, 20, 30, 30]]}
        else:
            mask = np.zeros((40, 40), dtype=bool)
            mask[0:10, 0:10] = True
            gt = {"cat": [rle_encode(mask)]}
        records.append({"image_path": f"r{i}.png", "categories": sorted(gt), gt_key: gt,
                        "dataset_name": dataset_name, "task_name": "box"})
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path / "eval.jsonl"


def test_released_eval_jsonl_through_the_readers(tmp_path):
    annotations = _released_eval_files(tmp_path, "Dense200")
    # image 0: both right but the dog is called "Dog!"; image 1: only the cat, plus a duplicate
    lines = [{"image": str(tmp_path / "r0.png"), "boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "scores": [1, 1],
              "labels": ["cat", "Dog!"]},
             {"image": str(tmp_path / "r1.png"), "boxes": [[0, 0, 10, 10], [0, 0, 10, 10]], "scores": [1, 1],
              "labels": ["cat", "cat"]}]
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    strict, _ = score_files(tmp_path / "pred.jsonl", annotations, metrics=["f1"])
    released, _ = score_files(tmp_path / "pred.jsonl", annotations, metrics=["f1"], protocol="rexomni")
    # strict, per category: cat 2 TP / 3 predictions, R 1; dog 0 / 2 ground truths; "dog!" its own category
    assert strict["f1@0.5"] == pytest.approx(2 * (2 / 9) * 0.5 / (2 / 9 + 0.5))
    # rexomni, per sample: image 0 P 1 R 1 ("Dog!" -> "dog"); image 1 P 1/2 R 1/2
    assert released["precision@0.5"] == pytest.approx(0.75) and released["recall@0.5"] == pytest.approx(0.75)


def test_released_pointing_masks_through_the_readers(tmp_path):
    annotations = _released_eval_files(tmp_path, "COCO", gt_key="gt_mask")
    lines = [{"image": str(tmp_path / "r0.png"), "points": [[5, 5]], "scores": [1], "labels": ["cat"]},
             {"image": str(tmp_path / "r1.png"), "points": [[15, 15]], "scores": [1], "labels": ["cat"]}]
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    metrics, _ = score_files(tmp_path / "pred.jsonl", annotations, task="pointing")
    assert metrics["point/f1"] == pytest.approx(0.5)  # one point in its mask, one outside


def test_visual_prompting_prompts_and_scoring():
    sample = {"image": "a", "width": 50, "height": 50, "objects": [
        {"phrase": "cell", "bbox": [0, 0, 5, 5]}, {"phrase": "cell", "bbox": [10, 0, 15, 5]},
        {"phrase": "cell", "bbox": [20, 0, 25, 5]}, {"phrase": "cell", "bbox": [30, 0, 35, 5]}]}
    # without a prompt of its own, a sample prompts with up to three of its boxes per phrase
    assert example_boxes(sample) == {"cell": [[0, 0, 5, 5], [10, 0, 15, 5], [20, 0, 25, 5]]}
    samples = assign_keys([sample])
    # the model names its answer after the prompt group ("object_1"): scored class-agnostically
    pred = Prediction([o["bbox"] for o in sample["objects"]], [1] * 4, ["object_1"] * 4)
    metrics, _ = score(samples, {"a": pred}, task="visual_prompting")
    assert metrics["f1@0.5"] == 1.0 and metrics["vp/count_mae"] == 0.0


def test_lvis_annotations_give_lvis_metrics(tmp_path):
    lvis = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100, "neg_category_ids": [2],
                        "not_exhaustive_category_ids": []},
                       {"id": 2, "file_name": "b.jpg", "width": 100, "height": 100, "neg_category_ids": [],
                        "not_exhaustive_category_ids": []}],
            "categories": [{"id": 1, "name": "aerosol_can", "frequency": "r"},
                           {"id": 2, "name": "dog", "frequency": "f"}, {"id": 3, "name": "cat", "frequency": "c"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
                            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 20, 20], "area": 400},
                            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [50, 50, 20, 20], "area": 400}]}
    (tmp_path / "lvis.json").write_text(json.dumps(lvis))
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
               {"image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10], "score": 0.9},  # dog verified absent: FP
               {"image_id": 1, "category_id": 3, "bbox": [50, 50, 10, 10], "score": 0.95},  # cat unverified: ignored
               {"image_id": 2, "category_id": 2, "bbox": [0, 0, 20, 20], "score": 0.5},
               {"image_id": 2, "category_id": 3, "bbox": [50, 50, 20, 20], "score": 0.5}]
    (tmp_path / "res.json").write_text(json.dumps(results))
    metrics, _ = score_files(tmp_path / "res.json", tmp_path / "lvis.json", metrics=["coco"])
    assert metrics["lvis/APr"] == pytest.approx(1.0)  # "aerosol can", matched across the underscore
    assert metrics["lvis/APf"] == pytest.approx(0.5)  # the dog's false positive ranks first
    assert metrics["lvis/APc"] == pytest.approx(1.0)  # the cat on an unverified image is not held against it


def test_referring_asks_each_phrase_in_a_request_of_its_own(benchmark):
    """ask: each splits a sample into one request per present phrase, scored alone: the stand-in finds
    cats where they are and dogs elsewhere, so half the phrases are found."""
    from rexomni.eval.data import load_annotations
    from rexomni.eval.runner import evaluate_samples

    samples, _ = load_annotations(str(benchmark / "gt.jsonl"), "jsonl", str(benchmark), check_images=True)
    samples = assign_keys(samples[:2])
    model = StandIn()
    spec = DatasetSpec(name="ref", task="referring", ask="each", metrics=["referring"])
    metrics, _ = evaluate_samples(model, samples, spec, batch_size=4, progress=False)
    # two images asking the same phrase share a call
    assert sorted((call[2], call[0]) for call in model.calls) == [(["cat"], 2), (["dog"], 2)]
    assert metrics["samples"] == 4
    assert metrics["ref/acc@0.5"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="ask must be one of"):
        DatasetSpec(name="bad", annotations="x", ask="every")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "eval", "benchmarks", "*.yaml"))), ids=os.path.basename)
def test_every_shipped_benchmark_spec_reads_and_its_predict_options_exist(path):
    """A spec's `predict:` options reach RexOmni.predict as keywords; a misspelt one would fail only at the
    end of a long run."""
    import inspect

    from rexomni.api import RexOmni

    spec = BenchmarkSpec.from_yaml(path)
    known = set(inspect.signature(RexOmni.predict).parameters)
    for dataset in spec.datasets:
        assert set(dataset.predict or {}) <= known, (dataset.name, dataset.predict)
