"""The search loss (sft/search.py): the cells a box covers, the request it asks, what it trains, and a
run that logs it."""

from __future__ import annotations

import pytest
import torch
from rexomni.sft import search
from rexomni.sft.data import ExampleEncoder
from sft_helpers import one_thread

from rexomni.tokens import BOX_START

SCENES = {"mode": "single", "size": 224, "num_objects": [2, 3], "distractors": True}


def test_covered_cells_take_the_cells_a_box_fills_and_always_its_centre():
    cells = search.covered_cells([[10, 10, 40, 40]], (100, 100), 4, 4).view(4, 4)
    # The box spans cells (0..1, 0..1); each holds at least a fifth of the (smaller) cell.
    assert cells[:2, :2].all() and int(cells.sum()) == 4
    # A sliver of a cell is not covered; the centre's cell always is, however small the box.
    # [20, 26] x [20, 45] fills 5 x 20 of cell (1, 0) and slivers of (0, 0), (0, 1) and (1, 1).
    sliver = search.covered_cells([[20, 20, 26, 45]], (100, 100), 4, 4).view(4, 4)
    assert sliver[1, 0] and int(sliver.sum()) == 1
    tiny = search.covered_cells([[60, 60, 62, 62]], (100, 100), 4, 4).view(4, 4)
    assert tiny[2, 2] and int(tiny.sum()) == 1
    both = search.covered_cells([[0, 0, 20, 20], [80, 80, 100, 100]], (100, 100), 4, 4).view(4, 4)
    assert both[0, 0] and both[3, 3] and int(both.sum()) == 2


def _search_loss(model, step, **extra):
    encoder = ExampleEncoder(model.processor, None, 512)
    coord_ids = [model.processor.tokenizer.convert_tokens_to_ids(f"<{i}>") for i in range(1000)]
    options = dict(weight=0.5, scenes=SCENES, batch_size=2, layers=[1], seed=0, step=lambda: step[0])
    options.update(extra)
    return search.SearchLoss(model.model, encoder, coord_ids, **options)


def test_each_query_starts_a_box_and_looks_for_its_phrase(tiny_checkpoint):
    from rexomni.api import RexOmni

    model = RexOmni.from_pretrained(tiny_checkpoint, device="cpu")
    tokenizer = model.processor.tokenizer
    for task in ("referring", "grounding", "pointing"):
        loss = _search_loss(model, [0], tasks=[task])
        item, queries = loss.request(3)
        text = tokenizer.decode(item["input_ids"])
        assert len(queries) == (1 if task == "referring" else text.count("<|box_start|><"))
        grid = item["image_grid_thw"]
        for query, cells in queries:
            assert item["input_ids"][query] == tokenizer.convert_tokens_to_ids(BOX_START)
            assert tokenizer.decode(item["input_ids"][query + 1]).startswith("<")  # a coordinate follows
            assert cells.numel() == int(grid[1] * grid[2]) // 4 and 1 <= int(cells.sum()) < cells.numel()
        again, queries_again = loss.request(3)  # a resumed run redraws the same request
        assert again["input_ids"] == item["input_ids"]
        assert all(torch.equal(a[1], b[1]) for a, b in zip(queries, queries_again))


def test_the_query_of_a_list_looks_where_its_own_phrase_is(tiny_checkpoint):
    from rexomni.api import RexOmni

    model = RexOmni.from_pretrained(tiny_checkpoint, device="cpu")
    loss = _search_loss(model, [0], tasks=["grounding"], scenes={**SCENES, "num_objects": [3, 4]})
    queries = next(q for q in (loss.request(i)[1] for i in range(20)) if len(q) >= 2)
    # Distinct phrases are distinct shapes: their cells differ.
    assert len({tuple(cells.tolist()) for _, cells in queries}) == len(queries)


def test_search_loss_trains_attention_toward_the_asked_shape(tiny_checkpoint):
    from rexomni.api import RexOmni

    model = RexOmni.from_pretrained(tiny_checkpoint, device="cpu")
    model.model.train()
    step = [0]
    loss_fn = _search_loss(model, step)
    with one_thread():
        loss, logs = loss_fn()
        assert loss.item() == pytest.approx(0.5 * logs["search_loss"], rel=1e-3) and logs["search_loss"] > 0
        assert loss_fn()[0].item() == pytest.approx(loss.item())  # the same step draws the same scenes
        model.model.zero_grad()
        loss.backward()
        grads = {n: p.grad for n, p in model.model.named_parameters()}
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "layers.1.self_attn.q_proj" in n)
        # Layer 1's attention depends on nothing above it.
        assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if "layers.2." in n or "layers.3." in n)
        optimizer = torch.optim.Adam(model.model.parameters(), lr=3e-3)
        for _ in range(15):
            optimizer.zero_grad()
            loss_fn()[0].backward()
            optimizer.step()
        assert loss_fn()[0].item() < 0.7 * loss.item()
    model.model.eval()
    assert loss_fn()[0].item() == 0.0  # off outside training (held-out scoring)


def test_search_loss_names_a_bad_layer_or_task(tiny_checkpoint):
    from rexomni.api import RexOmni

    model = RexOmni.from_pretrained(tiny_checkpoint, device="cpu")
    with pytest.raises(ValueError, match="search_layers"):
        _search_loss(model, [0], layers=[9])
    with pytest.raises(ValueError, match="search_tasks.*ocr"):
        _search_loss(model, [0], tasks=["ocr"])


def test_sft_with_the_search_loss_logs_it(tmp_path):
    from rexomni.sft.config import load_config
    from rexomni.sft.trainer import run_sft
    from sft_helpers import TINY_YAML, tiny_overrides

    config = load_config(TINY_YAML, tiny_overrides(tmp_path, max_steps=2, search_loss_weight=0.5, search_batch_size=2,
                                                   search_layers=[0], search_tasks=["referring", "pointing"],
                                                   search_scenes={"mode": "single", "size": 112}))
    with one_thread():
        result = run_sft(config)
    logged = [h["search_loss"] for h in result["log_history"] if "search_loss" in h]
    assert len(logged) == 2 and all(value > 0 for value in logged)
