"""bench/probe_vision.py: the linear probe scores what features hold, and both probes run end to end."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import torch

PATH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "probe_vision.py"
spec = importlib.util.spec_from_file_location("probe_vision", PATH)
probe_vision = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe_vision)


def test_linear_probe_reads_a_class_the_features_hold_and_not_one_they_do_not():
    torch.manual_seed(0)
    targets = torch.randint(0, 8, (400,))
    informative = torch.nn.functional.one_hot(targets, 8).float() + 0.1 * torch.randn(400, 8)
    assert probe_vision.linear_probe(informative, targets, 8) > 0.95
    assert probe_vision.linear_probe(torch.randn(400, 8), targets, 8) < 0.4


def test_image_tokens_give_one_feature_per_scene(tiny_rexomni):
    scenes = probe_vision.one_shape_scenes(5, seed=3)
    features = probe_vision.image_tokens(tiny_rexomni, scenes)
    width = tiny_rexomni.model.config.text_config.hidden_size
    assert features.shape == (5, 2 * width)
    kinds, colours = probe_vision.labels(scenes)
    assert kinds.max() < len(probe_vision.KINDS) and colours.max() < len(probe_vision.COLOURS)


def test_learn_trains_a_fresh_tower(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["probe_vision.py", "learn", "--steps", "2", "--eval-every", "2",
                                      "--batch", "4", "--width", "32"])
    probe_vision.main()
    out = capsys.readouterr().out
    assert "width 32" in out and "step 2: loss" in out


def test_names_checks_the_colour_and_the_kind_written_on_each_shape(tmp_path, monkeypatch, capsys):
    import json

    from rexomni.eval.runner import synth_samples

    scenes = dict(mode="single", size=224, sizes=["large"], num_objects=[1, 1], distractors=False, n=4, seed=5)
    (tmp_path / "spec.yaml").write_text(json.dumps({"datasets": [{"name": "detect-all", "task": "detect_all",
                                                                   "synth": scenes}]}))
    rows = []
    for i, scene in enumerate(synth_samples(scenes)):
        shape = scene["objects"][0]["attributes"]
        other_kind = next(k for k in probe_vision.KINDS if k != shape["kind"])
        # Scenes 0 and 1 named right, 2 with the wrong kind, 3's box off the shape.
        label = f"{shape['color']} {other_kind if i == 2 else shape['kind']}"
        box = [0, 0, 1, 1] if i == 3 else scene["objects"][0]["bbox"]
        rows.append(json.dumps({"key": scene["key"], "boxes": [box], "labels": [label]}))
    (tmp_path / "detect-all.jsonl").write_text("\n".join(rows))
    monkeypatch.setattr(sys, "argv", ["probe_vision.py", "names", str(tmp_path / "detect-all.jsonl"),
                                      "--benchmark", str(tmp_path / "spec.yaml")])
    probe_vision.main()
    out = capsys.readouterr().out
    assert "3 boxes on a shape, 1 on none" in out
    assert "colour right  1.00" in out and "kind right    0.67" in out
