"""detect_all, detection without categories: the grammar constraint on free phrases (offline and real
Qwen2.5-VL tokenizers), the training builder and mixture option, the API, CLI and pipeline, and its scoring."""

from __future__ import annotations

import json
import os
import random
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from rexomni.data_engines.mixture import Mixture
from rexomni.data_engines.readers import read_dataset
from rexomni.data_engines.synth import generate_scene
from rexomni.data_engines.tasks import TaskNotApplicable, build_example
from rexomni.eval.data import Prediction, assign_keys
from rexomni.eval.detect_all import NameMap, map_phrases, phrase_forms
from rexomni.eval.runner import BenchmarkSpec, run_benchmark, synth_samples
from rexomni.eval.scoring import score

from rexomni.constrained import GrammarConstrainedLogitsProcessor
from rexomni.grammar import answer_regex, parse_output
from rexomni.prompts import build_prompt
from rexomni.result import Result

BENCHMARK = os.path.join(os.path.dirname(__file__), "..", "eval", "benchmarks", "synth_detect_all.yaml")


def _images(n=3, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 255, (rng.randint(30, 120), rng.randint(30, 120), 3), dtype=np.uint8) for _ in range(n)]


# --------------------------------------------------------------------------- the grammar constraint


def _allowed_after(proc, tokenizer, ids: list[int]) -> set[str]:
    """Token texts the processor allows after the answer tokens ``ids`` (a fresh row each call)."""
    proc.rows = None
    seq = torch.zeros(1, 3, dtype=torch.long)
    out = proc(seq, torch.zeros(1, len(tokenizer)))
    for t in ids:
        seq = torch.cat([seq, torch.tensor([[t]])], dim=1)
        out = proc(seq, torch.zeros(1, len(tokenizer)))
    return set(tokenizer.convert_ids_to_tokens(torch.nonzero(out[0] > float("-inf")).flatten().tolist()))


def _check_free_phrase_rules(tok):
    """The rules of a free phrase, for any tokenizer: no marker pieces, not blank, not repeated, no None,
    and a last token that makes the phrase new."""
    ids = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    one = lambda piece: tok.convert_tokens_to_ids(piece)  # noqa: E731
    proc = GrammarConstrainedLogitsProcessor(tok, None, item="box", max_new_tokens=80, max_phrase_tokens=2)
    start = ids("<|object_ref_start|>")
    opened = _allowed_after(proc, tok, start)
    assert "<|object_ref_end|>" not in opened, "a blank phrase cannot close"
    assert not any("<" in t or ">" in t for t in opened), "no piece of a marker or a coordinate"
    assert {"a", "b", "Ġred"} <= opened
    assert "<|object_ref_end|>" not in _allowed_after(proc, tok, start + [one("Ġ")]), "whitespace is blank"
    assert "<|object_ref_end|>" in _allowed_after(proc, tok, start + [one("a")])
    box = _allowed_after(proc, tok, start + [one("a"), one("b")] + ids("<|object_ref_end|><|box_start|>"))
    assert "<5>" in box and "None" not in box, "a free phrase names something seen: no None"
    group = start + [one("a"), one("b")] + ids("<|object_ref_end|><|box_start|><1><2><3><4><|box_end|>, ")
    # The second group's phrase has one token left (max_phrase_tokens=2): it must not spell "ab" again.
    last = _allowed_after(proc, tok, group + start + [one("a")])
    assert "b" not in last and "c" in last and "<|object_ref_end|>" in last
    assert "Ġred" not in last, "the last token is an alphanumeric one, whose text is known in advance"
    longer = GrammarConstrainedLogitsProcessor(tok, None, item="box", max_new_tokens=80, max_phrase_tokens=8)
    again = _allowed_after(longer, tok, group + start + [one("a"), one("b")])
    assert "<|object_ref_end|>" not in again and "c" in again, "a phrase already written cannot close again"


def test_free_phrase_rules_with_the_offline_tokenizer(test_tokenizer):
    _check_free_phrase_rules(test_tokenizer)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A random shrunken Qwen2.5-VL with the REAL tokenizer files, in the released Rex-Omni layout."""
    from real_checkpoints import write_base, write_released

    from rexomni.api import RexOmni

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = write_base(str(tmp_path_factory.mktemp("qwen_base")))
    return RexOmni.from_pretrained(write_released(str(tmp_path_factory.mktemp("released")), weights_from=base),
                                   device="cpu")


def test_free_phrase_rules_with_the_real_tokenizer(released):
    _check_free_phrase_rules(released.tokenizer)


def _assert_clean_detect_all(result, budget: int, max_boxes: int | None = None):
    parsed = parse_output(result.raw_text, result.width, result.height)
    assert result.task == "detect_all" and result.problems == [] and parsed.problems == [], result.raw_text
    assert re.fullmatch(answer_regex(None, "box"), result.raw_text), "what vLLM's regex allows too"
    groups = result.raw_text.count("<|object_ref_start|>")
    assert groups >= 1 and len(parsed.phrases) == groups, "one group per phrase"
    assert all(p.strip() and items for p, items in parsed.phrases.items()) and not result.absent
    assert result.labels == [p for p, _ in parsed.items()]
    assert result.num_generated_tokens <= budget and (max_boxes is None or len(result.labels) <= max_boxes)


def test_random_model_always_writes_a_parseable_detect_all_answer(tiny_rexomni):
    images = _images(4)
    for seed, (budget, max_boxes) in enumerate([(20, None), (70, None), (70, 2)]):
        torch.manual_seed(seed)
        for r in tiny_rexomni.detect(images, max_new_tokens=budget, max_boxes=max_boxes, do_sample=True,
                                     temperature=3.0):
            _assert_clean_detect_all(r, budget, max_boxes)


def test_random_model_with_the_real_tokenizer_writes_parseable_answers(released):
    torch.manual_seed(0)
    for budget in (16, 48):
        for r in released.detect(_images(3, seed=budget), max_new_tokens=budget, do_sample=True, temperature=3.0):
            _assert_clean_detect_all(r, budget)
    _assert_clean_detect_all(released.detect(_images(1)[0], max_new_tokens=40), 40)  # greedy


# --------------------------------------------------------------------------- prompt and training data


def test_prompt_has_no_categories_and_refuses_some():
    assert build_prompt("detect_all") == (
        "Detect all objects in the image. Output the bounding box coordinates in [x0, y0, x1, y1] format.")
    with pytest.raises(ValueError, match="takes no categories"):
        build_prompt("detect_all", ["dog"])
    with pytest.raises(ValueError, match="at least one category"):
        build_prompt("pointing", [])


def _scene(seed=3):
    return generate_scene(seed, 224, "single", num_objects=(3, 4), distractors=True)[1]


def test_builder_groups_every_object_in_order_of_first_box():
    for seed in range(8):
        sample = _scene(seed)
        ex = build_example(sample, "detect_all", 0, paraphrase=False)
        assert ex["prompt"] == build_prompt("detect_all")
        parsed = parse_output(ex["answer"], 224, 224)
        assert parsed.problems == [] and list(parsed.phrases) == ex["phrases"]
        firsts = [min((o["bbox"][0], o["bbox"][1]) for o in sample["objects"] if o["phrase"] == p)
                  for p in ex["phrases"]]
        assert firsts == sorted(firsts)
        assert sorted(p for p, _ in parsed.items()) == sorted(o["phrase"] for o in sample["objects"])
        shuffled = dict(sample, objects=random.Random(seed).sample(sample["objects"], len(sample["objects"])))
        assert build_example(shuffled, "detect_all", 0, paraphrase=False)["answer"] == ex["answer"]


def test_builder_granularity_and_what_it_refuses():
    sample = _scene()
    kinds = build_example(sample, "detect_all", 0, options={"granularity": "kind"})
    assert set(kinds["phrases"]) == {o["attributes"]["kind"] for o in sample["objects"]}
    with pytest.raises(TaskNotApplicable, match="exhaustive"):
        build_example(dict(sample, exhaustive=False), "detect_all", 0)
    with pytest.raises(TaskNotApplicable, match="exhaustive"):
        build_example(dict(sample, not_exhaustive_categories=["circle"]), "detect_all", 0)
    with pytest.raises(ValueError, match="granularity must be one of"):
        build_example(sample, "detect_all", 0, options={"granularity": "hue"})
    with pytest.raises(ValueError, match="takes no option"):
        build_example(sample, "grounding", 0, options={"granularity": "kind"})


def test_coco_reader_marks_images_without_crowds_or_drops_exhaustive(tmp_path):
    for name in ("a", "b", "c"):
        Image.new("RGB", (64, 48)).save(tmp_path / f"{name}.png")
    images = [{"id": i, "file_name": f"{n}.png", "width": 64, "height": 48} for i, n in enumerate("abc", 1)]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [2, 3, 10, 20], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [20, 3, 10, 20], "iscrowd": 1},  # a crowd
            {"id": 4, "image_id": 3, "category_id": 1, "bbox": [2, 3, 10, 20], "iscrowd": 0},
            {"id": 5, "image_id": 3, "category_id": 1, "bbox": [60, 40, 20, 20], "iscrowd": 0}]  # dropped: outside
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cup"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    samples, _ = read_dataset(tmp_path / "coco.json")
    assert [s.get("exhaustive", False) for s in samples] == [True, False, False]
    assert build_example(samples[0], "detect_all", 0)["phrases"] == ["cup"]
    for image in images:  # the same file as LVIS: never exhaustive
        image["neg_category_ids"] = []
    (tmp_path / "lvis.json").write_text(json.dumps(coco))
    lvis, _ = read_dataset(tmp_path / "lvis.json", format="lvis")
    assert not any(s.get("exhaustive") for s in lvis)


def test_mixture_takes_a_weight_and_options_per_task():
    spec = {"seed": 1, "sources": [{"name": "shapes", "synth": {"mode": "single", "size": 64},
                                    "tasks": {"grounding": 1, "detect_all": {"weight": 3, "granularity": "kind"}}}]}
    mixture = Mixture(spec)
    examples = [e for e in mixture.take(40) if e["task"] == "detect_all"]
    assert mixture.sources[0].tasks == {"grounding": 1.0, "detect_all": 3.0} and len(examples) > 20
    assert all(set(e["phrases"]) <= {"circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring"}
               for e in examples)
    spec["sources"][0]["tasks"]["detect_all"]["shade"] = "dark"
    with pytest.raises(ValueError, match="source 'shapes': task 'detect_all' takes no option"):
        Mixture(spec)


# --------------------------------------------------------------------------- API, CLI, pipeline


def test_detect_without_categories_runs_detect_all(tiny_rexomni):
    image = _images(1)[0]
    result = tiny_rexomni.detect(image, max_new_tokens=40)
    assert result.task == "detect_all" and result.labels
    assert set(result.labels) == set(parse_output(result.raw_text, result.width, result.height).phrases)
    assert tiny_rexomni.detect(image, [], max_new_tokens=40).raw_text == result.raw_text
    assert tiny_rexomni.detect(image, ["dog"], max_new_tokens=40).task == "detection"
    with pytest.raises(ValueError, match="takes no categories"):
        tiny_rexomni.predict(image, task="detect_all", categories=["dog"])


def test_cli_detect_without_categories(tiny_checkpoint, tmp_path):
    from rexomni.cli import main

    path = str(tmp_path / "img.png")
    Image.fromarray(_images(1)[0]).save(path)
    out = tmp_path / "out.jsonl"
    assert main(["detect", path, "--model", tiny_checkpoint, "--out", str(out), "--max-new-tokens", "30"]) == 0
    line = json.loads(out.read_text())
    assert line["task"] == "detect_all" and line["problems"] == [] and line["labels"]
    assert set(line["labels"]) == set(parse_output(line["raw_text"], line["width"], line["height"]).phrases)
    with pytest.raises(SystemExit):
        main(["detect", path, "--model", tiny_checkpoint, "--task", "pointing"])


def test_pipeline_without_candidate_labels(tiny_checkpoint, tiny_rexomni):
    import transformers

    import rexomni  # noqa: F401  (registers the rex-omni task)

    detector = transformers.pipeline("rex-omni", model=tiny_checkpoint)
    first, second = _images(2)
    alone = tiny_rexomni.detect(first, max_new_tokens=30)
    out = detector(first, max_new_tokens=30)
    assert out and sorted(d["label"] for d in out) == sorted(alone.labels)
    mixed = detector([first, {"image": second, "candidate_labels": ["cup"]}], max_new_tokens=30)
    assert [d["label"] for d in mixed[0]] == [d["label"] for d in out]
    assert all(d["label"] == "cup" for d in mixed[1])
    with pytest.raises(ValueError, match="needs candidate_labels"):
        detector(first, task="pointing")


# --------------------------------------------------------------------------- scoring


def test_phrases_map_to_ground_truth_names():
    assert phrase_forms("The  Red Circles") == ["red circles", "red circl", "red circle"]
    names = NameMap(["red circle", "box", "berry", "glasses", "glass"])
    assert [names(p) for p in ("red circle", "Red circle", "a red circle", "red circles", "boxes", "berries",
                               "glasses", "glass", "blue circle", "")] == \
        ["red circle", "red circle", "red circle", "red circle", "box", "berry", "glasses", "glass", None, None]


def _sample(key, objects):
    return {"key": key, "objects": [{"phrase": p, "bbox": b} for p, b in objects], "categories": ["ghost"]}


def test_detect_all_scores_class_aware_after_mapping_and_class_agnostic():
    a, b, c = [0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]
    samples = [_sample("1", [("red circle", a), ("blue square", b)]), _sample("2", [("red circle", c)])]
    predictions = {
        "1": Prediction([a, b, [70, 70, 80, 80]], [0.9, 0.8, 0.7], ["Red Circles", "blue thing", "red circle"]),
        "2": Prediction([c], [0.9], ["the red circle"]),
    }
    out, _ = score(samples, predictions, task="detect_all")
    # Written phrases per image: {Red Circles, blue thing, red circle} and {the red circle}; "blue thing" names nothing.
    assert out["detect_all/phrases_not_in_gt"] == pytest.approx(1 / 4)
    # Class-aware, per category (strict): red circle 2 of 3 predictions right, 2 of 2 found; blue square
    # 0 of 0 and 0 of 1; "blue thing" 0 of 1 and no recall. P = (2/3 + 0 + 0) / 3, R = (1 + 0) / 2.
    p, r = (2 / 3) / 3, 1 / 2
    assert out["precision@0.5"] == pytest.approx(p) and out["recall@0.5"] == pytest.approx(r)
    assert out["f1@0.5"] == pytest.approx(2 * p * r / (p + r))
    # Class-agnostic: every box is an object; 3 of 4 predictions right, 3 of 3 found.
    assert out["agnostic/precision@0.5"] == pytest.approx(3 / 4) and out["agnostic/recall@0.5"] == 1.0
    assert "absent/fp_rate" not in out, "detect_all asks no phrase"
    mapped, share = map_phrases(samples, predictions)
    assert mapped["1"].labels == ["red circle", "blue thing", "red circle"] and share == pytest.approx(1 / 4)


class SceneReader:
    """A stand-in model that answers from the scenes' ground truth: detect_all names each shape in
    capitals and plural, plus one made-up phrase; detection answers the asked names."""

    def __init__(self, samples):
        self.truth = {np.asarray(s["image"]).tobytes(): s for s in samples}
        self.calls = []

    def predict(self, images, task="detection", categories=None, **kwargs):
        self.calls.append((task, categories))
        results = []
        for image in images:
            objects = self.truth[np.asarray(image).tobytes()]["objects"]
            if task == "detect_all":
                labels = [o["phrase"].title() + "s" for o in objects] + ["made-up thing"]
                boxes = [o["bbox"] for o in objects] + [[0, 0, 5, 5]]
            else:
                labels = [o["phrase"] for o in objects if o["phrase"] in categories]
                boxes = [o["bbox"] for o in objects if o["phrase"] in categories]
            results.append(Result(task, 224, 224, labels, np.ones(len(labels), np.float32),
                                  np.asarray(boxes, np.float32).reshape(-1, 4)))
        return results


def test_one_benchmark_call_scores_detect_all_next_to_the_same_scenes_with_categories(tmp_path):
    spec = BenchmarkSpec.from_yaml(BENCHMARK)
    assert [(d.name, d.task) for d in spec.datasets] == [("detect-all", "detect_all"), ("with-categories", "detection")]
    assert spec.datasets[0].synth == spec.datasets[1].synth and spec.datasets[0].synth["seed"] != 20261201
    for dataset in spec.datasets:
        dataset.limit = 3
    model = SceneReader(synth_samples(dict(spec.datasets[0].synth, n=3)))
    results = run_benchmark(model, spec, tmp_path, progress=False)
    assert {task for task, _ in model.calls} == {"detect_all", "detection"}
    assert all(categories is None for task, categories in model.calls if task == "detect_all")
    detect_all, asked = results["detect-all"], results["with-categories"]
    assert asked["f1@0.5"] == 1.0 and asked["agnostic/f1@0.5"] == 1.0
    assert detect_all["recall@0.5"] == 1.0 and detect_all["agnostic/recall@0.5"] == 1.0
    assert detect_all["f1@0.5"] < 1.0 and detect_all["agnostic/precision@0.5"] < 1.0  # the made-up boxes
    n_phrases = [len({o["phrase"] for o in s["objects"]}) for s in assign_keys(synth_samples(
        dict(spec.datasets[0].synth, n=3)))]
    assert detect_all["detect_all/phrases_not_in_gt"] == pytest.approx(3 / (sum(n_phrases) + 3))
    assert "detect_all/phrases_not_in_gt" in (tmp_path / "results.md").read_text()
