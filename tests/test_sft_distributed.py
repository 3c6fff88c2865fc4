"""SFT as separate processes: exact resume after SIGKILL, two "nodes" on 127.0.0.1 (gloo) training
with DeepSpeed ZeRO-2 through the Trainer, ZeRO-3 through the single-node launcher (from the tiny
preset and from a plain Qwen2.5-VL base folder), LoRA under ZeRO-2, the negative hinge loss on two
processes under DDP, ZeRO-2 and ZeRO-3, and ZeRO-3 on two processes from the tiny preset."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from sft_helpers import (
    REPO,
    TINY_YAML,
    assert_lora_merged,
    cli_args,
    kill_at_first_checkpoint,
    negatives_data,
    quiet_env,
    tiny_overrides,
)


def sft_command(overrides: dict) -> list[str]:
    return [sys.executable, "-m", "rexomni.cli", "sft", "--config", TINY_YAML, *cli_args(overrides)]


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "model.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    run = dict(max_steps=16, save_steps=4, per_device_train_batch_size=4, logging_steps=4, save_total_limit=None)
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"
    last = kill_at_first_checkpoint(sft_command(tiny_overrides(killed_dir, **run)), killed_dir, run["max_steps"])

    resumed = subprocess.run(sft_command(tiny_overrides(killed_dir, resume_from_checkpoint="auto", **run)),
                             cwd=REPO, env=quiet_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = subprocess.run(sft_command(tiny_overrides(reference_dir, **run)), cwd=REPO, env=quiet_env(),
                               capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-3000:]

    a, b = weights(killed_dir), weights(reference_dir)
    assert a.keys() == b.keys()
    initial = weights(last)
    assert any(not torch.equal(initial[k], a[k]) for k in a), "training went on after the resume"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_gloo_deepspeed_zero2(tmp_path):
    """sft/launch/multi_node.sh run twice on 127.0.0.1 as two "nodes" (one process each, gloo):
    the Trainer with DeepSpeed ZeRO-2 across both."""
    port = free_port()
    out = tmp_path / "two_nodes"
    overrides = tiny_overrides(out, max_steps=3, save_steps=3, per_device_train_batch_size=2,
                               deepspeed=os.path.join(REPO, "sft", "configs", "ds_zero2.json"))
    procs = []
    for node_rank in (0, 1):
        env = quiet_env(NNODES="2", NODE_RANK=str(node_rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                        NPROC="1", PYTHON=sys.executable)
        command = ["bash", os.path.join(REPO, "sft", "launch", "multi_node.sh"), TINY_YAML, *cli_args(overrides)]
        procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"node {rank} failed:\n{log[-4000:]}"
    ds_state = out / "checkpoint-3" / "global_step3"
    shards = sorted(p.name for p in ds_state.glob("*optim_states.pt"))
    assert len(shards) == 2, f"ZeRO-2 should partition the optimizer over 2 ranks, found {shards}"
    assert os.path.isfile(out / "checkpoint-3" / "rng_state_1.pth")
    final = weights(out)
    assert all(torch.isfinite(t).all() for t in final.values())


def test_single_node_launcher_zero3_saves_a_loadable_model(tmp_path):
    """sft/launch/single_node.sh with one process and ZeRO-3: parameters are partitioned, and the
    final model (gathered 16-bit weights) loads with RexOmni.from_pretrained."""
    from rexomni.api import RexOmni

    out = tmp_path / "zero3"
    overrides = tiny_overrides(out, max_steps=2, save_steps=2, per_device_train_batch_size=2,
                               deepspeed=os.path.join(REPO, "sft", "configs", "ds_zero3.json"))
    proc = run_single_node(overrides)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert list((out / "checkpoint-2").glob("global_step2/*optim_states.pt")), "a DeepSpeed checkpoint is written"
    detector = RexOmni.from_pretrained(str(out))
    embed = detector.model.get_input_embeddings().weight
    assert embed.shape[0] > 1000 and torch.isfinite(embed).all()


def run_single_node(overrides: dict, timeout: int = 300, nproc: int = 1, **env) -> subprocess.CompletedProcess:
    """tiny.yaml with ``overrides`` through sft/launch/single_node.sh, ``nproc`` processes."""
    env = quiet_env(NPROC=str(nproc), PYTHON=sys.executable, MASTER_PORT=str(free_port()), **env)
    return subprocess.run(["bash", os.path.join(REPO, "sft", "launch", "single_node.sh"), TINY_YAML,
                           *cli_args(overrides)], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def save_plain_base(folder) -> int:
    """A tiny random Qwen2.5-VL as a plain base would come: its tokenizer has no coordinate or
    negative tokens and there is no rexomni_config.json. Returns the embedding rows."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rexomni.modeling import PRESETS, SETTINGS_FILE, preset_config
    from rexomni.offline_tokenizer import build_base_tokenizer
    from rexomni.processing import make_processor

    tokenizer = build_base_tokenizer()
    assert "<0>" not in tokenizer.get_vocab()
    config = preset_config("tiny", tokenizer)
    config.text_config._attn_implementation = config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.save_pretrained(str(folder))
    spec = PRESETS["tiny"]
    make_processor(tokenizer, spec["min_pixels"], spec["max_pixels"]).save_pretrained(str(folder))
    assert not os.path.exists(os.path.join(folder, SETTINGS_FILE))
    return model.get_input_embeddings().weight.shape[0]


def test_zero3_sft_from_a_plain_qwen_base_adds_tokens_and_grows_embeddings(tmp_path):
    """A checkpoint folder without rexomni_config.json and without <0>..<999>, trained under ZeRO-3:
    the tokens are added and the (partitioned) embeddings grown at load, and the result loads as a
    project checkpoint with the 'center' codec."""
    from transformers import AutoTokenizer

    from rexomni.api import RexOmni
    from rexomni.tokens import coord_tokens

    base, out = tmp_path / "base", tmp_path / "out"
    base_rows = save_plain_base(base)
    # preset "null" unsets tiny.yaml's preset: the model comes from the folder
    overrides = tiny_overrides(out, preset="null", model_name_or_path=str(base), max_steps=2, save_steps=2,
                               per_device_train_batch_size=2,
                               deepspeed=os.path.join(REPO, "sft", "configs", "ds_zero3.json"))
    proc = run_single_node(overrides, TRANSFORMERS_VERBOSITY="info")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "a plain Qwen2.5-VL base" in proc.stderr, "the folder was taken for a plain base"
    assert "activating zero.init() for this model" in proc.stderr, "ZeRO-3 partitions the weights as they load"
    assert list((out / "checkpoint-2").glob("global_step2/*optim_states.pt")), "DeepSpeed ran"
    counts = ast.literal_eval(re.search(r"trainable parameters by part \(total, trainable\): (\{.*\})",
                                        proc.stderr).group(1))
    assert all(total > 0 for total, _ in counts.values()), f"full sizes of ZeRO-3 partitioned parameters: {counts}"

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    vocab = tokenizer.get_vocab()
    assert all(t in vocab for t in coord_tokens()), "the saved tokenizer has <0>..<999>"
    coords = [vocab[t] for t in coord_tokens()]
    detector = RexOmni.from_pretrained(str(out))
    assert detector.settings.coord_codec == "center"
    embed = detector.model.get_input_embeddings().weight.detach()
    assert embed.shape[0] > base_rows and embed.shape[0] % 64 == 0 and embed.shape[0] >= len(tokenizer)
    rows = embed[coords]
    assert torch.isfinite(rows).all()
    assert (rows[1:] != rows[0]).any(1).all(), "the coordinate rows are not one copied vector"
    near, far = (rows[1:] - rows[:-1]).norm(dim=1).mean(), (rows[500:] - rows[:500]).norm(dim=1).mean()
    assert near < 0.2 * far, "the ordinal init reached the partitioned matrix (random rows: near ~ far)"
    assert detector.model.get_output_embeddings().weight.shape[0] == embed.shape[0], "lm_head grew too"


def test_lora_under_zero2_saves_adapter_and_a_loadable_merged_model(tmp_path, test_tokenizer):
    """LoRA (PEFT) on the tiny preset under ds_zero2.json through single_node.sh: the adapter is
    saved, and the merged model in output_dir loads and carries the trained deltas."""
    from rexomni.api import RexOmni
    from rexomni.modeling import build_model

    out = tmp_path / "lora_zero2"
    overrides = tiny_overrides(out, max_steps=3, save_steps=3, per_device_train_batch_size=2, lora_r=4,
                               lora_alpha=8, lora_dropout=0.0, freeze_vision=True, freeze_merger=True,
                               learning_rate=1e-2, deepspeed=os.path.join(REPO, "sft", "configs", "ds_zero2.json"))
    proc = run_single_node(overrides)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert list((out / "checkpoint-3").glob("global_step3/*optim_states.pt")), "DeepSpeed ran"
    merged = assert_lora_merged(out, test_tokenizer)
    detector = RexOmni.from_pretrained(str(out))
    assert detector.settings.coord_codec == "center"
    assert all(torch.isfinite(p).all() for p in detector.model.parameters())

    # The adapter alone, put on the initial model and merged, gives the same weights.
    from peft import PeftModel

    again = PeftModel.from_pretrained(build_model("tiny", test_tokenizer, seed=0), str(out / "adapter"))
    again.merge_and_unload().save_pretrained(str(tmp_path / "again"))
    for key, value in weights(tmp_path / "again").items():
        torch.testing.assert_close(value, merged[key], msg=lambda m, key=key: f"{key}: {m}")


def test_launchers_are_valid_shell_and_use_the_sft_entry():
    launch = os.path.join(REPO, "sft", "launch")
    scripts = sorted(f for f in os.listdir(launch) if f.endswith((".sh", ".slurm")))
    assert {"single_node.sh", "multi_node.sh", "deepspeed_hostfile.sh", "sft.slurm"} <= set(scripts)
    for name in scripts:
        path = os.path.join(launch, name)
        assert subprocess.run(["bash", "-n", path], capture_output=True).returncode == 0, name
        assert "rexomni.sft.cli" in open(path).read(), name


def test_cli_ignores_the_deepspeed_launchers_local_rank(capsys):
    from rexomni.sft import cli

    assert cli.main(["--local_rank=0", "--config", TINY_YAML, "--dry-run"]) == 0
    assert "world size" in capsys.readouterr().out


# --------------------------------------------------------------------------- the negative hinge, distributed


def save_rank_weights(model, inputs, outputs, labels):
    """An extra loss (the config's ``extra_loss`` hook) that adds nothing: it writes this process's full
    weights, as the model it is given holds them, to ``$RANK_WEIGHTS_DIR/rank<RANK>.safetensors`` at every
    step (gathered first under ZeRO-3, where each process holds a shard). The last file holds the weights
    the last step started from."""
    import deepspeed
    from safetensors.torch import save_file

    params = dict(model.named_parameters())
    with torch.no_grad(), deepspeed.zero.GatheredParameters(list(params.values())):  # a no-op unless ZeRO-3
        state = {name: p.detach().clone().contiguous() for name, p in params.items()}
    save_file(state, rank_weights_file())
    return torch.zeros((), device=labels.device)


def save_initial_rank_weights(model, inputs, outputs, labels):
    """:func:`save_rank_weights` at the first step only: the file holds the weights training started from."""
    if os.path.exists(rank_weights_file()):
        return torch.zeros((), device=labels.device)
    return save_rank_weights(model, inputs, outputs, labels)


def rank_weights_file() -> str:
    return os.path.join(os.environ["RANK_WEIGHTS_DIR"], f"rank{os.environ['RANK']}.safetensors")


def run_with_weight_hook(folder, overrides: dict, hook: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``overrides`` on 2 processes (single_node.sh) with ``hook`` (a function of this file) as the extra
    loss writing each rank's weights to ``folder``; returns the finished run and the weights of rank 0 and 1."""
    tests = os.path.dirname(os.path.abspath(__file__))
    pythonpath = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    proc = run_single_node({**overrides, "extra_loss": f"test_sft_distributed:{hook}"}, nproc=2,
                           RANK_WEIGHTS_DIR=str(folder), PYTHONPATH=pythonpath)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc, [load_file(os.path.join(folder, f"rank{r}.safetensors")) for r in (0, 1)]


def train_with_hinge(folder, checkpoint: str, **extra) -> tuple[list[dict], list[dict[str, torch.Tensor]]]:
    """Three steps of SFT with the hinge on 2 processes (single_node.sh), 2 examples each, from the tiny
    ``checkpoint``, on scenes whose every prompt has a negative phrase (and half of them negative boxes).
    Returns (rank 0's logged steps, each rank's weights at the last step)."""
    overrides = tiny_overrides(folder, preset="null", model_name_or_path=checkpoint, max_steps=3,
                               per_device_train_batch_size=2, data=negatives_data(), negative_hinge_weight=1.0,
                               **extra)
    proc, ranks = run_with_weight_hook(folder, overrides, "save_rank_weights")
    logged = [ast.literal_eval(line) for line in proc.stdout.splitlines() if line.startswith("{'loss'")]
    return logged, ranks


def assert_hinge_ran(logged: list[dict]) -> None:
    assert len(logged) == 3, f"one log line per step: {logged}"
    for step in logged:
        assert float(step["hinge/loss"]) > 0 and float(step["hinge/active"]) > 0, step


def assert_ranks_equal(ranks: list[dict[str, torch.Tensor]]) -> None:
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs between the ranks"


@pytest.fixture(scope="module")
def ddp_hinge_run(tmp_path_factory, tiny_checkpoint):
    return train_with_hinge(tmp_path_factory.mktemp("hinge_ddp"), tiny_checkpoint)


def test_hinge_under_ddp_keeps_the_ranks_identical(ddp_hinge_run, tiny_checkpoint):
    """Each rank scores the hinge rows of its own examples through the module inside DDP; the gradients of
    that path join the all-reduce (they reach the same parameters in the same backward), so after two
    optimizer steps both ranks hold the same weights, and they moved."""
    logged, ranks = ddp_hinge_run
    assert_hinge_ran(logged)
    assert all(key.startswith("module.") for key in ranks[0]), "the Trainer wrapped the model in DDP"
    assert_ranks_equal(ranks)
    from rexomni.api import RexOmni

    initial = dict(RexOmni.from_pretrained(tiny_checkpoint, device="cpu").model.named_parameters())
    assert any(not torch.equal(initial[key.removeprefix("module.")], value) for key, value in ranks[0].items())


@pytest.mark.parametrize("stage", [2, 3])
def test_hinge_under_deepspeed_zero_trains_as_ddp_does(tmp_path, ddp_hinge_run, tiny_checkpoint, stage):
    """The same run under DeepSpeed ZeRO-2 / ZeRO-3 (parameters partitioned: the module's own hooks gather
    them for the hinge's passes): the ranks agree, and so do the weights with DDP's. Two optimizer steps
    with and without the hinge differ in most weights by more than 1e-5, so a hinge gradient left out of
    the reduction would show; the summation order leaves a handful of near-zero gradients apart."""
    logged, ranks = train_with_hinge(tmp_path, tiny_checkpoint,
                                     deepspeed=os.path.join(REPO, "sft", "configs", f"ds_zero{stage}.json"))
    assert_hinge_ran(logged)
    assert_ranks_equal(ranks)
    ddp_logged, ddp_ranks = ddp_hinge_run
    assert [float(step["hinge/loss"]) for step in logged] == pytest.approx(
        [float(step["hinge/loss"]) for step in ddp_logged], rel=1e-2)
    apart = sum(int(((ranks[0][k] - ddp_ranks[0][k]).abs() > 1e-5).sum()) for k in ranks[0])
    assert apart <= 1e-4 * sum(t.numel() for t in ranks[0].values()), f"{apart} weights differ from DDP's"


# --------------------------------------------------------------------------- ZeRO-3 from a preset, two processes


def test_zero3_on_two_processes_from_the_tiny_preset_starts_from_the_seeded_weights(tmp_path, test_tokenizer):
    """A from-scratch ZeRO-3 run on 2 processes (it once failed on rank 1 inside transformers' weight
    init): both ranks start from exactly the weights ``build_model`` draws in one process without
    DeepSpeed for the run's seed, the parameters are partitioned over the two ranks, and the trained
    model saved in output_dir loads."""
    from rexomni.api import RexOmni
    from rexomni.modeling import build_model

    overrides = tiny_overrides(tmp_path, seed=3, max_steps=2, save_steps=2, per_device_train_batch_size=2,
                               deepspeed=os.path.join(REPO, "sft", "configs", "ds_zero3.json"))
    _, ranks = run_with_weight_hook(tmp_path, overrides, "save_initial_rank_weights")
    initial = dict(build_model("tiny", test_tokenizer, seed=3).named_parameters())
    for rank, weights_at_start in enumerate(ranks):
        started = {key.removeprefix("module."): value for key, value in weights_at_start.items()}
        assert started.keys() == initial.keys()
        for key, value in started.items():
            assert torch.equal(value, initial[key]), f"rank {rank}: {key} is not the seeded initial weight"
    shards = sorted(p.name for p in (tmp_path / "checkpoint-2" / "global_step2").glob("*model_states.pt"))
    assert len(shards) == 2, f"ZeRO-3 should partition the parameters over 2 ranks, found {shards}"

    trained = dict(RexOmni.from_pretrained(str(tmp_path), device="cpu").model.named_parameters())
    assert trained.keys() == initial.keys()
    assert all(torch.isfinite(value).all() for value in trained.values())
    assert any(not torch.equal(trained[key], initial[key]) for key in initial), "training moved the weights"
