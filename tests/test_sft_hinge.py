"""The negative hinge loss (NNH) as an SFT extra loss: its rows, its value against plain teacher forcing
(zero once the margin holds, positive otherwise), its gradients with and without activation
checkpointing, and a short run through the SFT entry with it switched on."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from rexomni.data_engines.mixture import Mixture
from rexomni.sft.config import load_config
from rexomni.sft.data import ExampleEncoder, SFTCollator
from rexomni.sft.losses import NegativeHingeLoss
from rexomni.sft.trainer import run_sft
from sft_helpers import TINY_YAML, negatives_data, one_thread, tiny_overrides

from rexomni.api import RexOmni
from rexomni.prompts import SYSTEM_PROMPT, box_tokens
from rexomni.tokens import NEGATIVE_TOKENS, VISION_END


@pytest.fixture(scope="module")
def detector(tiny_checkpoint):
    """A tiny random model of this module's own (the tests backpropagate through it)."""
    return RexOmni.from_pretrained(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def examples():
    """One example with negative phrases only, then two whose prompts also carry negative boxes."""
    drawn = [e for e in Mixture(negatives_data()).take(24) if e["negatives"].get("phrases")]
    with_boxes = [e for e in drawn if e["negatives"].get("boxes")]
    without = [e for e in drawn if not e["negatives"].get("boxes")]
    assert without and len(with_boxes) >= 2
    return [without[0], *with_boxes[:2]]


def encoder_for(detector, max_negatives: int = 4) -> ExampleEncoder:
    return ExampleEncoder(detector.processor, SYSTEM_PROMPT, hinge_codec="center", hinge_max_negatives=max_negatives)


def hinge_for(detector, eta: float) -> NegativeHingeLoss:
    tokenizer = detector.tokenizer
    return NegativeHingeLoss(1.0, eta, tokenizer.convert_tokens_to_ids(VISION_END), tokenizer.pad_token_id)


def box_of(detector, example) -> str:
    return box_tokens(example["targets"][0]["bbox"], example["width"], example["height"], detector.codec)


def plain_scores(detector, example) -> list[float]:
    """S of the example's first box under each of its hinge rows' variants by the plain path: the whole
    prompt and answer teacher-forced (RexOmni.score). The phrases under the detection prompt, the negative
    boxes (if any) under the visual prompt that has them as examples, answered as object_1."""
    def score(name: str, **prompt) -> float:
        answer = f"<|object_ref_start|>{name}<|object_ref_end|><|box_start|>{box_of(detector, example)}<|box_end|>"
        return float(np.log(detector.score(example["image"], answer, **prompt).scores[0]))

    phrases = [example["targets"][0]["phrase"]] + example["negatives"]["phrases"]
    scores = [score(p, categories=[p]) for p in phrases]
    if example["negatives"].get("boxes"):
        scores.append(score("object_1", task="visual_prompting", visual_prompt=[example["negatives"]["boxes"]]))
    return scores


@pytest.fixture(scope="module")
def plain(detector, examples) -> list[list[float]]:
    return [plain_scores(detector, e) for e in examples]


def test_encoder_writes_a_row_per_variant_and_the_collator_packs_them(detector, examples):
    encoder = encoder_for(detector)
    encoded = [encoder.encode(e) for e in examples]
    for example, item in zip(examples, encoded):
        phrases = [example["targets"][0]["phrase"]] + example["negatives"]["phrases"]
        boxes = example["negatives"].get("boxes", [])
        rows = item["hinge_suffixes"]
        assert len(rows) == len(phrases) + bool(boxes)
        box = box_of(detector, example)
        for phrase, row in zip(phrases, rows):
            text = detector.tokenizer.decode(row)
            assert text.startswith(f"Detect {phrase}.")
            assert text.endswith(f"{phrase}<|object_ref_end|><|box_start|>{box}")
        if boxes:  # the negative boxes, as the examples of a visual prompt, answered as object_1
            text = detector.tokenizer.decode(rows[-1])
            for negative in boxes:
                assert box_tokens(negative, example["width"], example["height"], detector.codec) in text
            assert not any(t in text for t in NEGATIVE_TOKENS), "the variant prompt carries no negatives itself"
            assert text.endswith(f"object_1<|object_ref_end|><|box_start|>{box}")
            # Without its boxes the example has exactly the phrase rows.
            phrases_only = dict(example, negatives={"phrases": example["negatives"]["phrases"]})
            assert encoder.encode(phrases_only)["hinge_suffixes"] == rows[:-1]
            # The box group counts within hinge_max_negatives, before the phrases.
            assert encoder_for(detector, max_negatives=1).encode(example)["hinge_suffixes"] == [rows[0], rows[-1]]
    plain = dict(examples[0], negatives={})
    assert encoder.encode(plain)["hinge_suffixes"] == []
    assert encoder.encode(dict(examples[0], task="pointing"))["hinge_suffixes"] == []
    batch = SFTCollator(encoder.pad_id, encoder.image_token_id)(encoded + [encoder.encode(plain)])
    counts = [len(item["hinge_suffixes"]) for item in encoded]
    assert batch["hinge_ids"].shape[0] == sum(counts)
    assert batch["hinge_example"].tolist() == [i for i, n in enumerate(counts) for _ in range(n)]
    assert batch["hinge_positive"].tolist() == [j == 0 for n in counts for j in range(n)]
    assert batch["hinge_lengths"].tolist() == [len(r) for item in encoded for r in item["hinge_suffixes"]]


def test_row_scores_equal_plain_teacher_forcing(detector, examples, plain):
    """Every row the loss scores, the negative-box rows included, gives S of the plain path."""
    encoder = encoder_for(detector)
    batch = SFTCollator(encoder.pad_id, encoder.image_token_id)([encoder.encode(e) for e in examples])
    with torch.no_grad():
        scores = hinge_for(detector, eta=0.3).row_scores(detector.model, batch)
    np.testing.assert_allclose(scores.numpy(), [s for row in plain for s in row], atol=1e-4)


def ordered_batch(detector, examples, plain, best_first: bool):
    """A batch whose rows put, as each box's own variant, the one under which the model finds the box
    most (best_first) or least likely; and the plain S of every row in that order."""
    encoder = encoder_for(detector)
    features, scores = [], []
    for example, s in zip(examples, plain):
        item = encoder.encode(example)
        order = sorted(range(len(s)), key=lambda j: -s[j] if best_first else s[j])
        item["hinge_suffixes"] = [item["hinge_suffixes"][j] for j in order]
        features.append(item)
        scores.append([s[j] for j in order])
    return SFTCollator(encoder.pad_id, encoder.image_token_id)(features), scores


def expected_hinge(scores, eta: float) -> float:
    return float(np.mean([max(0.0, eta - (s[0] - neg)) for s in scores for neg in s[1:]]))


def test_zero_when_the_margin_holds_positive_otherwise(detector, examples, plain):
    model = detector.model
    batch, scores = ordered_batch(detector, examples, plain, best_first=True)
    margins = [s[0] - neg for s in scores for neg in s[1:]]
    assert min(margins) > 0
    with torch.no_grad():
        held, logs = hinge_for(detector, eta=min(margins) / 2)(model=model, inputs=batch, outputs=None,
                                                                labels=batch["labels"])
    assert held.item() == 0.0 and logs["hinge/active"] == 0.0
    batch, scores = ordered_batch(detector, examples, plain, best_first=False)
    loss, logs = hinge_for(detector, eta=0.3)(model=model, inputs=batch, outputs=None, labels=batch["labels"])
    assert loss.item() == pytest.approx(expected_hinge(scores, 0.3), rel=1e-4) and loss.item() > 0.3
    model.zero_grad()
    loss.backward()
    embed = model.get_input_embeddings().weight.grad
    assert embed is not None and embed.abs().sum() > 0
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0, "the image prefix gets gradient too"
    model.zero_grad()


def test_checkpointed_model_scores_stacked_rows_with_the_same_value(detector, examples, plain):
    """Under activation checkpointing transformers drops KV caches, so the loss scores stacked rows: same
    value, gradients through the image encoder once."""
    model = detector.model
    batch, _ = ordered_batch(detector, examples, plain, best_first=False)
    loss_fn = hinge_for(detector, eta=0.3)
    model.train()
    try:
        reference = loss_fn(model=model, inputs=batch, outputs=None, labels=batch["labels"])[0]
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        loss = loss_fn(model=model, inputs=batch, outputs=None, labels=batch["labels"])[0]
        loss.backward()
    finally:
        model.activation_checkpointing_disable()
        model.eval()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-4)
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    model.zero_grad()


def test_sft_with_the_hinge_trains_the_negative_tokens(tmp_path, test_tokenizer):
    """`rexomni sft`'s entry with the hinge on: it logs, and the negative tokens' rows (which start from their
    positive counterparts, tests/test_tokens.py) move."""
    from safetensors.torch import load_file

    from rexomni.modeling import build_model
    from rexomni.tokens import prepare_tokenizer

    config = load_config(TINY_YAML, tiny_overrides(tmp_path / "run", data=negatives_data(drop=0.5), max_steps=4,
                                                   negative_hinge_weight=1.0, negative_hinge_eta=0.3))
    with one_thread():
        result = run_sft(config)
    assert result["global_step"] == 4
    hinge_logs = [h for h in result["log_history"] if "hinge/loss" in h]
    assert hinge_logs and all(h["hinge/loss"] >= 0 for h in hinge_logs)
    trained = load_file(os.path.join(config.output_dir, "model.safetensors"))
    initial_dir = str(tmp_path / "initial")
    build_model("tiny", test_tokenizer, seed=config.seed).save_pretrained(initial_dir)
    initial = load_file(os.path.join(initial_dir, "model.safetensors"))
    embed = next(k for k in trained if k.endswith("embed_tokens.weight"))
    rows = list(prepare_tokenizer(test_tokenizer).negatives[t] for t in NEGATIVE_TOKENS[:2])
    assert not torch.allclose(trained[embed][rows], initial[embed][rows]), "the negative phrase markers train"
