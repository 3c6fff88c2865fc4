import dataclasses

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rexomni import decode_answer, format_answer, grow_embeddings, parse_output, prepare_tokenizer
from rexomni.offline_tokenizer import build_test_tokenizer
from rexomni.tokens import BOX_START, NEG_BOX_START, NEG_REF_START, NEGATIVE_TOKENS, OBJECT_REF_START, coord_token


@pytest.fixture(scope="module")
def partial_tokenizer():
    """A tokenizer that already has <0>..<9> but not the other coordinate tokens."""
    return build_test_tokenizer(num_bins=10)


def test_adds_only_the_missing_tokens(partial_tokenizer):
    tokenizer = partial_tokenizer
    before = {
        t: tokenizer.convert_tokens_to_ids(t) for t in [coord_token(i) for i in range(10)] + list(NEGATIVE_TOKENS)
    }
    ids = prepare_tokenizer(tokenizer)
    assert ids.added == [coord_token(i) for i in range(10, 1000)]
    assert all(ids.coords[i] == before[coord_token(i)] for i in range(10))
    assert ids.negatives == {t: before[t] for t in NEGATIVE_TOKENS}
    assert len(set(ids.coords)) == 1000
    again = prepare_tokenizer(tokenizer)
    assert again.added == [] and again.coords == ids.coords


def test_coordinates_are_single_tokens_that_survive_skipping(test_tokenizer):
    text = "<12><999>, <0>"
    ids = test_tokenizer.encode(text, add_special_tokens=False)
    assert test_tokenizer.convert_ids_to_tokens(ids)[:2] == ["<12>", "<999>"]
    assert "<12><999>" in test_tokenizer.decode(ids, skip_special_tokens=True)


def _tiny_lm(vocab_rows: int, tie: bool) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab_rows,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tie,
    )
    return Qwen2ForCausalLM(config)


@pytest.mark.parametrize("tie", [False, True])
def test_grow_initialises_new_rows(tie):
    tokenizer = build_test_tokenizer(num_bins=10)
    old_rows = len(tokenizer)
    model = _tiny_lm(old_rows, tie)
    ids = prepare_tokenizer(tokenizer)
    # The test tokenizer was born with the negative tokens; treat them as new, as for a Qwen base.
    ids = dataclasses.replace(ids, added=ids.added + list(NEGATIVE_TOKENS))
    rows = grow_embeddings(model, tokenizer, ids)
    assert rows % 64 == 0 and rows >= len(tokenizer)
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        assert weight.shape[0] == rows
        coords = weight[ids.coords].detach()
        near = (coords[100:899] - coords[101:900]).norm(dim=1).mean()
        far = (coords[100:599] - coords[500:999]).norm(dim=1).mean()
        assert near < 0.25 * far  # neighbouring bins start close, distant ones apart
        assert torch.isfinite(coords).all()
    embed = model.get_input_embeddings().weight.detach()
    # the tokens that existed before keep their rows; the negative markers mirror the positive ones
    neg_ref = embed[ids.negatives[NEG_REF_START]]
    pos_ref = embed[tokenizer.convert_tokens_to_ids(OBJECT_REF_START)]
    box = embed[tokenizer.convert_tokens_to_ids(BOX_START)]
    assert (neg_ref - pos_ref).norm() < 0.2 * (neg_ref - box).norm()
    assert not torch.equal(embed[ids.negatives[NEG_BOX_START]], box)


def test_grow_never_shrinks_and_can_skip_the_ordinal_part(test_tokenizer):
    model = _tiny_lm(len(test_tokenizer) + 500, tie=False)
    rows_before = model.get_input_embeddings().weight.shape[0]
    ids = prepare_tokenizer(test_tokenizer)
    assert grow_embeddings(model, test_tokenizer, ids) >= rows_before
    assert model.get_input_embeddings().weight.shape[0] >= rows_before

    tokenizer = build_test_tokenizer(num_bins=10)
    model = _tiny_lm(len(tokenizer), tie=False)
    ids = prepare_tokenizer(tokenizer)
    grow_embeddings(model, tokenizer, ids, ordinal_init=False)
    coords = model.get_input_embeddings().weight[ids.coords[10:]].detach()
    assert torch.allclose(coords, coords[0].expand_as(coords))  # all at the mean embedding


def test_decode_answer_gives_the_same_parse(test_tokenizer):
    answer = format_answer([{"phrase": "red box", "bbox": [10, 20, 60, 70]}], 100, 100, phrases=["red box", "dog"])
    ids = test_tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False)
    padded = [test_tokenizer.pad_token_id] * 3 + ids + [test_tokenizer.pad_token_id] * 2
    text = decode_answer(test_tokenizer, padded)
    assert parse_output(text, 100, 100).to_dict() == parse_output(answer, 100, 100).to_dict()
    skipped = test_tokenizer.decode(ids, skip_special_tokens=True)
    bare = parse_output(skipped, 100, 100)
    assert {p: [i.coords for i in v] for p, v in bare.phrases.items()} == {
        "red box": [[10.05, 20.05, 60.05, 70.05]],
        "dog": [],
    }


ZERO3_SCRIPT = """
import os, torch, deepspeed
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.integrations import HfDeepSpeedConfig
from rexomni import grow_embeddings, prepare_tokenizer
from rexomni.sft.cpu_deepspeed import disable_shm_op
from rexomni.offline_tokenizer import build_test_tokenizer

disable_shm_op()
deepspeed.init_distributed(dist_backend="gloo")
tokenizer = build_test_tokenizer(num_bins=10)
ds_config = {"train_batch_size": 1, "zero_optimization": {"stage": 3}}
hf_ds_config = HfDeepSpeedConfig(ds_config)  # tells transformers' resize that weights are partitioned
config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
with deepspeed.zero.Init(config_dict_or_path=ds_config):
    model = Qwen2ForCausalLM(config)
assert model.get_input_embeddings().weight.numel() == 0  # partitioned away
ids = prepare_tokenizer(tokenizer)
rows = grow_embeddings(model, tokenizer, ids)
params = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
with deepspeed.zero.GatheredParameters(params):
    for weight in params:
        coords = weight[ids.coords].detach()
        near = (coords[100:899] - coords[101:900]).norm(dim=1).mean()
        far = (coords[100:599] - coords[500:999]).norm(dim=1).mean()
        assert weight.shape[0] == rows and torch.isfinite(weight).all() and near < 0.25 * far, (rows, near, far)
print("ok", rows)
"""


def test_grow_embeddings_under_zero3_partitioning(tmp_path):
    """DeepSpeed ZeRO-3 partitions the embedding matrices (their local shape is empty): the new rows
    must still be initialised, on the gathered matrices. Its own process: it starts a process group."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", ZERO3_SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
