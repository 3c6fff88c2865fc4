"""`rexomni demo train`: a short run warms the tower up, trains stage 1 from it, and writes the
checkpoint, the loss curve and before/after drawings."""

from __future__ import annotations

import json
import os

import pytest
from safetensors.torch import load_file

from rexomni.cli import main


def test_demo_train_warms_up_then_writes_model_loss_curve_and_drawings(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "train", "--minutes", "0.2", "--warmup-minutes", "0.1", "--out", str(out),
                 "--threads", "1"]) == 0
    warm, final = (load_file(str(out / name / "model.safetensors")) for name in ("warmup", "model"))
    vision = [name for name in warm if name.startswith("visual.") and name.endswith("weight")]
    moved = sum((final[name] - warm[name]).norm() ** 2 for name in vision) ** 0.5
    size = sum(warm[name].norm() ** 2 for name in vision) ** 0.5
    # Stage 1 starts from the warmed tower and trains it: the weights moved, but not as far as a fresh
    # random tower lies from them (about sqrt(2) times their norm).
    assert 0 < moved < 0.3 * size
    assert os.path.getsize(out / "loss.png") > 1000
    for stage in ("before", "after"):
        assert sorted(os.listdir(out / stage)) == [f"scene{i}.png" for i in range(1, 7)]
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"')]
    assert printed[0]["warmup_steps"] > 0 and "heldout/kind" in printed[0]
    assert printed[1]["steps"] > 0


def test_demo_train_refuses_a_warmup_longer_than_the_budget(tmp_path):
    with pytest.raises(SystemExit, match="--warmup-minutes"):
        main(["demo", "train", "--minutes", "1", "--warmup-minutes", "2", "--out", str(tmp_path)])
