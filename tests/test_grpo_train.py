"""GRPO on the tiny preset: rollouts see the input ids RexOmni.predict sends, the grammar constrains them, a
duplicating answer is rewarded less, a few seeded steps raise the mean reward on their prompts, a run resumes
and its output loads in RexOmni, `rexomni grpo --help` and `--dry-run` work for the shipped configs."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
from rexomni.grpo import cli
from rexomni.grpo.config import GRPOConfig, load_config
from rexomni.grpo.trainer import build_trainer, reward_functions, run_grpo
from rexomni.sft.config import load_config as load_sft_config
from rexomni.sft.trainer import run_sft
from sft_helpers import REPO, TINY_YAML, one_thread, single_object_data, tiny_overrides
from trl.data_utils import prepare_multimodal_messages

from rexomni.api import RexOmni
from rexomni.modeling import init_checkpoint

GRPO_TINY = os.path.join(REPO, "grpo", "configs", "tiny.yaml")
SHIPPED_MODEL = os.path.join(REPO, "rexomni", "default_model")
SHIPPED = sorted(glob.glob(os.path.join(REPO, "grpo", "configs", "*.yaml")))


def grpo_overrides(model: str, output_dir, **extra) -> dict:
    base = {"model_name_or_path": model, "output_dir": str(output_dir), "max_steps": 2, "report_to": "none",
            "eval_examples": 0, "disable_tqdm": True, "logging_steps": 1, "save_steps": 1000,
            "data": single_object_data(seed=3)}
    base.update(extra)
    return base


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    return init_checkpoint(str(tmp_path_factory.mktemp("random")), preset="tiny")


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory):
    """The tiny preset after a short SFT run on single-object scenes: it writes answers, boxes still rough."""
    out = tmp_path_factory.mktemp("sft")
    config = load_sft_config(TINY_YAML, tiny_overrides(out, max_steps=80, per_device_train_batch_size=16))
    with one_thread():
        run_sft(config)
    return str(out)


def test_rollout_prompt_ids_are_the_ones_rexomni_sends(random_checkpoint, tmp_path):
    config = load_config(GRPO_TINY, grpo_overrides(random_checkpoint, tmp_path, beta=0.0))
    trainer = build_trainer(config)
    detector = RexOmni(trainer.bundle.model, trainer.bundle.processor, trainer.bundle.settings)
    for index in range(3):
        row = trainer.train_dataset[index]
        ids, _, fields = trainer._tokenize_prompts([prepare_multimodal_messages(row["prompt"], images=[row["image"]])])
        request = detector.prepare(row["image"], row["task"], row["categories"])[0]
        expected = detector.processor(text=[detector.chat_text(request["prompt"])], images=[request["image"]],
                                      return_tensors="pt")
        assert list(ids[0]) == expected["input_ids"][0].tolist()
        np.testing.assert_array_equal(np.asarray(fields["pixel_values"]), expected["pixel_values"].numpy())
        assert "mm_token_type_ids" in fields  # without it Qwen2.5-VL uses 1-D positions for the image


def test_duplicating_answer_gets_a_lower_reward(random_checkpoint, tmp_path):
    config = load_config(GRPO_TINY, grpo_overrides(random_checkpoint, tmp_path, beta=0.0))
    trainer = build_trainer(config)
    tokenizer = trainer.bundle.tokenizer
    row = trainer.train_dataset[0]
    phrase, box = row["objects"][0]["phrase"], row["objects"][0]["bbox"]
    from rexomni.grammar import format_answer

    def total(answer: str) -> float:
        ids = tokenizer.encode(answer, add_special_tokens=False) + tokenizer.encode("<|im_end|>")
        columns = {k: [row[k]] for k in row if k not in ("prompt", "image")}
        values = [f(prompts=[row["prompt"]], completions=[answer], completion_ids=[ids], **columns)[0]
                  for f in reward_functions(config, tokenizer)]
        return sum(w * v for w, v in zip(config.reward_weights, values) if v is not None)

    once = format_answer([{"phrase": phrase, "bbox": box}], row["width"], row["height"], phrases=[phrase])
    copies = format_answer([{"phrase": phrase, "bbox": box}] * 3, row["width"], row["height"], phrases=[phrase])
    assert copies.count("<|box_start|>") == 1 and total(copies) < total(once)


def test_constrained_rollouts_parse_and_are_logged(random_checkpoint, tmp_path):
    """From random weights every rollout is a well-formed answer (the grammar seam works), and the rollout
    metrics, reward components and completion lengths are logged."""
    config = load_config(GRPO_TINY, grpo_overrides(random_checkpoint, tmp_path, beta=0.0, max_steps=1))
    with one_thread():
        result = run_grpo(config)
    logs = result["log_history"][0]
    assert logs["rewards/format_reward/mean"] == 1.0
    for key in ("rollouts/duplicate_rate", "rollouts/image_covering_share", "rollouts/tokens_per_box",
                "completions/mean_length", "rewards/box_reward/mean", "rewards/ConfidenceReward/mean"):
        assert key in logs, key
    # The confidence reward got the rollouts' log-probabilities: without them it is exactly 0 for every answer.
    assert logs["rewards/ConfidenceReward/mean"] != 0.0


def mean_reward(trainer, samples: int = 32) -> float:
    """Mean total reward of ``samples`` sampled answers to each prompt of the trainer's data set, fixed seed."""
    torch.manual_seed(0)
    trainer.model.eval()
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))] * samples
    with torch.no_grad():
        output = trainer._generate_and_score_completions(rows)
    del output
    trainer.model.train()
    return trainer._metrics["eval"]["reward"][-1]


def test_seeded_grpo_steps_raise_the_mean_reward(sft_checkpoint, tmp_path):
    config = load_config(GRPO_TINY, grpo_overrides(
        sft_checkpoint, tmp_path, beta=0.0, max_steps=16, train_examples=2, learning_rate=3e-3,
        merger_learning_rate=3e-3, vision_learning_rate=3e-3, reward_weights={"box": 1.0, "format": 0.2},
        reward_options={"giou_shaping": 0.25}, num_generations=8, per_device_train_batch_size=16))
    with one_thread():
        trainer = build_trainer(config)
        before = mean_reward(trainer)
        trainer.train()
        after = mean_reward(trainer)
    print(f"mean reward before {before:.3f}, after {after:.3f}")
    assert after > before + 0.02, (before, after)


def test_resume_and_the_result_loads_in_rexomni(random_checkpoint, tmp_path):
    overrides = grpo_overrides(random_checkpoint, tmp_path, max_steps=2, save_steps=2)
    with one_thread():
        first = run_grpo(load_config(GRPO_TINY, overrides))
        assert os.path.isfile(tmp_path / "checkpoint-2" / "rexomni_config.json")
        result = run_grpo(load_config(GRPO_TINY, {**overrides, "max_steps": 3, "resume_from_checkpoint": "auto"}))
    assert result["global_step"] == 3
    steps = [h for h in result["log_history"] if "loss" in h]
    # Steps 1-2 come from the checkpoint's trainer state (their timings are the first run's), only step 3 ran.
    assert steps[:2] == [h for h in first["log_history"] if "loss" in h] and steps[2]["step"] == 3
    detector = RexOmni.from_pretrained(str(tmp_path), device="cpu")
    row = build_trainer(load_config(GRPO_TINY, overrides)).train_dataset[0]
    assert detector.detect(row["image"], row["categories"], max_new_tokens=20).raw_text


def test_help_lists_every_field(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    import dataclasses

    for f in dataclasses.fields(GRPOConfig):
        if f.init:
            assert f"--{f.name}" in out, f.name
    for key in ("--reward_weights", "--num_generations", "--beta", "--loss_type", "--max_pixels", "--model"):
        assert key in out


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_dry_run_every_shipped_config(path, capsys):
    assert cli.main(["--config", path, "--dry-run", "--model", "runs/absent", "--shape_preset", "tiny"]) == 0
    out = capsys.readouterr().out
    for key in ("rollouts", "rewards", "KL beta", "parameters", "llm"):
        assert key in out


def test_vllm_rollouts_refuse_what_they_would_silently_get_wrong():
    from rexomni.grpo.config import load_config

    box_only = {"seed": 0, "sources": [{"name": "s", "synth": {"mode": "single", "size": 112},
                                        "tasks": {"referring": 1}}]}
    points_too = {**box_only, "sources": [dict(box_only["sources"][0], tasks={"referring": 1, "pointing": 1})]}
    base = {"model_name_or_path": "runs/none", "use_vllm": True, "report_to": "none", "output_dir": "/tmp/x"}
    config = load_config(None, {**base, "data": box_only})
    assert config.vllm_structured_outputs_regex, "box tasks get the grammar regex"
    with pytest.raises(ValueError, match=r"answered with \['point'\]"):
        load_config(None, {**base, "data": points_too})
    assert load_config(None, {**base, "data": points_too, "constrained": False}).vllm_structured_outputs_regex is None
    with pytest.raises(ValueError, match="confidence reward needs"):
        load_config(None, {**base, "data": box_only, "reward_weights": {"box": 1.0, "confidence": 0.5}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without CUDA gets")
def test_configs_do_not_pin_memory_without_a_gpu():
    """Pinning needs a GPU: without one, SFT and GRPO configs turn it off instead of warning at each epoch."""
    data = {"seed": 0, "sources": [{"name": "s", "synth": {"mode": "single", "size": 112}, "tasks": {"referring": 1}}]}
    grpo = load_config(None, {"model_name_or_path": "runs/none", "data": data, "report_to": "none",
                              "output_dir": "/tmp/x"})
    sft = load_sft_config(TINY_YAML, {"report_to": "none", "output_dir": "/tmp/x"})
    assert not grpo.dataloader_pin_memory and not sft.dataloader_pin_memory


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    """A GRPO run killed with SIGKILL after a checkpoint resumes from it (resume_from_checkpoint: auto) and
    ends with the weights of a run that was never interrupted: the rollouts' random state is restored too.
    It starts from the shipped model, whose rollouts differ in reward (a random model's all score 0 and
    GRPO would not move it)."""
    import subprocess
    import sys

    from safetensors.torch import load_file
    from sft_helpers import cli_args, kill_at_first_checkpoint, quiet_env

    def command(output_dir, **extra):
        overrides = grpo_overrides(SHIPPED_MODEL, output_dir, max_steps=6, save_steps=2, save_total_limit=None, **extra)
        return [sys.executable, "-m", "rexomni.cli", "grpo", "--config", GRPO_TINY, *cli_args(overrides)]

    killed, reference = tmp_path / "killed", tmp_path / "reference"
    last = kill_at_first_checkpoint(command(killed), killed, max_steps=6)
    for folder, extra in ((killed, {"resume_from_checkpoint": "auto"}), (reference, {})):
        done = subprocess.run(command(folder, **extra), cwd=REPO, env=quiet_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = (load_file(os.path.join(folder, "model.safetensors")) for folder in (killed, reference))
    initial = load_file(os.path.join(last, "model.safetensors"))
    assert any(not torch.equal(initial[k], a[k]) for k in a), "training went on after the resume"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
