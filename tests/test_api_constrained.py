"""Constrained decoding on RANDOM weights: unconstrained output is garbage, constrained output always parses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rexomni.constrained import GrammarConstrainedLogitsProcessor
from rexomni.grammar import parse_output

CATEGORIES = ["dog", "red car", "traffic light"]


def _images(n=4, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 255, (rng.randint(20, 150), rng.randint(20, 150), 3), dtype=np.uint8) for _ in range(n)]


def _is_clean(result, allowed) -> bool:
    parsed = parse_output(result.raw_text, result.width, result.height)
    return not parsed.problems and set(parsed.phrases) <= set(allowed)


def test_random_weights_unconstrained_is_garbage_constrained_always_parses(tiny_rexomni):
    images = _images()
    unconstrained = tiny_rexomni.detect(images, CATEGORIES, max_new_tokens=30, constrained=False)
    assert sum(_is_clean(r, CATEGORIES) for r in unconstrained) == 0
    for seed in range(2):
        torch.manual_seed(seed)
        # Sampling hot explores far more of the grammar than greedy decoding.
        results = tiny_rexomni.detect(images, CATEGORIES, max_new_tokens=60, do_sample=True, temperature=3.0)
        for r in results:
            assert r.problems == [], r.raw_text
            assert _is_clean(r, CATEGORIES), r.raw_text
            assert len(r.labels) >= 1
            assert np.all(r.boxes[:, 2] >= r.boxes[:, 0]) and np.all(r.boxes[:, 3] >= r.boxes[:, 1])


@pytest.mark.parametrize("task,kwargs", [
    ("pointing", {"categories": ["cat", "cup"]}),
    ("ocr_polygon", {"categories": "word"}),
    ("ocr_box", {"categories": "text line"}),
    ("visual_prompting", {"visual_prompt": [[[5, 5, 15, 15]], [[1, 2, 8, 9], [3, 3, 9, 9]]]}),
    ("gui_pointing", {"categories": "search icon"}),
])
def test_other_tasks_parse_without_problems_when_sampled(tiny_rexomni, task, kwargs):
    torch.manual_seed(0)
    for budget in (20, 70):
        for r in tiny_rexomni.predict(_images(2, seed=budget), task=task, max_new_tokens=budget, do_sample=True,
                                      temperature=3.0, **kwargs):
            assert r.problems == [], r.raw_text
            assert r.num_generated_tokens <= budget


def test_max_boxes_and_no_repeated_box_per_phrase(tiny_rexomni):
    torch.manual_seed(0)
    results = tiny_rexomni.detect(_images(), ["dog"], max_new_tokens=120, max_boxes=3, do_sample=True, temperature=0.7)
    for r in results:
        assert r.problems == []
        assert len(r.labels) <= 3
        parsed = parse_output(r.raw_text, r.width, r.height)
        bins = [tuple(item.bins) for _, item in parsed.items()]
        assert len(bins) == len(set(bins))
    # Greedy decoding of the random model wants one box over and over; the rule makes each new.
    greedy = tiny_rexomni.detect(_images(1)[0], ["dog"], max_new_tokens=40, max_boxes=4)
    bins = [tuple(item.bins) for _, item in parse_output(greedy.raw_text, greedy.width, greedy.height).items()]
    assert len(bins) == len(set(bins))


def test_processor_masks_to_the_grammar_step_by_step(test_tokenizer):
    tok = test_tokenizer
    proc = GrammarConstrainedLogitsProcessor(tok, ["dog"], item="box", max_new_tokens=50)
    vocab = len(tok)
    ids = torch.zeros(1, 5, dtype=torch.long)

    def allowed_after(prefix: str):
        proc.rows = None
        seq = ids
        out = proc(seq, torch.zeros(1, vocab))
        for t in tok.encode(prefix, add_special_tokens=False):
            seq = torch.cat([seq, torch.tensor([[t]])], dim=1)
            out = proc(seq, torch.zeros(1, vocab))
        return {tok.convert_ids_to_tokens(i) for i in torch.nonzero(out[0] > float("-inf")).flatten().tolist()}

    assert allowed_after("") == {"<|object_ref_start|>"}
    dog = tok.convert_ids_to_tokens(tok.encode("dog", add_special_tokens=False))
    assert allowed_after("<|object_ref_start|>") == {dog[0]}
    assert allowed_after("<|object_ref_start|>dog<|object_ref_end|>") == {"<|box_start|>"}
    after_start = allowed_after("<|object_ref_start|>dog<|object_ref_end|><|box_start|>")
    assert "<5>" in after_start and "<|box_end|>" not in after_start and "," not in after_start
    # x1 >= x0: after <400><10>, no x1 below 400
    x1 = allowed_after("<|object_ref_start|>dog<|object_ref_end|><|box_start|><400><10>")
    assert "<399>" not in x1 and "<400>" in x1 and "<999>" in x1
    complete = allowed_after("<|object_ref_start|>dog<|object_ref_end|><|box_start|><1><2><3><4>")
    assert complete == {"<|box_end|>", ","}
    # the same box again cannot be completed
    again = allowed_after("<|object_ref_start|>dog<|object_ref_end|><|box_start|><1><2><3><4>,<1><2><3>")
    assert "<4>" not in again and "<5>" in again
    # every requested phrase written: the answer must end
    assert allowed_after("<|object_ref_start|>dog<|object_ref_end|><|box_start|>None<|box_end|>") == {"<|im_end|>"}


@pytest.mark.parametrize("threshold, boxed", [(None, False), (0.5, True), (0.3, False)])
def test_presence_threshold_weighs_none_against_all_coordinates(test_tokenizer, threshold, boxed):
    """None at 0.34 against 0.66 spread over 33 coordinate bins: argmax answers None, the mass decision
    at 0.5 boxes the phrase, and a threshold under None's share keeps None."""
    tok = test_tokenizer
    proc = GrammarConstrainedLogitsProcessor(tok, ["dog"], item="box", max_new_tokens=50, presence_threshold=threshold)
    none_id = tok.encode("None", add_special_tokens=False)[0]
    coords = tok.convert_tokens_to_ids([f"<{b}>" for b in range(100, 133)])
    model_scores = torch.full((1, len(tok)), -30.0)
    model_scores[0, none_id], model_scores[0, coords] = np.log(0.34), np.log(0.02)

    seq = torch.zeros(1, 5, dtype=torch.long)
    out = proc(seq, torch.zeros(1, len(tok)))
    for t in tok.encode("<|object_ref_start|>dog<|object_ref_end|><|box_start|>", add_special_tokens=False):
        seq = torch.cat([seq, torch.tensor([[t]])], dim=1)
        out = proc(seq, model_scores.clone())  # the last call masks the token after <|box_start|>
    choice = out[0].argmax().item()
    assert (choice in coords) == boxed and (choice == none_id) == (not boxed)


def test_presence_threshold_reaches_the_decoder_from_a_call(tiny_rexomni):
    """0 answers every phrase written None, 1 boxes every one (None never holds all the probability)."""
    for threshold in (0.0, 1.0):
        for r in tiny_rexomni.detect(_images(3), ["dog", "cat"], max_new_tokens=60, presence_threshold=threshold):
            groups = parse_output(r.raw_text, r.width, r.height).phrases
            assert groups and all((len(items) == 0) == (threshold == 0.0) for items in groups.values()), r.raw_text


def test_presence_threshold_must_be_a_share(test_tokenizer):
    with pytest.raises(ValueError, match="presence_threshold must be between 0 and 1"):
        GrammarConstrainedLogitsProcessor(test_tokenizer, ["dog"], presence_threshold=1.5)
