"""Model presets, processor, checkpoint save/load and the loading rules."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from rexomni.modeling import (
    PRESETS,
    SETTINGS_FILE,
    RexOmniSettings,
    build_model,
    count_parameters,
    interleaved_mrope,
    preset_config,
)
from rexomni.processing import QWEN2_5_VL_CHAT_TEMPLATE, RexOmniProcessor, make_processor
from rexomni.tokens import NEGATIVE_TOKENS, coord_token


def test_test_tokenizer_has_qwen_markers_and_single_coordinate_tokens(test_tokenizer):
    vocab = test_tokenizer.get_vocab()
    for t in ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|object_ref_start|>", "<|box_end|>", *NEGATIVE_TOKENS):
        assert t in vocab
    for b in (0, 7, 500, 999):
        assert len(test_tokenizer.encode(coord_token(b), add_special_tokens=False)) == 1
    ids = test_tokenizer.encode("<|box_start|><3><4><5><6><|box_end|>", add_special_tokens=False)
    assert len(ids) == 6
    assert test_tokenizer.padding_side == "left"
    assert test_tokenizer.chat_template == QWEN2_5_VL_CHAT_TEMPLATE


def test_chat_template_is_trls_verbatim():
    trl_dir = pytest.importorskip("trl").__path__[0]
    with open(os.path.join(trl_dir, "chat_templates", "qwen2_5_vl.jinja")) as f:
        assert f.read() == QWEN2_5_VL_CHAT_TEMPLATE


@pytest.mark.parametrize("preset,low,high", [("tiny", 0.5e6, 2e6), ("small", 5e6, 30e6)])
def test_presets_have_the_promised_size(test_tokenizer, preset, low, high):
    model = build_model(preset, test_tokenizer)
    assert low <= count_parameters(model) <= high
    assert model.get_input_embeddings().weight.shape[0] >= len(test_tokenizer)


def test_3b_preset_has_the_real_shape_on_meta(test_tokenizer):
    model = build_model("3b", test_tokenizer, device="meta")
    config = model.config
    assert config.text_config.hidden_size == 2048 and config.text_config.num_hidden_layers == 36
    assert config.vision_config.depth == 32 and config.vision_config.out_hidden_size == 2048
    assert model.get_input_embeddings().weight.shape[0] == 151936
    assert model.get_input_embeddings().weight.device.type == "meta"
    assert 3.5e9 < count_parameters(model) < 4.0e9


def test_preset_config_uses_the_tokenizers_ids(test_tokenizer):
    config = preset_config("tiny", test_tokenizer)
    assert config.image_token_id == test_tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == test_tokenizer.convert_tokens_to_ids("<|vision_start|>")
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge", test_tokenizer)


def axis_turns(text_config) -> dict[str, np.ndarray]:
    """Per M-RoPE axis, the rad per position of each frequency pair the model's own rotary embedding
    gives it: one position step along t, h or w alone, read back from its cos and sin."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding

    rotary = Qwen2_5_VLRotaryEmbedding(text_config)
    pairs = rotary.inv_freq.numel()
    turns = {}
    for axis, name in enumerate("thw"):
        positions = torch.zeros(3, 1, 1, dtype=torch.long)
        positions[axis] = 1
        cos, sin = rotary(torch.zeros(1), positions)
        angle = np.arctan2(sin[0, 0, :pairs].numpy(), cos[0, 0, :pairs].numpy())
        turns[name] = angle[angle > 0]
    return turns


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_from_scratch_presets_tell_image_rows_and_columns_apart_and_keep_a_slow_channel(test_tokenizer, preset):
    # A step of one image token must turn both the height and the width frequencies by a usable angle,
    # or a small model cannot learn which token of the grid holds an object; and some frequencies must
    # barely turn at all, so that a phrase can find the image token that shows it at any distance.
    turns = axis_turns(preset_config(preset, test_tokenizer).text_config)
    assert turns["h"].max() > 0.5 and turns["w"].max() > 0.5
    assert (turns["t"] < 0.01).sum() >= 4
    released = preset_config("3b", test_tokenizer).text_config.rope_parameters
    assert released["rope_theta"] == 1e6 and released["mrope_section"] == [16, 24, 24]


def test_interleaved_sections_give_each_axis_the_pairs_asked():
    assert interleaved_mrope(16, 6) == [0, 1, 1, 0, 1, 1, 0, 1, 1, 10]
    assert sum(interleaved_mrope(32, 12)) == 32


def test_coordinate_rows_are_initialised_ordinally(test_tokenizer):
    model = build_model("tiny", test_tokenizer)
    emb = model.get_input_embeddings().weight
    ids = test_tokenizer.convert_tokens_to_ids([coord_token(b) for b in (100, 101, 900)])
    near = torch.dist(emb[ids[0]], emb[ids[1]])
    far = torch.dist(emb[ids[0]], emb[ids[2]])
    assert near < far


def test_processor_outputs_mm_token_type_ids_and_image_tokens(test_tokenizer):
    processor = make_processor(test_tokenizer, 56 * 56, 112 * 112)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.new("RGB", (112, 112))
    out = processor(text=[text], images=[image], return_tensors="pt")
    image_id = processor.image_token_id
    assert out["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((out["input_ids"] == image_id).sum()) == 16
    assert torch.equal(out["mm_token_type_ids"], (out["input_ids"] == image_id).long())


def test_checkpoint_folder_round_trips_and_autoprocessor_finds_the_processor(tiny_checkpoint):
    from transformers import AutoProcessor

    import rexomni.processing  # noqa: F401  (registers RexOmniProcessor)

    files = set(os.listdir(tiny_checkpoint))
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", SETTINGS_FILE} <= files
    settings = RexOmniSettings.load(os.path.join(tiny_checkpoint, SETTINGS_FILE))
    assert settings.coord_codec == "center" and settings.num_bins == 1000
    assert (settings.min_pixels, settings.max_pixels) == (PRESETS["tiny"]["min_pixels"], PRESETS["tiny"]["max_pixels"])
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    assert isinstance(processor, RexOmniProcessor)
    assert processor.chat_template == QWEN2_5_VL_CHAT_TEMPLATE


def test_saved_weights_load_identically(tiny_checkpoint, tiny_rexomni):
    from safetensors.torch import load_file

    saved = load_file(os.path.join(tiny_checkpoint, "model.safetensors"))
    state = tiny_rexomni.model.state_dict()
    key = next(k for k in saved if "embed_tokens" in k)
    model_key = next(k for k in state if k.endswith("embed_tokens.weight"))
    assert torch.equal(saved[key], state[model_key])


def test_settings_reject_bad_values(tmp_path):
    with pytest.raises(ValueError, match="coord_codec"):
        RexOmniSettings(coord_codec="corner")
    with pytest.raises(ValueError, match="presence_threshold must be between 0 and 1"):
        RexOmniSettings(generation={"presence_threshold": 2})
    path = tmp_path / SETTINGS_FILE
    path.write_text(json.dumps({"coord_codec": "center", "bins": 10}))
    with pytest.raises(ValueError, match="unknown keys"):
        RexOmniSettings.load(str(path))


def _copy_without_settings(src, dst):
    shutil.copytree(src, dst)
    os.remove(os.path.join(dst, SETTINGS_FILE))
    return str(dst)


def test_folder_whose_tokenizer_has_coordinates_loads_as_released_rexomni(tiny_checkpoint, tmp_path):
    from rexomni.api import RexOmni

    folder = _copy_without_settings(tiny_checkpoint, tmp_path / "released")
    model = RexOmni.from_pretrained(folder)
    assert model.settings.coord_codec == "rexomni"
    assert model.settings.generation["repetition_penalty"] == 1.05
    assert model.settings.max_pixels == 2560 * 28 * 28


def test_plain_base_gets_coordinate_tokens_and_center_codec(tmp_path):
    from rexomni.api import RexOmni
    from rexomni.modeling import save_checkpoint
    from rexomni.offline_tokenizer import build_base_tokenizer, build_test_tokenizer

    # A "base" folder: a tokenizer without coordinate tokens and a model sized for it.
    tokenizer = build_test_tokenizer()
    base_tok = build_base_tokenizer()
    assert "<5>" not in base_tok.get_vocab()
    model = build_model("tiny", tokenizer)
    model.resize_token_embeddings(len(base_tok))
    folder = str(tmp_path / "base")
    processor = make_processor(base_tok, 56 * 56, 112 * 112)
    save_checkpoint(folder, model, processor, RexOmniSettings())
    os.remove(os.path.join(folder, SETTINGS_FILE))
    with pytest.warns(UserWarning, match="plain Qwen2.5-VL base"):
        loaded = RexOmni.from_pretrained(folder)
    assert loaded.settings.coord_codec == "center"
    assert "<999>" in loaded.tokenizer.get_vocab()
    assert loaded.model.get_input_embeddings().weight.shape[0] >= len(loaded.tokenizer)
    result = loaded.detect(np.zeros((40, 60, 3), np.uint8), ["dog"], max_new_tokens=12)
    assert result.problems == []
