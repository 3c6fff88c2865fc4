"""rexomni warmup (sft/recognition.py): token targets, the scene data set, and a run that trains only the
tower, writes a loadable model and resumes exactly."""

from __future__ import annotations

import pytest
import torch
from rexomni.sft import recognition
from rexomni.sft.config import read_config
from safetensors.torch import load_file
from sft_helpers import one_thread

CLASSES = {"kind": ["circle", "square"], "color": ["red", "blue"]}


def test_token_targets_name_the_cell_of_each_centre_and_the_larger_shape_wins():
    small = {"bbox": [0, 0, 20, 20], "attributes": {"kind": "circle", "color": "red"}}
    big = {"bbox": [0, 0, 40, 40], "attributes": {"kind": "square", "color": "blue"}}
    far = {"bbox": [60, 60, 100, 100], "attributes": {"kind": "circle", "color": "blue"}}
    targets = recognition.token_targets([big, small, far], (100, 100), 4, 4, CLASSES)
    kind = targets["kind"].view(4, 4)
    # small's centre (10, 10) is in cell (0, 0), big's (20, 20) in (0, 0) too: the bigger names it.
    assert kind[0, 0] == 1 and targets["color"].view(4, 4)[0, 0] == 1
    assert kind[3, 3] == 0  # far's centre (80, 80)
    assert int((kind != recognition.IGNORE).sum()) == 2


def test_scene_tokens_match_the_tower_grid_and_repeat_per_index(tiny_rexomni):
    processor = tiny_rexomni.processor.image_processor
    scenes = dict(mode="single", size=224, num_objects=[2, 3], distractors=False)
    classes = recognition.attribute_classes(scenes)
    data = recognition.SceneTokens(scenes, classes, processor, length=3, seed="t")
    first, again, other = data[0], data[0], data[1]
    grid = first["image_grid_thw"]
    assert first["pixel_values"].shape[0] == int(grid.prod())
    assert first["labels_kind"].shape == (int(grid.prod()) // processor.merge_size ** 2,)
    assert 2 <= int((first["labels_kind"] != recognition.IGNORE).sum()) <= 3
    assert torch.equal(first["pixel_values"], again["pixel_values"])
    assert not torch.equal(first["pixel_values"], other["pixel_values"])
    batch = recognition.collate([first, other])
    assert batch["image_grid_thw"].shape == (2, 3) and batch["labels_size"].numel() == 2 * first["labels_size"].numel()


def _config(checkpoint, output_dir, **extra):
    values = {"model_name_or_path": str(checkpoint), "output_dir": str(output_dir), "max_steps": 4,
              "per_device_train_batch_size": 2, "save_steps": 2, "eval_steps": 2, "eval_scenes": 4,
              "warmup_steps": 1, "logging_steps": 1, "report_to": "none", "disable_tqdm": True,
              "scenes": {"mode": "single", "size": 112, "num_objects": [1, 2]}}
    values.update(extra)
    return read_config(recognition.warmup_parser(), None, values)


def _weights(folder):
    return load_file(f"{folder}/model.safetensors")


def test_warmup_trains_the_tower_only_and_resumes_exactly(tiny_checkpoint, tmp_path):
    with one_thread():
        whole = recognition.run_warmup(_config(tiny_checkpoint, tmp_path / "whole"))
        recognition.run_warmup(_config(tiny_checkpoint, tmp_path / "split", max_steps=2))
        resumed = recognition.run_warmup(_config(tiny_checkpoint, tmp_path / "split", max_steps=4))
    losses = {run: [(h["step"], h["loss"]) for h in result["log_history"] if "loss" in h]
              for run, result in (("whole", whole), ("resumed", resumed))}
    assert losses["resumed"] == losses["whole"] == sorted(losses["whole"]) and len(losses["whole"]) == 4
    assert [h["step"] for h in whole["heldout"]] == [2, 4] and 0 <= whole["heldout"][-1]["heldout/kind"] <= 1
    before, after, split = _weights(tiny_checkpoint), _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all("visual." in name for name in changed)  # the language model is untouched
    assert any("visual.merger." in name for name in changed) and any("visual.blocks." in name for name in changed)
    for name in after:
        torch.testing.assert_close(split[name], after[name])

    from rexomni.api import RexOmni

    model = RexOmni.from_pretrained(str(tmp_path / "whole"), device="cpu")
    model.detect(_scene(), categories=["red circle"], max_new_tokens=8)  # the folder serves inference


def _scene():
    from rexomni.data_engines.synth import generate_scene

    return generate_scene(0, 112, mode="single")[0]


def test_word_heads_start_from_the_language_models_words_and_train_the_tower(tiny_checkpoint, tmp_path):
    from rexomni.api import RexOmni

    model = RexOmni.from_pretrained(tiny_checkpoint, device="cpu")
    words = recognition.word_embeddings(model.model, model.processor.tokenizer, ["star", "ring"])
    assert words.shape == (2, model.model.config.text_config.hidden_size) and not torch.equal(words[0], words[1])
    head = recognition.WordHead(words)
    assert head(words * 3.0).argmax(-1).tolist() == [0, 1]  # a token along a word's embedding names that word
    assert list(dict(head.named_parameters())) == ["scale"]  # the words stay the language model's
    with one_thread():
        result = recognition.run_warmup(_config(tiny_checkpoint, tmp_path / "words", head="words", max_steps=2))
    before = _weights(tiny_checkpoint)
    changed = [n for n, t in _weights(tmp_path / "words").items() if not torch.equal(t, before[n])]
    assert changed and all("visual." in n for n in changed) and result["global_step"] == 2


@pytest.mark.parametrize("values, message", [
    ({"head": "mlp"}, "head must be one of"),
    ({"scenes": {"mode": "ocr"}}, "mode in"),
    ({"attributes": ["texture"]}, "texture"),
])
def test_bad_config_names_what_is_wrong(tiny_checkpoint, tmp_path, values, message):
    with pytest.raises(ValueError, match=message):
        _config(tiny_checkpoint, tmp_path, **values)


def test_cli_dry_run_and_listing(capsys):
    from rexomni.cli import main

    for extra in ([], ["--model_name_or_path", "null", "--preset", "tiny"]):
        assert main(["warmup", "--config", "sft/configs/synth-warmup.yaml", "--dry-run", *extra]) == 0
        out = capsys.readouterr().out
        assert "kind (8 classes), color (11 classes)" in out and "language model" in out and "untouched" in out
    assert main(["--help"]) == 0 and "warmup" in capsys.readouterr().out


def _naming_loss(model, step, **extra):
    options = dict(weight=0.5, scenes={"mode": "single", "size": 112, "num_objects": [1, 2]},
                   attributes=["kind", "color"], batch_size=2, seed=0, step=lambda: step[0])
    options.update(extra)
    return recognition.NamingLoss(model.model, model.processor.tokenizer, model.processor.image_processor, **options)


def test_naming_loss_trains_the_tower_toward_the_words_and_draws_scenes_by_step(tiny_checkpoint):
    from rexomni.api import RexOmni

    model = RexOmni.from_pretrained(tiny_checkpoint, device="cpu")
    model.model.train()
    step = [0]
    naming = _naming_loss(model, step)
    with one_thread():
        loss, logs = naming()
        assert loss.item() == pytest.approx(0.5 * logs["naming_loss"], rel=1e-3) and logs["naming_loss"] > 0
        assert naming()[0].item() == pytest.approx(loss.item())  # the same step draws the same scenes
        step[0] = 1
        assert naming()[0].item() != pytest.approx(loss.item())
        step[0] = 0
        model.model.zero_grad()
        loss.backward()
        grads = {n: p.grad for n, p in model.model.named_parameters()}
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "visual" in n)
        assert all(g is None for n, g in grads.items() if "visual" not in n)  # the words are targets, not trained
        optimizer = torch.optim.Adam(model.model.model.visual.parameters(), lr=1e-2)
        for _ in range(10):
            optimizer.zero_grad()
            naming()[0].backward()
            optimizer.step()
        assert naming()[0].item() < loss.item()
    model.model.eval()
    assert naming()[0].item() == 0  # held-out scoring adds nothing


@pytest.mark.parametrize("values, message", [
    ({"attributes": ["texture"]}, "naming_attributes.*texture"),
    ({"scenes": {"mode": "ocr"}}, "naming_scenes must be .* mode in"),
])
def test_naming_loss_names_a_bad_config_field(tiny_checkpoint, values, message):
    from rexomni.api import RexOmni

    with pytest.raises(ValueError, match=message):
        _naming_loss(RexOmni.from_pretrained(tiny_checkpoint, device="cpu"), [0], **values)


def test_sft_with_the_naming_loss_logs_it(tmp_path):
    from rexomni.sft.config import load_config
    from rexomni.sft.trainer import run_sft
    from sft_helpers import TINY_YAML, tiny_overrides

    config = load_config(TINY_YAML, tiny_overrides(tmp_path, max_steps=2, naming_loss_weight=0.5, naming_batch_size=2,
                                                   naming_scenes={"mode": "single", "size": 112}))
    with one_thread():
        result = run_sft(config)
    logged = [h["naming_loss"] for h in result["log_history"] if "naming_loss" in h]
    assert len(logged) == 2 and all(value > 0 for value in logged)
