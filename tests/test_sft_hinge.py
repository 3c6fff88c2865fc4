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
from sft_helpers import TINY_YAML, one_thread, tiny_overrides

from rexomni.api import RexOmni
from rexomni.prompts import SYSTEM_PROMPT, box_tokens
from rexomni.tokens import NEGATIVE_TOKENS, VISION_END


def negatives_data(size: int = 112, drop: float = 0.0) -> dict:
    """Scenes whose prompts name a present look-alike as a negative phrase (never dropped by default)."""
    return {"seed": 1, "codec": "center", "paraphrase": False, "negative_drop_prob": drop,
            "sources": [{"name": "look-alikes", "tasks": {"referring": 1, "grounding": 1},
                         "synth": {"mode": "single", "size": size, "num_objects": [2, 3], "distractors": True,
                                   "negative_prob": 1.0, "masks": False}}]}


@pytest.fixture(scope="module")
def detector(tiny_checkpoint):
    """A tiny random model of this module's own (the tests backpropagate through it)."""
    return RexOmni.from_pretrained(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def examples():
    with_negatives = [e for e in Mixture(negatives_data()).take(12) if e["negatives"].get("phrases")]
    assert len(with_negatives) >= 3
    return with_negatives[:3]


def encoder_for(detector) -> ExampleEncoder:
    return ExampleEncoder(detector.processor, SYSTEM_PROMPT, hinge_codec="center")


def hinge_for(detector, eta: float) -> NegativeHingeLoss:
    tokenizer = detector.tokenizer
    return NegativeHingeLoss(1.0, eta, tokenizer.convert_tokens_to_ids(VISION_END), tokenizer.pad_token_id)


def plain_score(detector, example, phrase: str) -> float:
    """S by the plain path: teacher forcing the single-phrase prompt and the box (RexOmni.score)."""
    box = box_tokens(example["targets"][0]["bbox"], example["width"], example["height"], detector.codec)
    answer = f"<|object_ref_start|>{phrase}<|object_ref_end|><|box_start|>{box}<|box_end|>"
    return float(np.log(detector.score(example["image"], answer, categories=[phrase]).scores[0]))


def test_encoder_writes_a_row_per_phrase_and_the_collator_packs_them(detector, examples):
    encoder = encoder_for(detector)
    encoded = [encoder.encode(e) for e in examples]
    for example, item in zip(examples, encoded):
        phrases = [example["targets"][0]["phrase"]] + example["negatives"]["phrases"]
        rows = item["hinge_suffixes"]
        assert len(rows) == len(phrases)
        box = box_tokens(example["targets"][0]["bbox"], example["width"], example["height"], detector.codec)
        for phrase, row in zip(phrases, rows):
            text = detector.tokenizer.decode(row)
            assert text.startswith(f"Detect {phrase}.")
            assert text.endswith(f"{phrase}<|object_ref_end|><|box_start|>{box}")
    plain = dict(examples[0], negatives={})
    assert encoder.encode(plain)["hinge_suffixes"] == []
    assert encoder.encode(dict(examples[0], task="pointing"))["hinge_suffixes"] == []
    batch = SFTCollator(encoder.pad_id, encoder.image_token_id)(encoded + [encoder.encode(plain)])
    counts = [len(item["hinge_suffixes"]) for item in encoded]
    assert batch["hinge_ids"].shape[0] == sum(counts)
    assert batch["hinge_example"].tolist() == [i for i, n in enumerate(counts) for _ in range(n)]
    assert batch["hinge_positive"].tolist() == [j == 0 for n in counts for j in range(n)]
    assert batch["hinge_lengths"].tolist() == [len(r) for item in encoded for r in item["hinge_suffixes"]]


def ordered_batch(detector, examples, best_first: bool):
    """A batch whose rows put, as each box's own phrase, the phrase under which the model finds the box
    most (best_first) or least likely; and the plain S of every row in that order."""
    encoder = encoder_for(detector)
    features, scores = [], []
    for example in examples:
        item = encoder.encode(example)
        phrases = [example["targets"][0]["phrase"]] + example["negatives"]["phrases"]
        s = [plain_score(detector, example, p) for p in phrases]
        order = sorted(range(len(s)), key=lambda j: -s[j] if best_first else s[j])
        item["hinge_suffixes"] = [item["hinge_suffixes"][j] for j in order]
        features.append(item)
        scores.append([s[j] for j in order])
    return SFTCollator(encoder.pad_id, encoder.image_token_id)(features), scores


def expected_hinge(scores, eta: float) -> float:
    return float(np.mean([max(0.0, eta - (s[0] - neg)) for s in scores for neg in s[1:]]))


def test_zero_when_the_margin_holds_positive_otherwise(detector, examples):
    model = detector.model
    batch, scores = ordered_batch(detector, examples, best_first=True)
    margins = [s[0] - neg for s in scores for neg in s[1:]]
    assert min(margins) > 0
    with torch.no_grad():
        held, logs = hinge_for(detector, eta=min(margins) / 2)(model=model, inputs=batch, outputs=None,
                                                                labels=batch["labels"])
    assert held.item() == 0.0 and logs["hinge/active"] == 0.0
    batch, scores = ordered_batch(detector, examples, best_first=False)
    loss, logs = hinge_for(detector, eta=0.3)(model=model, inputs=batch, outputs=None, labels=batch["labels"])
    assert loss.item() == pytest.approx(expected_hinge(scores, 0.3), rel=1e-4) and loss.item() > 0.3
    model.zero_grad()
    loss.backward()
    embed = model.get_input_embeddings().weight.grad
    assert embed is not None and embed.abs().sum() > 0
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0, "the image prefix gets gradient too"
    model.zero_grad()


def test_checkpointed_model_scores_stacked_rows_with_the_same_value(detector, examples):
    """Under activation checkpointing transformers drops KV caches, so the loss scores stacked rows: same
    value, gradients through the image encoder once."""
    model = detector.model
    batch, scores = ordered_batch(detector, examples, best_first=False)
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
