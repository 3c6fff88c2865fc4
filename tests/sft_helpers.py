"""Small SFT configurations shared by the tests/test_sft_*.py files."""

from __future__ import annotations

import contextlib
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(REPO, "sft", "configs", "tiny.yaml")


@contextlib.contextmanager
def one_thread():
    """Train with one torch thread: steadier on a shared 2-core machine (two OpenMP threads fighting
    other jobs for the cores slow down by an order of magnitude); the previous count is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def single_object_data(size: int = 112, seed: int = 0) -> dict:
    """A mixture spec of one plain shape per scene, released prompt wording only."""
    return {"seed": seed, "codec": "center", "paraphrase": False,
            "sources": [{"name": "one", "synth": {"mode": "single", "size": size, "masks": False,
                                                  "num_objects": [1, 1]},
                         "tasks": {"grounding": 1}}]}


def negatives_data(size: int = 112, drop: float = 0.0) -> dict:
    """Scenes whose prompts name a present look-alike as a negative phrase, half the time with its boxes as
    negative boxes (never dropped by default)."""
    return {"seed": 1, "codec": "center", "paraphrase": False, "negative_drop_prob": drop,
            "sources": [{"name": "look-alikes", "tasks": {"referring": 1, "grounding": 1},
                         "synth": {"mode": "single", "size": size, "num_objects": [2, 3], "distractors": True,
                                   "negative_prob": 1.0, "masks": False}}]}


def tiny_overrides(output_dir: str, **extra) -> dict:
    """Overrides of tiny.yaml for a quick, quiet run writing to ``output_dir``."""
    base = {"output_dir": str(output_dir), "max_steps": 4, "per_device_train_batch_size": 4,
            "eval_examples": 0, "save_steps": 1000, "logging_steps": 1, "report_to": "none", "disable_tqdm": True,
            "data": single_object_data()}
    base.update(extra)
    return base


def cli_args(overrides: dict) -> list[str]:
    """The same overrides as ``rexomni sft`` flags (a mapping as YAML flow text, None as null)."""
    import yaml

    args = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
        if text.endswith("\n...") or text.endswith("..."):
            text = text.rsplit("...", 1)[0].strip()
        args += [f"--{key}", text]
    return args


def assert_lora_merged(folder, tokenizer, seed: int = 0) -> dict:
    """The LoRA run in ``folder`` saved an adapter and a merged model that differs from the initial
    tiny model exactly where LoRA trains: the projections and the new token rows, not the frozen
    vision tower or the other embedding rows. Returns the merged weights."""
    import torch
    from safetensors.torch import load_file

    from rexomni.modeling import build_model
    from rexomni.tokens import prepare_tokenizer

    folder = str(folder)
    assert os.path.isfile(os.path.join(folder, "adapter", "adapter_config.json"))
    assert os.path.isfile(os.path.join(folder, "adapter", "adapter_model.safetensors"))
    merged = load_file(os.path.join(folder, "model.safetensors"))
    assert not any("lora" in k for k in merged), "the merged model holds plain weights only"
    initial_dir = os.path.join(folder, "initial")
    build_model("tiny", tokenizer, seed=seed).save_pretrained(initial_dir)
    initial = load_file(os.path.join(initial_dir, "model.safetensors"))  # the same key layout as saved
    assert merged.keys() == initial.keys()
    q_proj = next(k for k in merged if k.startswith("model.layers.") and k.endswith("q_proj.weight"))
    vision = next(k for k in merged if k.startswith("visual.blocks.") and k.endswith("weight"))
    embed = next(k for k in merged if k.endswith("embed_tokens.weight"))
    assert not torch.allclose(merged[q_proj], initial[q_proj]), "LoRA deltas are merged into the projections"
    assert torch.equal(merged[vision], initial[vision]), "the frozen vision tower is untouched"
    coords = prepare_tokenizer(tokenizer).coords
    rows_changed = (merged[embed] != initial[embed]).any(1)
    assert rows_changed[coords].any(), "new token rows train under LoRA"
    assert not rows_changed[: min(coords)].any(), "the other embedding rows stay frozen"
    return merged


def logit_l2_loss(model, inputs, outputs, labels):
    """An extra loss for the hook test: a small penalty on the logits, logged under its own name."""
    value = outputs.logits.float().pow(2).mean() * 1e-3
    return value, {"extra/logit_l2": float(value.detach())}


def quiet_env(**extra) -> dict:
    """One thread per training process: deterministic sums, and no oversubscription of the test machine."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def kill_at_first_checkpoint(command: list[str], output_dir, max_steps: int) -> str:
    """Start a training ``command`` writing to ``output_dir``, SIGKILL it as soon as a complete checkpoint
    exists, check it died mid-training (before ``max_steps``) and return that checkpoint's folder."""
    import signal
    import subprocess
    import time

    from rexomni.sft.trainer import last_complete_checkpoint

    proc = subprocess.Popen(command, cwd=REPO, env=quiet_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while last_complete_checkpoint(str(output_dir)) is None:
        assert proc.poll() is None, f"the run ended before its first checkpoint:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    last = last_complete_checkpoint(str(output_dir))
    finished = os.path.exists(os.path.join(output_dir, "model.safetensors"))
    assert int(last.rsplit("-", 1)[1]) < max_steps and not finished, \
        "the run must be killed mid-training for the test to mean anything"
    return last
