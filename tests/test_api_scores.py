"""Confidence scores: a memorised answer scores higher than a perturbed one."""

from __future__ import annotations

import numpy as np
import torch

from rexomni.api import RexOmni
from rexomni.grammar import format_answer
from rexomni.result import item_score
from rexomni.tokens import IM_END

OBJECTS = [{"phrase": "dog", "bbox": [10, 20, 60, 90]}, {"phrase": "cat", "bbox": [70, 5, 100, 40]}]


def _memorise(model: RexOmni, image, categories, answer: str, steps: int = 60) -> list[float]:
    """A plain torch loop on one image + answer; only the answer tokens carry loss."""
    [request] = model.prepare(image, "detection", categories)
    prompt = model.chat_text(request["prompt"])
    inputs = model.processor(text=[prompt + answer + IM_END], images=[request["image"]], return_tensors="pt")
    prompt_length = model.processor(text=[prompt], images=[request["image"]], return_tensors="pt")["input_ids"].shape[1]
    labels = inputs["input_ids"].clone()
    labels[:, :prompt_length] = -100
    net = model.model
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(steps):
        loss = net(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    net.eval()
    return losses


def test_memorised_answer_scores_higher_than_a_perturbed_one(tiny_checkpoint):
    torch.manual_seed(0)
    model = RexOmni.from_pretrained(tiny_checkpoint)  # a private copy: it is trained here
    image = np.random.RandomState(1).randint(0, 255, (112, 112, 3), dtype=np.uint8)
    answer = format_answer(OBJECTS, 112, 112, phrases=["dog", "cat"])
    losses = _memorise(model, image, ["dog", "cat"], answer)
    assert losses[-1] < 0.1 * losses[0]

    result = model.detect(image, ["dog", "cat"], max_new_tokens=40)
    assert result.raw_text == answer
    np.testing.assert_allclose(result.boxes, [o["bbox"] for o in OBJECTS], atol=0.2)
    assert np.all(result.scores > 0.5)

    shifted = [{**o, "bbox": [c + 25 for c in o["bbox"]]} for o in OBJECTS]
    perturbed = model.score(image, format_answer(shifted, 112, 112, phrases=["dog", "cat"]), categories=["dog", "cat"])
    assert perturbed.labels == ["dog", "cat"]
    assert np.all(perturbed.scores < result.scores)
    assert perturbed.scores.max() < 0.5 * result.scores.min()


def test_item_score_is_the_geometric_mean_probability():
    assert item_score([np.log(0.5), np.log(0.5)]) == 0.5
    assert abs(item_score([np.log(0.9), np.log(0.1)]) - 0.3) < 1e-9
    assert np.isnan(item_score([]))
