"""The vLLM engine without a GPU: request building, the grammar regex, results from engine outputs."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rexomni.api import RexOmni
from rexomni.grammar import answer_regex, format_answer
from rexomni.vllm_backend import VLLMEngine


@pytest.fixture(scope="module")
def vllm_detector(tiny_rexomni):
    """A RexOmni whose vLLM engine drives a fake LLM that replays canned answers with known log-probs."""
    class Engine(VLLMEngine):
        sampling_params = staticmethod(dict)  # vllm.SamplingParams is not installed on CPU machines

    engine = Engine(_FakeLLM(tiny_rexomni.tokenizer), tiny_rexomni.tokenizer)
    return RexOmni(None, tiny_rexomni.processor, tiny_rexomni.settings, engine=engine, device="cuda", name="fake")


def _build(detector, requests, max_new_tokens=None, constrained=True, scores=True, max_boxes=None, **kwargs):
    texts = [detector.chat_text(r["prompt"]) for r in requests]
    gen = detector._generation_settings(max_new_tokens, kwargs)
    return detector.engine.build_requests("detection", requests, texts, gen, constrained=constrained, scores=scores,
                                          max_boxes=max_boxes)


class _FakeLLM:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.answers: list[str] = []
        self.calls = []

    def generate(self, prompts, sampling_params, use_tqdm=False):
        self.calls.append((prompts, sampling_params))
        outputs = []
        for _prompt, answer in zip(prompts, self.answers):
            ids = self.tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False)
            logprobs = [{tid: SimpleNamespace(logprob=math.log(0.5))} for tid in ids]
            outputs.append(SimpleNamespace(prompt_token_ids=[1] * 50,
                                           outputs=[SimpleNamespace(token_ids=ids, logprobs=logprobs)]))
        return outputs


def test_requests_carry_the_same_prompt_image_and_released_settings(vllm_detector, tiny_rexomni):
    image = np.zeros((40, 60, 3), np.uint8)
    requests = vllm_detector.prepare(image, "detection", ["dog", "cat"], negatives=["statue"])
    [(prompt, params)] = _build(vllm_detector, requests, max_new_tokens=64, max_boxes=5)
    assert prompt["prompt"] == tiny_rexomni.chat_text(requests[0]["prompt"])
    assert prompt["prompt"].count("<|image_pad|>") == 1  # vLLM expands the placeholder itself
    assert "<|neg_ref_start|>statue<|neg_ref_end|>" in prompt["prompt"]
    assert prompt["multi_modal_data"]["image"].size == (60, 40)
    assert params["max_tokens"] == 64 and params["temperature"] == 0.0 and params["logprobs"] == 0
    assert params["stop_token_ids"] == [tiny_rexomni.tokenizer.convert_tokens_to_ids(t)
                                        for t in ("<|im_end|>", "<|endoftext|>")]
    assert params["skip_special_tokens"] is False
    assert re.fullmatch(params["regex"], format_answer([{"phrase": "cat", "bbox": [1, 2, 30, 20]}], 60, 40))
    sampled = _build(vllm_detector, requests, do_sample=True, temperature=0.8, top_p=0.9, constrained=False,
                     scores=False)[0][1]
    assert sampled["temperature"] == 0.8 and sampled["top_p"] == 0.9 and "regex" not in sampled
    assert "logprobs" not in sampled
    with pytest.raises(ValueError, match="does not take"):
        _build(vllm_detector, requests, length_penalty=2.0)
    with pytest.raises(ValueError, match="presence_threshold .* needs the transformers backend"):
        _build(vllm_detector, requests, presence_threshold=0.5)
    assert _build(vllm_detector, requests, presence_threshold=None)[0][1]["temperature"] == 0.0


def test_answer_regex_accepts_the_grammar_and_nothing_else():
    boxes = answer_regex(["dog", "red car"], "box", max_items_per_group=2)
    good = format_answer([{"phrase": "dog", "bbox": [1, 2, 30, 40]}, {"phrase": "red car", "bbox": [5, 5, 9, 9]}],
                         100, 100, phrases=["dog", "red car", ])
    assert re.fullmatch(boxes, good)
    assert re.fullmatch(boxes, "<|object_ref_start|>dog<|object_ref_end|><|box_start|>None<|box_end|>")
    assert not re.fullmatch(boxes, good.replace("dog", "cat"))
    assert not re.fullmatch(boxes, "<|object_ref_start|>dog<|object_ref_end|><|box_start|><1><2><3><|box_end|>")
    three = format_answer([{"phrase": "dog", "bbox": [i, i, 50, 50]} for i in range(3)], 100, 100)
    assert not re.fullmatch(boxes, three)  # at most 2 items per group
    points = answer_regex(["cat"], "point")
    assert re.fullmatch(points, "<|object_ref_start|>cat<|object_ref_end|><|box_start|><1><2>,<3><4><|box_end|>")
    polygon = answer_regex(None, "polygon")
    assert re.fullmatch(polygon, "<|object_ref_start|>OPEN 24h<|object_ref_end|><|box_start|>"
                                 "<1><2><3><4><5><6><|box_end|>")
    assert not re.fullmatch(polygon, "<|object_ref_start|>OPEN<|object_ref_end|><|box_start|><1><2><3><4><|box_end|>")


def test_the_two_constraint_implementations_agree(tiny_rexomni):
    """Everything the transformers logits processor lets through matches the vLLM regex."""
    torch.manual_seed(0)
    images = [np.random.RandomState(i).randint(0, 255, (50, 70, 3), dtype=np.uint8) for i in range(3)]
    for r in tiny_rexomni.detect(images, ["dog", "red car"], max_new_tokens=60, do_sample=True, temperature=3.0):
        assert re.fullmatch(answer_regex(["dog", "red car"], "box"), r.raw_text), r.raw_text


def test_results_from_engine_outputs(vllm_detector):
    answers = [format_answer([{"phrase": "dog", "bbox": [6, 4, 30, 20]}], 60, 40),
               format_answer([{"phrase": "cat", "point": [10, 10]}], 60, 40, kind="point")]
    vllm_detector.engine.llm.answers = answers
    image = np.zeros((40, 60, 3), np.uint8)
    boxes = vllm_detector.detect([image], ["dog"])
    assert boxes[0].labels == ["dog"] and boxes[0].scores.tolist() == pytest.approx([0.5])
    np.testing.assert_allclose(boxes[0].boxes, [[6, 4, 30, 20]], atol=0.05)
    vllm_detector.engine.llm.answers = answers[1:]
    points = vllm_detector.point(image, ["cat"])
    assert points.points.shape == (1, 2) and points.num_prompt_tokens == 50
    prompts, params = vllm_detector.engine.llm.calls[-1]
    assert "Point to cat." in prompts[0]["prompt"] and "regex" in params[0]


def test_missing_vllm_gives_a_clear_error(tiny_checkpoint):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        from rexomni.api import RexOmni

        with pytest.raises(ImportError, match="needs the vllm package"):
            RexOmni.from_pretrained(tiny_checkpoint, backend="vllm")
    else:
        pytest.skip("vllm is installed here")
