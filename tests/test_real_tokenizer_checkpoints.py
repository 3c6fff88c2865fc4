"""The released Rex-Omni's layout and a plain Qwen2.5-VL base, with the REAL Qwen2.5-VL tokenizer files
(tests/real_checkpoints.py builds them): token ids, prompts, answers, detect and score, other layouts."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image
from real_checkpoints import (
    BASE_VOCAB,
    EMBEDDING_ROWS,
    FIRST_COORD_ID,
    write_base,
    write_released,
    write_tokenizer_json_with_collisions,
)

from rexomni.checkpoint import load_checkpoint, load_tokenizer
from rexomni.tokens import NEGATIVE_TOKENS

# Ids of the real Qwen2.5-VL special tokens (the 3B config.json records the image and vision ones).
REAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|object_ref_start|>": 151646,
            "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649,
            "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655}
ANSWER = "<|box_start|><12><412><339><568>,<92><55><179><378><|box_end|>"


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return write_base(str(tmp_path_factory.mktemp("qwen_base")))


@pytest.fixture(scope="module")
def released_folder(tmp_path_factory, base_folder):
    return write_released(str(tmp_path_factory.mktemp("rexomni_released")), weights_from=base_folder)


@pytest.fixture(scope="module")
def released(released_folder):
    from rexomni.api import RexOmni

    return RexOmni.from_pretrained(released_folder, device="cpu")


@pytest.fixture(scope="module")
def base(base_folder):
    from rexomni.api import RexOmni

    with pytest.warns(UserWarning, match="plain Qwen2.5-VL base"):
        return RexOmni.from_pretrained(base_folder, device="cpu")


def test_released_layout_keeps_every_declared_id(released_folder):
    checkpoint = load_checkpoint(released_folder)
    tokenizer, model = checkpoint.tokenizer, checkpoint.model
    assert checkpoint.kind == "released" and checkpoint.settings.coord_codec == "rexomni"
    assert tokenizer.convert_tokens_to_ids(["<0>", "<1>", "<999>"]) == [FIRST_COORD_ID, FIRST_COORD_ID + 1, 151642]
    assert checkpoint.token_ids.coords == list(range(FIRST_COORD_ID, FIRST_COORD_ID + 1000))
    for token, i in REAL_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == i, token
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.text_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    # The project's negative tokens come after every released id, inside the embedding's spare rows.
    negatives = tokenizer.convert_tokens_to_ids(list(NEGATIVE_TOKENS))
    assert negatives == list(range(BASE_VOCAB, BASE_VOCAB + 4))
    assert checkpoint.token_ids.added == list(NEGATIVE_TOKENS)
    assert model.get_input_embeddings().weight.shape[0] == EMBEDDING_ROWS, "no growth for the release"
    assert len(tokenizer) == BASE_VOCAB + 4


def test_plain_base_gets_new_ids_after_the_vocabulary_and_grows(base_folder):
    with pytest.warns(UserWarning, match="plain Qwen2.5-VL base"):
        checkpoint = load_checkpoint(base_folder)
    tokenizer, model = checkpoint.tokenizer, checkpoint.model
    assert checkpoint.kind == "base" and checkpoint.settings.coord_codec == "center"
    for token, i in REAL_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == i, token
    assert checkpoint.token_ids.coords == list(range(BASE_VOCAB, BASE_VOCAB + 1000))
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows > EMBEDDING_ROWS and rows % 64 == 0 and rows >= len(tokenizer)
    assert model.lm_head.weight is model.get_input_embeddings().weight, "still tied after growing"


def test_answer_is_one_token_per_coordinate_at_the_released_ids(released):
    tokenizer = released.tokenizer
    ids = tokenizer.encode(ANSWER, add_special_tokens=False)
    comma = tokenizer.convert_tokens_to_ids(",")
    expected = [151648] + [FIRST_COORD_ID + b for b in (12, 412, 339, 568)] + [comma] + \
        [FIRST_COORD_ID + b for b in (92, 55, 179, 378)] + [151649]
    assert ids == expected
    assert tokenizer.decode(ids, skip_special_tokens=False) == ANSWER
    # Ordinary text spells as before: the renamed entries are rare symbols, not words.
    plain = load_tokenizer(os.path.join(os.path.dirname(__file__), "fixtures", "qwen2.5-vl-tokenizer"))
    sentence = "Detect red car, person. Output the bounding box coordinates in [x0, y0, x1, y1] format."
    assert tokenizer.encode(sentence) == plain.encode(sentence)


def test_rendered_prompt_is_the_released_one(released):
    prompt = released.prepare(Image.new("RGB", (64, 48)), "detection", ["person", "dog"])[0]["prompt"]
    assert released.chat_text(prompt) == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "Detect person, dog. Output the bounding box coordinates in [x0, y0, x1, y1] format.<|im_end|>\n"
        "<|im_start|>assistant\n")


@pytest.mark.parametrize("which", ["released", "base"])
def test_detect_and_teacher_forced_score_work(which, request):
    detector = request.getfixturevalue(which)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8))
    result = detector.detect(image, ["person", "dog"], max_new_tokens=24)
    assert result.num_prompt_tokens > 16 and result.num_generated_tokens > 0
    assert set(result.labels) <= {"person", "dog"}
    answer = "<|object_ref_start|>person<|object_ref_end|>" + ANSWER
    scored = detector.score(image, answer, categories=["person", "dog"])
    assert scored.labels == ["person", "person"] and np.isfinite(scored.scores).all()
    assert (scored.scores > 0).all() and (scored.scores <= 1).all()
    codec_scale = 999 if which == "released" else 1000  # rexomni decodes bin/999, center (bin+0.5)/1000
    expected_x0 = 12 / 999 * 84 if codec_scale == 999 else 12.5 / 1000 * 84
    assert scored.boxes[0, 0] == pytest.approx(expected_x0, abs=1e-3)


def test_tokenizer_json_layouts_load_with_the_same_ids(released_folder, tmp_path):
    reference = load_tokenizer(released_folder)
    # 1. As a transformers 4.x save leaves it: a tokenizer.json whose added tokens collide with BPE entries.
    collided = str(tmp_path / "with_tokenizer_json")
    shutil.copytree(released_folder, collided)
    write_tokenizer_json_with_collisions(collided)
    # 2. As this project saves it (transformers 5): the BPE entries renamed.
    resaved = str(tmp_path / "resaved")
    reference.save_pretrained(resaved)
    for folder in (collided, resaved):
        tokenizer = load_tokenizer(folder)
        assert tokenizer.get_vocab() == reference.get_vocab(), folder
        assert tokenizer.encode(ANSWER, add_special_tokens=False) == reference.encode(ANSWER, add_special_tokens=False)


def _edited_copy(folder: str, to: str, name: str, edit) -> str:
    """A copy of a checkpoint folder whose JSON file ``name`` went through ``edit`` (in place)."""
    shutil.copytree(folder, to)
    path = os.path.join(to, name)
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)
    return to


def test_a_declared_id_that_cannot_be_kept_stops_loading(released_folder, tmp_path):
    def far_token(config):  # declared past the end with a gap before it: it cannot sit at its id
        config["added_tokens_decoder"]["160000"] = dict(config["added_tokens_decoder"]["151643"], content="<|far|>")

    folder = _edited_copy(released_folder, str(tmp_path / "gap"), "tokenizer_config.json", far_token)
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: added token '<\|far\|>' is declared at id 160000"):
        load_tokenizer(folder)


def test_tokenizer_of_another_model_is_refused(base_folder, tmp_path):
    folder = _edited_copy(base_folder, str(tmp_path / "mismatch"), "config.json",
                          lambda config: config.update(image_token_id=151654))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="image_token_id = 151654, but the tokenizer puts <\\|image_pad\\|> at"):
            load_checkpoint(folder)


def test_lora_fine_tune_of_the_release_saves_a_checkpoint_with_the_same_ids(released_folder, tmp_path):
    """What rexomni-3b-lora.yaml does, on the shrunken release: the merged checkpoint it saves loads
    with the released ids, codec and settings."""
    from rexomni.sft.config import load_config
    from rexomni.sft.trainer import run_sft
    from sft_helpers import TINY_YAML, one_thread, single_object_data, tiny_overrides

    data = dict(single_object_data(), codec="rexomni")
    config = load_config(TINY_YAML, tiny_overrides(
        tmp_path, preset=None, model_name_or_path=released_folder, coord_codec="rexomni", data=data, max_steps=2,
        per_device_train_batch_size=2, lora_r=4, lora_alpha=8, lora_dropout=0.0, freeze_vision=True,
        freeze_merger=True))
    with one_thread():
        run_sft(config)
    reference = load_checkpoint(released_folder, load_model=False)
    saved = load_checkpoint(str(tmp_path))
    assert saved.kind == "project" and saved.settings.coord_codec == "rexomni"
    assert saved.settings.generation == reference.settings.generation
    assert saved.tokenizer.get_vocab() == reference.tokenizer.get_vocab()
    assert saved.token_ids.added == [], "nothing left to add to a checkpoint saved by this project"
    assert saved.model.get_input_embeddings().weight.shape[0] == EMBEDDING_ROWS


def test_pipeline_loads_the_release_with_its_ids(released_folder):
    import transformers

    import rexomni  # noqa: F401  (registers the rex-omni task)

    detector = transformers.pipeline("rex-omni", model=released_folder)
    assert detector.tokenizer.convert_tokens_to_ids(["<0>", "<|image_pad|>"]) == [FIRST_COORD_ID, 151655]
    assert detector.detector.settings.coord_codec == "rexomni"
    image = Image.new("RGB", (64, 48), "white")
    out = detector(image, candidate_labels=["person"], max_new_tokens=12)
    assert isinstance(out, list) and all(d["label"] == "person" for d in out)


@pytest.mark.parametrize("path", ["./no-such-model", "tests/no-such-model", "a/b/c", "/nonexistent/model"])
def test_a_missing_local_folder_is_an_immediate_error(path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        load_checkpoint(path)
