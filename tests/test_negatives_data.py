"""Training data for negative prompts: hard-distractor negatives and held-out shapes from the synthetic
engine, the mixture's drop rate, LLM foils and negative images (both packings), and GRPO rows that hand
the negatives to the negative-compliance reward."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image
from rexomni.data_engines.mixture import Mixture
from rexomni.data_engines.negatives_image import negative_scene, packed_negative
from rexomni.data_engines.readers import write_samples
from rexomni.data_engines.synth import background_of, generate_scene
from rexomni.data_engines.tasks import build_example
from rexomni.grpo.data import PromptRows
from rexomni.grpo.rewards import negative_penalty
from test_data_negatives_text import chat_server  # noqa: F401 (a fixture: a chat-completions server on 127.0.0.1)

from rexomni.grammar import format_answer, parse_output
from rexomni.tokens import NEG_REF_START

SCENES = {"mode": "single", "size": 160, "num_objects": [2, 4], "distractors": True, "negative_prob": 1.0,
          "masks": False}


def spec(drop: float | None = None, **source) -> dict:
    out = {"seed": 0, "paraphrase": False, "sources": [{"name": "s", "synth": dict(SCENES), "tasks": {"grounding": 1},
                                                        **source}]}
    if drop is not None:
        out["negative_drop_prob"] = drop
    return out


def lookalike(a: dict, b: dict) -> bool:
    """Two objects of different phrases that differ in kind alone or in colour alone."""
    return a["phrase"] != b["phrase"] and sum(a["attributes"][k] != b["attributes"][k] for k in ("kind", "color")) == 1


def test_negatives_are_hard_distractors_and_answers_list_only_true_positives():
    checked = 0
    for seed in range(40):
        _, sample = generate_scene(seed, **SCENES)
        if "negatives" not in sample:
            continue
        (negative,) = sample["negatives"]["phrases"]
        theirs = [o for o in sample["objects"] if o["phrase"] == negative]
        others = [o for o in sample["objects"] if o["phrase"] != negative]
        assert theirs and others, "a present phrase, with another left to find"
        if any(lookalike(a, b) for a in sample["objects"] for b in sample["objects"]):
            assert any(lookalike(a, b) for a in theirs for b in others), "a look-alike is chosen when there is one"
        if sample["negatives"].get("boxes"):
            assert sorted(sample["negatives"]["boxes"]) == sorted(o["bbox"] for o in theirs)
        example = build_example(sample, "grounding", seed)
        parsed = parse_output(example["answer"], sample["width"], sample["height"])
        assert negative not in parsed.phrases and negative not in example["phrases"]
        assert f"{NEG_REF_START}{negative}" in example["prompt"]
        truth = sorted(o["bbox"] for o in others if o["phrase"] in example["phrases"])
        assert sorted(t["bbox"] for t in example["targets"]) == truth
        checked += 1
    assert checked > 25


def test_held_out_shapes_are_drawn_unlabelled_and_serve_as_negatives():
    options = dict(SCENES, held_out=[1, 2], held_out_kinds=["arrow"], backgrounds=["plain"])
    as_negative = drawn = 0
    for seed in range(30):
        image, sample = generate_scene(seed, **options)
        held = sample.get("held_out", [])  # none when the scene had no room left
        drawn += bool(held)
        assert all(h["attributes"]["kind"] == "arrow" for h in held)
        phrases = {h["phrase"] for h in held}
        assert not phrases & {o["phrase"] for o in sample["objects"]} and not phrases & set(sample["categories"])
        background = np.asarray(background_of(seed, 160, "single", ["plain"]))
        for h in held:
            x0, y0, x1, y1 = (int(v) for v in h["bbox"])
            assert (np.asarray(image)[y0:y1, x0:x1] != background[y0:y1, x0:x1]).any(), "drawn in the image"
        negatives = sample.get("negatives", {})
        if negatives.get("phrases", [None])[0] in phrases:
            as_negative += 1
            boxes = negatives.get("boxes")
            assert boxes is None or boxes == [h["bbox"] for h in held if h["phrase"] == negatives["phrases"][0]]
    assert drawn >= 20 and as_negative >= 5
    with pytest.raises(ValueError, match="kinds"):
        generate_scene(0, held_out=1, held_out_kinds=["blob"])


def test_the_mixture_drops_negatives_at_its_rate_and_examples_carry_the_prompts_negatives():
    def share_with_negatives(mixture, n=160):
        examples = mixture.take(n)
        for e in examples:
            phrases = e["negatives"].get("phrases", [])
            assert (NEG_REF_START in e["prompt"]) == bool(phrases)
            assert all(f"{NEG_REF_START}{p}" in e["prompt"] for p in phrases)
        return np.mean([bool(e["negatives"]) for e in examples])

    kept = share_with_negatives(Mixture(spec(drop=0.0)))
    assert kept > 0.8
    assert 0.3 * kept < share_with_negatives(Mixture(spec())) < 0.7 * kept  # the default: 0.5
    assert share_with_negatives(Mixture(spec(drop=0.0, negative_drop_prob=1.0))) == 0.0  # a source's own rate
    with pytest.raises(ValueError, match="negative_drop_prob"):
        Mixture(spec(drop=1.5))


def test_negative_images_in_both_packings():
    options = {"mode": "single", "num_objects": (2, 3), "masks": False}
    image, sample = generate_scene(11, 160, **options)
    separate, separate_sample = packed_negative(11, "separate", 160, rng=3, **options)
    negative, negative_sample, edit = negative_scene(11, 160, rng=3, **options)
    assert np.array_equal(np.asarray(separate), np.asarray(negative)) and "negatives" not in separate_sample
    both, both_sample = packed_negative(11, "concat", 160, rng=3, **options)
    assert both.size == (320, 160) and both_sample["width"] == 320
    assert np.array_equal(np.asarray(both)[:, :160], np.asarray(image))
    assert np.array_equal(np.asarray(both)[:, 160:], np.asarray(negative))
    assert len(both_sample["objects"]) == len(sample["objects"]) + len(negative_sample["objects"])
    right = [o for o in both_sample["objects"] if o["bbox"][0] >= 160]
    assert len(right) == len(negative_sample["objects"]) and not any("mask" in o for o in both_sample["objects"])
    changed = [o for o in right if o["attributes"] == edit["negative_attributes"]]
    assert changed and all(o["phrase"] == edit["negative"] for o in changed)
    # Asked the original phrase, the side-by-side answer finds it on the left, not in the changed box.
    example = build_example(dict(both_sample, categories=[edit["original"]]), "grounding", random.Random(0))
    boxes = [t["bbox"] for t in example["targets"] if t["phrase"] == edit["original"]]
    assert any(b[2] <= 160 for b in boxes) and [edit["box"][0] + 160, *edit["box"][1:3]] not in [b[:3] for b in boxes]
    widths = {e["width"] for e in Mixture(spec(negative_images={"prob": 1.0})).take(20)}
    assert widths == {160, 320}
    with pytest.raises(ValueError, match="packing"):
        Mixture(spec(negative_images={"packing": "stacked"}))
    with pytest.raises(ValueError, match="shapes or single"):
        Mixture({"sources": [{"name": "w", "synth": {"mode": "ocr"}, "tasks": {"ocr_box": 1},
                              "negative_images": {"prob": 0.5}}]})


def test_llm_foils_from_a_chat_endpoint_become_negative_phrases(chat_server, tmp_path):  # noqa: F811
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    write_samples([{"image": "a.png", "width": 40, "height": 30,
                    "objects": [{"phrase": "a dog with a leash", "bbox": [1, 1, 20, 20]}]}], tmp_path / "s.jsonl")
    mixture = Mixture({"sources": [{"name": "dogs", "path": "s.jsonl", "tasks": {"grounding": 1},
                                    "negatives": {"k": 2, "prob": 1.0,
                                                  "llm": {"endpoint": chat_server, "model": "tiny-chat",
                                                          "cache_dir": str(tmp_path / "cache")}}}]},
                      base_dir=str(tmp_path))
    for example in mixture.take(3):
        phrases = example["negatives"]["phrases"]
        assert phrases == ["a dog without a leash", "a leash without a dog"]
        assert all(f"{NEG_REF_START}{p}" in example["prompt"] for p in phrases)
    with pytest.raises(ValueError, match="endpoint"):
        Mixture({"sources": [{"name": "x", "path": "s.jsonl", "negatives": {"llm": {"model": "m"}}}]},
                base_dir=str(tmp_path)).take(1)


def test_grpo_rows_hand_the_prompts_negatives_to_the_compliance_reward():
    rows = PromptRows(Mixture(spec(drop=0.0)), 12)
    checked = 0
    for i in range(len(rows)):
        row = rows[i]
        prompt = row["prompt"][-1]["content"][-1]["text"]
        negatives = row["negatives"]
        assert all(f"{NEG_REF_START}{p}" in prompt for p in negatives["phrases"])
        if not negatives["phrases"]:
            continue
        columns = {k: [row[k]] for k in ("objects", "categories", "negatives", "width", "height", "coord_codec",
                                         "task")}
        asked = row["categories"][0]
        on_negative = format_answer([{"phrase": asked, "bbox": negatives["boxes"][0]}], row["width"], row["height"],
                                    phrases=[asked])
        on_positives = format_answer(row["objects"], row["width"], row["height"], phrases=row["categories"])
        assert negative_penalty([row["prompt"]], [on_negative], **columns) == [-1.0]
        assert negative_penalty([row["prompt"]], [on_positives], **columns) == [0.0]
        checked += 1
    assert checked >= 6
