"""Negative prompts at inference (rexomni.negatives): look-alikes, variant scores sharing the image prefix,
NNC suppression and the OOD score, through the API and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rexomni.data_engines.synth import generate_scene

from rexomni.api import RexOmni
from rexomni.negatives import (
    DEFAULT_BETA,
    Variant,
    auto_negatives,
    box_bins,
    rescore,
    suffix_logprobs,
    template_parts,
)
from rexomni.result import Result
from rexomni.tokens import NEG_REF_START, coord_token


@pytest.fixture(scope="module")
def shipped():
    return RexOmni.from_pretrained(device="cpu")


@pytest.fixture(scope="module")
def scene():
    """A scene on which the shipped model writes a box (two diamonds of different colours)."""
    image, sample = generate_scene(7, 224, "single", num_objects=(2, 3), distractors=True)
    return image, sorted({o["phrase"] for o in sample["objects"]})


def teacher_forced(model: RexOmni, image, phrase: str, bins) -> float:
    """S by the plain path: the whole text through the processor and the model (RexOmni.score)."""
    answer = f"<|object_ref_start|>{phrase}<|object_ref_end|><|box_start|>" + "".join(map(coord_token, bins))
    return float(np.log(model.score(image, answer + "<|box_end|>", categories=[phrase]).scores[0]))


def test_auto_negatives_are_lookalikes_never_categories():
    negatives = auto_negatives(["red circle", "blue circle"])
    assert negatives == auto_negatives(["red circle", "blue circle"])  # deterministic
    assert 2 <= len(negatives) <= 4 and not {"red circle", "blue circle"} & set(negatives)
    assert any(n.endswith(" circle") for n in negatives), "a colour edit"
    assert any(n.startswith("red ") and not n.endswith("circle") for n in negatives), "a category edit"
    assert len(auto_negatives(["dog"], per_category=1)) == 1
    assert auto_negatives(["zzzq"]) == []


def test_variant_scores_share_the_prefix_and_equal_plain_teacher_forcing(tiny_rexomni):
    """Both ways of sharing the image (KV cache, stacked rows) give the plain teacher-forced score, for
    two images of different sizes (left-padded prefixes) and phrase and box-group variants."""
    model = tiny_rexomni
    images = [generate_scene(1, 224, "single")[0], generate_scene(2, 224, "single")[0].resize((300, 150))]
    requests = model.prepare(images, "detection", ["x"])
    prefix_text, after_prompt = template_parts(model.chat_text)
    bins = [120, 240, 610, 830]
    variants = [Variant.phrase("red circle"), Variant.phrase("blue square"),
                Variant.boxes([[10, 10, 60, 60]], 224, 224, model.codec)]
    rows, suffixes = [], []
    for i in range(2):
        for v in variants:
            rows.append(i)
            suffixes.append(model.tokenizer.encode(v.scoring_text(after_prompt, "".join(map(coord_token, bins))),
                                                   add_special_tokens=False))
    prefix = model.processor(text=[prefix_text] * 2, images=[r["image"] for r in requests], padding=True,
                             padding_side="left", return_tensors="pt")
    assert prefix["attention_mask"][1].sum() < prefix["attention_mask"][0].sum()  # the wide image pads
    with torch.inference_mode():
        shared = suffix_logprobs(model.model, prefix, rows, suffixes, max_rows=4)
        stacked = suffix_logprobs(model.model, prefix, rows, suffixes, share_prefix=False, max_rows=4)
    torch.testing.assert_close(shared, stacked, atol=1e-4, rtol=1e-4)
    for i in range(2):
        for j, v in enumerate(variants[:2]):
            assert shared[3 * i + j].item() == pytest.approx(teacher_forced(model, images[i], v.name, bins), abs=1e-4)


def test_suppression_and_ood_follow_their_formulas(shipped, scene):
    """The negatives score the boxes only (the shipped model was never trained with them in the prompt, where
    it answers None): the answer is the plain one, the scores are NNC's and the OOD scores NegS's."""
    image, categories = scene
    negatives = ["orange diamond", "red heart"]
    plain = shipped.detect(image, categories)
    assert len(plain) >= 1, "the scene must give the shipped model a box"
    options = dict(negatives=negatives, negatives_in_prompt=False)
    kept = shipped.detect(image, categories, suppress=True, suppress_threshold=0.0, ood=True, **options)
    assert "negatives_s" in kept.timing
    # Nothing dropped at threshold 0: the same boxes as without suppression.
    assert kept.labels == plain.labels and np.allclose(kept.boxes, plain.boxes)
    [request] = shipped.prepare(image, "detection", categories, **options)
    for i, (label, bins) in enumerate(zip(kept.labels, box_bins(kept, shipped.codec))):
        s_pos = teacher_forced(shipped, image, label, bins)
        s_neg = max(teacher_forced(shipped, image, n, bins) for n in negatives)
        s_id = max(teacher_forced(shipped, image, c, bins) for c in request["phrases"])
        assert kept.scores[i] == pytest.approx(1 / (1 + np.exp(-(s_pos - DEFAULT_BETA * s_neg))), rel=1e-3)
        assert kept.ood_scores[i] == pytest.approx(1 / (1 + np.exp(-(s_id - s_neg))), rel=1e-3)
    # In a batch, next to an image without boxes (which runs no prefix), the same scores.
    requests = shipped.prepare([image, image], "detection", categories, **options)
    empty, batched = rescore(shipped, requests, [Result("detection", 224, 224), plain], suppress=True, threshold=0.0,
                             ood=True)
    assert len(empty) == 0 and len(empty.ood_scores) == 0
    assert np.allclose(batched.scores, kept.scores) and np.allclose(batched.ood_scores, kept.ood_scores)
    # A threshold above every score drops every box; the scores kept are NNC's, and ood_scores follow.
    high = float(kept.scores.max()) + 1e-6
    dropped = shipped.detect(image, categories, suppress=True, suppress_threshold=high, ood=True, **options)
    assert len(dropped) == 0 and len(dropped.ood_scores) == 0


def test_auto_negatives_enter_the_prompt_and_the_request(shipped, scene):
    image, categories = scene
    [request] = shipped.prepare(image, "detection", categories, negatives="auto")
    assert request["negatives"] == auto_negatives(categories)
    assert all(f"{NEG_REF_START}{n}" in request["prompt"] for n in request["negatives"])
    result = shipped.detect(image, categories, negatives="auto", ood=True)
    assert result.ood_scores is not None and len(result.ood_scores) == len(result)
    assert "ood_scores" in result.to_dict() and len(result.select(np.zeros(len(result), bool)).ood_scores) == 0


def test_negatives_for_scoring_only_leave_the_prompt_and_the_answer_alone(shipped, scene):
    image, categories = scene
    [request] = shipped.prepare(image, "detection", categories, negatives="auto", negatives_in_prompt=False)
    assert NEG_REF_START not in request["prompt"] and request["negatives"] == auto_negatives(categories)
    plain = shipped.detect(image, categories)
    scored = shipped.detect(image, categories, negatives="auto", negatives_in_prompt=False, suppress=True,
                            suppress_threshold=0.0, ood=True)
    assert scored.raw_text == plain.raw_text and np.allclose(scored.boxes, plain.boxes)
    assert not np.allclose(scored.scores, plain.scores), "NNC's scores replace the plain ones"


def test_negative_scoring_needs_negatives_and_boxes_under_phrases(shipped, scene):
    image, categories = scene
    with pytest.raises(ValueError, match="need negatives"):
        shipped.detect(image, categories, suppress=True)
    with pytest.raises(ValueError, match="pointing"):
        shipped.point(image, categories, negatives=["x"], ood=True)
    with pytest.raises(ValueError, match="both as categories and as negatives"):
        shipped.detect(image, categories, negatives=[categories[0]], suppress=True)


def test_cli_detect_with_auto_negatives_suppression_and_ood(tmp_path, scene, capsys):
    from rexomni.cli import main

    image, categories = scene
    path = tmp_path / "scene.png"
    image.save(path)
    out = tmp_path / "out.jsonl"
    assert main(["detect", str(path), "--categories", ",".join(categories), "--negatives", "auto", "--ood",
                 "--suppress", "--suppress-threshold", "0", "--score-negatives-only", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert len(record["ood_scores"]) == len(record["labels"]) >= 1
    with pytest.raises(SystemExit):
        main(["detect", str(path), "--categories", categories[0], "--suppress"])
    assert "--negatives" in capsys.readouterr().err
