"""`rexomni demo train`: a short run writes the checkpoint, the loss curve and before/after drawings."""

from __future__ import annotations

import os

from rexomni.cli import main


def test_demo_train_writes_model_loss_curve_and_drawings(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "train", "--minutes", "0.1", "--out", str(out), "--threads", "1"]) == 0
    assert os.path.isfile(out / "model" / "model.safetensors")
    assert os.path.getsize(out / "loss.png") > 1000
    for stage in ("before", "after"):
        assert sorted(os.listdir(out / stage)) == ["scene1.png", "scene2.png", "scene3.png", "scene4.png"]
