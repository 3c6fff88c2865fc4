"""SFT data: the hand-built pipeline equals the processor, labels cover exactly the answers,
mm_token_type_ids matters, unreadable images are skipped and counted, configs parse (YAML and
flags, unknown keys refused, every field in ``rexomni sft --help``)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from rexomni.data_engines.mixture import Mixture
from rexomni.sft.config import load_config
from rexomni.sft.data import (
    IGNORE_INDEX,
    ExampleEncoder,
    LengthGroupedDataset,
    MixtureDataset,
    SFTCollator,
    label_count,
)
from sft_helpers import TINY_YAML, cli_args, single_object_data

from rexomni.modeling import preset_settings
from rexomni.processing import make_processor
from rexomni.prompts import SYSTEM_PROMPT, build_messages

MIXED_SIZES = {"seed": 3, "codec": "center", "sources": [
    {"name": "a", "synth": {"mode": "single", "size": [112, 84]}, "tasks": {"grounding": 1}},
    {"name": "b", "synth": {"mode": "shapes", "size": [150, 100]}, "tasks": {"grounding": 1, "pointing": 1}},
    {"name": "c", "synth": {"mode": "keypoints", "size": 96}, "tasks": {"keypoints": 1}},
]}


@pytest.fixture(scope="module")
def pipeline(test_tokenizer):
    settings = preset_settings("tiny")
    processor = make_processor(test_tokenizer, settings.min_pixels, settings.max_pixels)
    encoder = ExampleEncoder(processor, SYSTEM_PROMPT)
    dataset = MixtureDataset(Mixture(MIXED_SIZES), 6, encoder, seed="t")
    examples = [dataset.example(i) for i in range(6)]
    batch = SFTCollator(encoder.pad_id, encoder.image_token_id)([encoder.encode(e) for e in examples])
    return processor, encoder, examples, batch


def processor_batch(processor, examples):
    texts = [processor.apply_chat_template(build_messages(e["prompt"], system=SYSTEM_PROMPT),
                                           add_generation_prompt=True, tokenize=False) + e["answer"] + "<|im_end|>"
             for e in examples]
    side = processor.tokenizer.padding_side
    processor.tokenizer.padding_side = "right"
    try:
        return processor(text=texts, images=[e["image"] for e in examples], padding=True, return_tensors="pt")
    finally:
        processor.tokenizer.padding_side = side


def test_images_of_different_sizes_share_a_batch(pipeline):
    _, _, examples, batch = pipeline
    grids = batch["image_grid_thw"].tolist()
    assert len({tuple(g) for g in grids}) > 1, "the mixture should give several image sizes"
    assert batch["pixel_values"].shape[0] == sum(t * h * w for t, h, w in grids)
    image_tokens = batch["mm_token_type_ids"].sum(1)
    assert image_tokens.tolist() == [t * h * w // 4 for t, h, w in grids]
    assert batch["input_ids"].shape[0] == len(examples)


def test_collated_batch_equals_processor(pipeline):
    processor, _, examples, batch = pipeline
    ref = processor_batch(processor, examples)
    assert torch.equal(batch["input_ids"], ref["input_ids"])
    assert torch.equal(batch["attention_mask"], ref["attention_mask"])
    assert torch.equal(batch["pixel_values"], ref["pixel_values"])  # bit for bit
    assert torch.equal(batch["image_grid_thw"], ref["image_grid_thw"])
    assert torch.equal(batch["mm_token_type_ids"], ref["mm_token_type_ids"])


def test_labels_decode_to_exactly_the_answers(pipeline, test_tokenizer):
    _, _, examples, batch = pipeline
    for row, example in zip(batch["labels"], examples):
        ids = row[row != IGNORE_INDEX].tolist()
        assert test_tokenizer.decode(ids, skip_special_tokens=False) == example["answer"] + "<|im_end|>"
        # ... and they are the last real tokens of the row: nothing after the answer is labelled
        labelled = (row != IGNORE_INDEX).nonzero()[:, 0]
        assert torch.equal(labelled, torch.arange(labelled[0], labelled[-1] + 1))


def test_logits_of_collated_batch_equal_processor_and_need_mm_token_type_ids(pipeline, tiny_checkpoint):
    from transformers import Qwen2_5_VLForConditionalGeneration

    processor, _, examples, batch = pipeline
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    ref = processor_batch(processor, examples)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        ours = model(**inputs).logits
        theirs = model(**ref).logits
        without = model(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"}).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], rtol=0, atol=1e-5)
    # Without the image-token types the model silently falls back to 1-D positions.
    assert (without[mask] - ours[mask]).abs().max() > 1e-3


def test_generation_prompt_matches_inference_chat_text(pipeline, test_tokenizer):
    processor, encoder, examples, _ = pipeline
    item = encoder.encode(examples[0], with_answer=False)
    text = processor.apply_chat_template(build_messages(examples[0]["prompt"], system=SYSTEM_PROMPT),
                                         add_generation_prompt=True, tokenize=False)
    n = int(item["image_grid_thw"].prod()) // 4
    expected = test_tokenizer.encode(text.replace("<|image_pad|>", "<|image_pad|>" * n), add_special_tokens=False)
    assert item["input_ids"] == expected
    assert all(v == IGNORE_INDEX for v in item["labels"])


def test_dataset_is_random_access_and_deterministic(pipeline):
    _, encoder, _, _ = pipeline
    a = MixtureDataset(Mixture(MIXED_SIZES), 5, encoder, seed="x")
    b = MixtureDataset(Mixture(MIXED_SIZES), 5, encoder, seed="x")
    assert a[3]["input_ids"] == b[3]["input_ids"]
    assert np.array_equal(a[3]["pixel_values"], b[3]["pixel_values"])
    assert a[1]["input_ids"] != a[2]["input_ids"]
    with pytest.raises(IndexError):
        a.example(5)


def test_length_grouped_batches_hold_every_example_once_with_less_padding(pipeline):
    """group_by_length: the windows' examples, each once, in batches of about one length (less padding
    than as drawn), the same order however the indices are reached (a resumed run), every item
    carrying its window's mean labelled-token count, which the collator sums per batch."""
    _, encoder, _, _ = pipeline
    drawn = MixtureDataset(Mixture(MIXED_SIZES), 22, encoder, seed="g")
    grouped = LengthGroupedDataset(drawn, batch_size=4, window_batches=2, seed="g")
    items = [grouped[i] for i in range(len(grouped))]
    key = lambda item: tuple(item["input_ids"])  # noqa: E731
    assert sorted(map(key, items)) == sorted(key(drawn[i]) for i in range(len(drawn)))

    def padded(seq):
        return sum(max(len(x["input_ids"]) for x in seq[j: j + 4]) * len(seq[j: j + 4]) for j in range(0, len(seq), 4))
    assert padded(items) < padded([drawn[i] for i in range(len(drawn))])
    for start in range(0, 22, 8):  # each window: the mean labelled count of its own examples
        window = [drawn[i] for i in range(start, min(start + 8, 22))]
        mean = sum(label_count(x) for x in window) / len(window)
        assert all(x["expected_label_tokens"] == pytest.approx(mean) for x in items[start: start + 8])
    resumed = LengthGroupedDataset(drawn, batch_size=4, window_batches=2, seed="g")
    assert [key(resumed[i]) for i in (13, 5, 21, 12)] == [key(items[i]) for i in (13, 5, 21, 12)]
    batch = SFTCollator(encoder.pad_id, encoder.image_token_id)(items[:4])
    assert float(batch["expected_label_tokens"]) == pytest.approx(4 * items[0]["expected_label_tokens"])
    with pytest.raises(IndexError, match="index 22 out of range"):
        grouped[22]


def test_unreadable_image_is_skipped_and_counted(tmp_path, pipeline):
    from rexomni.data_engines.synth import write_synth_dataset

    _, encoder, _, _ = pipeline
    write_synth_dataset(str(tmp_path), 4, seed=1, size=112, modes=("single",))
    images = sorted(os.listdir(tmp_path / "images"))
    (tmp_path / "images" / images[0]).write_bytes(b"not an image")
    spec = {"seed": 0, "sources": [{"name": "files", "path": str(tmp_path / "samples.jsonl"),
                                    "image_root": str(tmp_path), "check_images": False,
                                    "tasks": {"grounding": 1}}]}
    dataset = MixtureDataset(Mixture(spec), 12, encoder, seed=0)
    items = [dataset[i] for i in range(12)]
    assert all(len(it["input_ids"]) > 0 for it in items)
    assert sum(dataset.skipped_images.values()) >= 1


def test_config_overrides_and_errors(tmp_path):
    flags = ["--max_steps", "7", "--learning_rate=1e-4", "--freeze_vision", "--lora_r", "8", "--report_to", "none",
             "--vision_learning_rate", "null"]
    parsed = load_config(TINY_YAML, flags)
    overrides = {"max_steps": parsed.max_steps, "learning_rate": parsed.learning_rate,
                 "freeze_vision": parsed.model_args.freeze_vision, "lora_r": parsed.model_args.lora_r,
                 "report_to": parsed.report_to, "vision_learning_rate": parsed.model_args.vision_learning_rate}
    assert overrides == {"max_steps": 7, "learning_rate": 1e-4, "freeze_vision": True, "lora_r": 8,
                         "report_to": [], "vision_learning_rate": None}
    config = load_config(TINY_YAML, ["--max_steps", "3", "--output_dir", str(tmp_path)])
    assert config.max_steps == 3 and config.output_dir == str(tmp_path) and config.model_args.preset == "tiny"
    with pytest.raises(ValueError, match="unknown option --max_stepz"):
        load_config(TINY_YAML, ["--max_stepz", "3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"preset": "tiny", "data": {"sources": []}, "lerning_rate": 1}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(str(bad))
    with pytest.raises(ValueError, match="model_name_or_path"):
        load_config(None, {"data": "x.yaml"})
    with pytest.raises(ValueError, match="max_steps"):
        load_config(TINY_YAML, {"max_steps": 0})
    with pytest.raises(ValueError, match="group_by_length needs dataloader_num_workers 0"):
        load_config(TINY_YAML, {"group_by_length": True, "dataloader_num_workers": 2})


def test_a_mapping_and_null_come_through_the_command_line():
    config = load_config(TINY_YAML, cli_args({"data": single_object_data(), "save_total_limit": None}))
    assert config.data == single_object_data() and config.save_total_limit is None


def test_unknown_yaml_key_and_flag_are_refused_naming_them(tmp_path, capsys):
    from rexomni.sft import cli

    bad = tmp_path / "bad.yaml"
    with open(TINY_YAML, encoding="utf-8") as f:
        bad.write_text(f.read() + "lerning_rate: 1.0e-3\n")
    assert cli.main(["--config", str(bad), "--dry-run"]) == 2
    assert "unknown keys ['lerning_rate']" in capsys.readouterr().err
    assert cli.main(["--config", TINY_YAML, "--dry-run", "--max_stepz", "3"]) == 2
    assert "unknown option --max_stepz" in capsys.readouterr().err
    assert cli.main(["--config", TINY_YAML, "--dry-run", "--max_step", "3"]) == 2, "no abbreviations"
    assert "unknown option --max_step" in capsys.readouterr().err


def own_fields(dtype) -> list:
    """The fields ``dtype`` declares itself (new, or inherited with another default)."""
    return [f for f in dataclasses.fields(dtype) if f.init and f.name in dtype.__dict__.get("__annotations__", {})]


def test_help_lists_every_field_with_its_help_and_default(monkeypatch, capsys):
    from rexomni.sft import cli
    from rexomni.sft.config import ModelArguments, SFTConfig

    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps to the terminal; wide lines keep words whole
    assert cli.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    fields = own_fields(ModelArguments) + own_fields(SFTConfig)
    assert {"model_name_or_path", "lora_r", "data", "eval_examples", "soft_label_sigma", "bf16"} <= {
        f.name for f in fields}
    for f in fields:
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        help_text = " ".join(f.metadata["help"].split())
        assert f"--{f.name}" in text, f.name
        assert f"{help_text} (default: {default})" in text, f.name
