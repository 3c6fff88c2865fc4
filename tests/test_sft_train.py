"""SFT end to end on the tiny preset: memorisation (AP50 = 1) through the project's path, the
checkpoint serves `RexOmni.detect`, LoRA saves and merges, dry runs of every shipped config."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import torch
from rexomni.sft import cli
from rexomni.sft.config import load_config
from rexomni.sft.trainer import build_datasets, run_sft
from sft_helpers import REPO, TINY_YAML, assert_lora_merged, one_thread, tiny_overrides

# The warm-up configs are rexomni warmup's (tests/test_recognition.py dry-runs them).
SHIPPED = sorted(p for p in glob.glob(os.path.join(REPO, "sft", "configs", "*.yaml")) if not p.endswith("warmup.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_dry_run_every_shipped_config(path, capsys):
    assert cli.main(["--config", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    for key in ("world size", "global", "steps", "tokens/step", "parameters", "vision", "merger", "llm"):
        assert key in out, f"{key!r} missing from the plan of {os.path.basename(path)}"
    config = load_config(path)
    assert ("+ naming (" in out) == bool(config.naming_loss_weight), "the plan names the naming loss when it is on"
    assert ("grouped by length" in out) == config.group_by_length
    if config.model_args.freeze_vision:
        assert any(line.split()[:1] == ["vision"] and line.rstrip().endswith("yes") for line in out.splitlines())


def test_dry_run_counts_lora_and_frozen_parts(capsys):
    assert cli.main(["--config", TINY_YAML, "--dry-run", "--lora_r", "4", "--freeze_vision", "true"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.strip().split()[:1] in (["vision"], ["merger"], ["llm"])}
    vision_total, vision_trainable = (int(x.replace(",", "")) for x in rows["vision"][1:3])
    llm_total, llm_trainable = (int(x.replace(",", "")) for x in rows["llm"][1:3])
    assert vision_total > 0 and vision_trainable == 0
    assert 0 < llm_trainable < llm_total


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """The tiny model trained on 8 fixed single-object scenes until it writes them back."""
    out = tmp_path_factory.mktemp("memorise")
    config = load_config(TINY_YAML, tiny_overrides(
        out, train_examples=8, cache_examples=True, per_device_train_batch_size=8, max_steps=120,
        save_steps=60, eval_examples=0, logging_steps=20))
    with one_thread():
        result = run_sft(config)
    train_set, _ = build_datasets(config, None)
    return config, result, [train_set.example(i) for i in range(8)]


def test_memorises_eight_scenes_ap50_one(memorised):
    """Asked as `rexomni eval` asks (the scenes' own phrases, in the prompt's order), the saved model
    writes its eight training scenes back."""
    from rexomni.sft.heldout import evaluate_heldout

    from rexomni.api import RexOmni

    config, result, examples = memorised
    assert result["global_step"] == 120
    detector = RexOmni.from_pretrained(config.output_dir)
    samples = [{"key": str(i), "image": e["image"], "width": e["width"], "height": e["height"],
                "objects": e["targets"], "categories": e["phrases"]} for i, e in enumerate(examples)]
    metrics = evaluate_heldout(detector.model, detector.processor, detector.settings, {"grounding": samples}, ap=True)
    assert metrics["grounding/parsed_clean"] == 1.0
    assert metrics["grounding/f1@0.5"] == 1.0
    assert metrics["grounding/coco/AP50"] == pytest.approx(1.0)


def test_checkpoint_folder_serves_detect(memorised):
    from rexomni.eval.boxes import box_iou

    from rexomni.api import RexOmni

    config, _, examples = memorised
    checkpoint = os.path.join(config.output_dir, "checkpoint-120")
    assert os.path.isfile(os.path.join(checkpoint, "rexomni_config.json"))
    detector = RexOmni.from_pretrained(checkpoint)
    example = examples[0]
    result = detector.detect(example["image"], example["phrases"])
    assert result.labels == example["phrases"]
    iou = box_iou(result.boxes, [example["targets"][0]["bbox"]])
    assert iou.max() > 0.8


def test_lora_run_saves_adapter_and_merges_with_extra_loss(tmp_path, test_tokenizer):
    from rexomni.api import RexOmni

    config = load_config(TINY_YAML, tiny_overrides(
        tmp_path, max_steps=5, lora_r=4, lora_alpha=8, lora_dropout=0.0, freeze_vision=True, freeze_merger=True,
        learning_rate=1e-2, save_steps=5, extra_loss="sft_helpers:logit_l2_loss",
        generation="{presence_threshold: 0.5}"))  # as a command line gives it
    with one_thread():
        run_sft(config)
    with open(tmp_path / "checkpoint-5" / "trainer_state.json") as f:
        logged = [h for h in json.load(f)["log_history"] if "extra/logit_l2" in h]
    assert logged and all(h["extra/logit_l2"] > 0 for h in logged), "the extra loss ran and was logged"
    assert_lora_merged(tmp_path, test_tokenizer, seed=config.seed)
    detector = RexOmni.from_pretrained(str(tmp_path))
    assert detector.settings.coord_codec == "center" and detector.settings.generation == {"presence_threshold": 0.5}
    assert np.isfinite(detector.detect(np.zeros((112, 112, 3), np.uint8), ["red circle"]).scores).all()


MIXED_LENGTHS = {"seed": 0, "codec": "center", "sources": [{"name": "s", "synth": {"mode": "shapes", "size": 112,
                 "masks": False}, "tasks": {"referring": 1, "grounding": 1}}]}


@pytest.mark.parametrize("grouped", [False, True], ids=["as-drawn", "grouped-by-length"])
def test_trainer_takes_the_steps_of_a_plain_adamw_loop(tmp_path, grouped):
    """The Trainer path hides nothing: its weights after a few steps equal those of a plain PyTorch
    loop (same model, batches, AdamW, clipping) that computes every logit and divides by the batch's
    labelled tokens, or under group_by_length by its window's expected count. A learning gap is then
    the task's, not the trainer's; logits only where the loss reads them change nothing."""
    from rexomni.sft.data import ExampleEncoder, SFTCollator
    from rexomni.sft.losses import CausalLMLoss
    from rexomni.sft.model_setup import load_model, prepare_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    steps, batch = 4, 4
    grouping = {"group_by_length": True, "length_group_window": 2, "data": MIXED_LENGTHS} if grouped else {}
    config = load_config(TINY_YAML, tiny_overrides(tmp_path / "trainer", max_steps=steps, max_grad_norm=0.5,
                                                   per_device_train_batch_size=batch, **grouping))
    with one_thread():
        bundle = load_model(config.model_args, seed=config.seed, bf16=config.bf16)
        model = prepare_model(bundle, config.model_args)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        encoder = ExampleEncoder(bundle.processor, config.system_prompt, config.max_length)
        train_set, _ = build_datasets(config, encoder)
        collate, loss_fn = SFTCollator(encoder.pad_id, encoder.image_token_id), CausalLMLoss()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
        for step in range(steps):
            inputs = collate([train_set[i] for i in range(step * batch, (step + 1) * batch)])
            labels, num_items = inputs.pop("labels"), inputs.pop("expected_label_tokens", None)
            assert (num_items is not None) == grouped
            optimizer.zero_grad()
            loss_fn(model(**inputs).logits, labels, num_items).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
        run_sft(config)
    trained = Qwen2_5_VLForConditionalGeneration.from_pretrained(config.output_dir).state_dict()
    by_hand = model.state_dict()
    assert by_hand.keys() == trained.keys()
    moved = [k for k in by_hand if not torch.equal(by_hand[k], initial[k])]
    assert len(moved) > len(by_hand) // 2, "the loop must actually train"
    for key, value in by_hand.items():
        torch.testing.assert_close(trained[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_stop_at_step_stops_there_with_the_schedule_of_max_steps(tmp_path):
    """A recipe stage stopped early is reproduced: training ends at stop_at_step and saves, and the
    learning rate of its last step is the full cosine's (three quarters of the peak for step 3 of 6),
    not that of a cosine squeezed into 3 steps (a quarter)."""
    config = load_config(TINY_YAML, tiny_overrides(tmp_path / "stopped", max_steps=6, stop_at_step=3,
                                                   lr_scheduler_type="cosine", warmup_steps=0))
    with one_thread():
        result = run_sft(config)
    assert result["global_step"] == 3
    assert os.path.isfile(os.path.join(config.output_dir, "model.safetensors"))
    last_rate = [h["learning_rate"] for h in result["log_history"] if "learning_rate" in h][-1]
    assert last_rate == pytest.approx(config.learning_rate * 0.75, rel=1e-3)


def test_default_model_script_stages_parse_and_chain(tmp_path, capsys, monkeypatch):
    """scripts/train_default.sh: valid shell, and every training stage it runs is a config and flags the
    commands accept (dry run), each starting from the folder the stage before it writes."""
    import re
    import shlex
    import subprocess

    from rexomni.cli import main

    script = os.path.join(REPO, "scripts", "train_default.sh")
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    text = open(script).read().replace("\\\n", " ")
    stages = re.findall(r"\|\| rexomni (.+)", text)
    configs = re.search(r"^configs=(\S+)$", text, re.M).group(1)
    monkeypatch.chdir(REPO)  # the script runs from the repository root
    written = set()
    for command in stages:
        argv = shlex.split(command.replace("$configs", configs).replace('"$out', f'"{tmp_path}'))
        flags = dict(zip(argv, argv[1:]))
        source = flags.get("--model_name_or_path", argv[2] if argv[:2] == ["model", "grow"] else None)
        assert source in written | {"null"}, f"{command}: starts from {source}, which no earlier stage writes"
        written.add(flags.get("--output_dir", flags.get("--out")))
        if argv[0] in ("sft", "warmup", "grpo"):
            assert main([*argv, "--shape_preset", "tiny", "--dry-run"]) == 0, command
    assert len(stages) == 7 and "steps" in capsys.readouterr().out
