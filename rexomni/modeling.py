"""Building, saving and loading Qwen2.5-VL models for rexomni.

Presets:

- ``tiny``  (about 1.1M parameters with the test tokenizer): tests, CI.
- ``small`` (about 5M): demos and from-scratch training on a CPU.
- ``3b``    the shape of Qwen2.5-VL-3B-Instruct; build it on the meta device to inspect shapes.

A checkpoint folder holds the model (``config.json`` + safetensors), the processor and tokenizer
(with the chat template) and ``rexomni_config.json``: the project's own settings, which inference
reads and never guesses (:class:`RexOmniSettings`).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .codec import CODECS
from .processing import RELEASED_MAX_PIXELS, RELEASED_MIN_PIXELS
from .tokens import NUM_BINS

SETTINGS_FILE = "rexomni_config.json"
# Keys that earlier versions wrote and that no longer mean anything: read and dropped.
_RETIRED_KEYS = {"prompt_style": "released"}


def interleaved_mrope(pairs: int, position_pairs: int) -> list[int]:
    """An ``mrope_section`` for a head of ``pairs`` rotary frequency pairs (fastest first) that gives
    height and width the fastest ``position_pairs`` in turn and the temporal axis all the others.

    Qwen2.5-VL's rotary embedding assigns the i-th entry of ``mrope_section`` to axis ``i % 3`` (t, h,
    w), so a list longer than three interleaves the axes over the frequencies; stock transformers loads
    it (vLLM's M-RoPE expects three sections).
    """
    return [0, 1, 1] * (position_pairs // 2) + [pairs - position_pairs]


# Positions of the from-scratch presets (tiny, small). Qwen2.5-VL's M-RoPE (theta 1e6, sections t, h,
# w in that order over the frequencies, fastest first) gives width the slowest: one image token turns
# them by at most 1.8e-4 rad, and a small model cannot tell which token of a 4x4 grid holds an object.
# Theta 10 (sections 2/7/7) fixed that but left no slow frequency at all: a query that looks for an
# image token by what it shows ("red star") then scores its match through a rotation that changes with
# every token between them, and a long list moves that distance with each answer. So the presets
# interleave: height and width share the fast pairs (theta 1e4: 1 down to 0.056 rad per token) and the
# temporal axis, constant over an image, takes the slow ones (0.03 down to 2e-4 rad per token), a
# channel where content finds content at any distance. docs/training.md and docs/recipe.md (run 18)
# have the measurements. The 3b preset keeps the released model's positions.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, mrope_section=interleaved_mrope(16, 6), rope_theta=1e4),
        "vision": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, fullatt_block_indexes=[1]),
        "min_pixels": 56 * 56, "max_pixels": 112 * 112,
    },
    "small": {
        "text": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, mrope_section=interleaved_mrope(32, 12), rope_theta=1e4),
        "vision": dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4, fullatt_block_indexes=[1, 3]),
        "min_pixels": 56 * 56, "max_pixels": 224 * 224,
    },
    # Qwen2.5-VL-3B-Instruct.
    "3b": {
        "text": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                     num_key_value_heads=2, mrope_section=[16, 24, 24], rope_theta=1000000.0,
                     max_position_embeddings=128000, rms_norm_eps=1e-6),
        "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                       fullatt_block_indexes=[7, 15, 23, 31]),
        "min_pixels": RELEASED_MIN_PIXELS, "max_pixels": RELEASED_MAX_PIXELS,
        "vocab_size": 151936, "tie_word_embeddings": True,
    },
}


@dataclass
class RexOmniSettings:
    """What inference must know about a checkpoint beyond the transformers config.

    ``generation`` holds defaults for ``generate`` (e.g. ``repetition_penalty``); calls may override.
    """

    coord_codec: str = "center"
    num_bins: int = 1000
    min_pixels: int = RELEASED_MIN_PIXELS
    max_pixels: int = RELEASED_MAX_PIXELS
    generation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.coord_codec not in CODECS:
            raise ValueError(f"coord_codec must be one of {CODECS}, got {self.coord_codec!r}")
        if not 2 <= self.num_bins <= NUM_BINS:
            raise ValueError(f"num_bins must be between 2 and {NUM_BINS} (the tokens <0>..<999>), got {self.num_bins}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        threshold = self.generation.get("presence_threshold")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"generation.presence_threshold must be between 0 and 1 (or null), got {threshold}")

    def save(self, folder: str) -> str:
        path = os.path.join(folder, SETTINGS_FILE)
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=2)
            f.write("\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> RexOmniSettings:
        data = {k: v for k, v in data.items() if _RETIRED_KEYS.get(k, object()) != v}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; expected some of {sorted(known)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str) -> RexOmniSettings:
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=path)


def preset_config(preset: str, tokenizer):
    """A ``Qwen2_5_VLConfig`` for ``preset`` whose special-token ids are those of ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    text = dict(spec["text"])
    mrope_section = text.pop("mrope_section")
    rope_theta = text.pop("rope_theta", 1000000.0)
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    if sum(mrope_section) * 2 != head_dim:
        raise ValueError(f"preset {preset}: sum(mrope_section) must be head_dim / 2 = {head_dim // 2}")
    ids = tokenizer.convert_tokens_to_ids
    vocab_size = max(spec.get("vocab_size", 0), len(tokenizer))
    text_config = dict(
        text, vocab_size=vocab_size, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope_section},
        bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = dict(spec["vision"], out_hidden_size=text["hidden_size"], patch_size=14, spatial_merge_size=2,
                         temporal_patch_size=2, window_size=112, hidden_act="silu")
    return Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=spec.get("tie_word_embeddings", False),
    )


def build_model(preset: str, tokenizer, *, seed: int = 0, device: str | None = None):
    """A randomly initialised model of ``preset`` sized for ``tokenizer``.

    ``device="meta"`` builds the shapes only (for the 3b preset on a small machine). Embedding rows
    of the coordinate and negative tokens are initialised by :func:`rexomni.tokens.grow_embeddings`.

    The weights depend on ``seed`` only: also under DeepSpeed ZeRO-3 the model is built whole, on
    every process the same (see :func:`_built_whole`), and DeepSpeed partitions it when its engine starts.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from .tokens import end_of_answer_ids, grow_embeddings, prepare_tokenizer

    config = preset_config(preset, tokenizer)
    config.text_config._attn_implementation = config._attn_implementation = "sdpa"
    token_ids = prepare_tokenizer(tokenizer)
    # Treat the coordinate and negative tokens as new so that their rows get the ordinal init.
    token_ids.added = [tokenizer.convert_ids_to_tokens(i) for i in token_ids.coords] + list(token_ids.negatives)
    torch.manual_seed(seed)
    with _built_whole(), torch.device(device or "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config)
        if device != "meta":
            grow_embeddings(model, tokenizer, token_ids)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = end_of_answer_ids(tokenizer)
    return model


@contextlib.contextmanager
def _built_whole():
    """Build models as without DeepSpeed, also while a ZeRO-3 config is active (a ZeRO-3 run's
    ``TrainingArguments`` registers one with transformers).

    Under ZeRO-3, transformers builds each sub-model (vision tower, language model) partitioned under
    ``deepspeed.zero.Init`` and initialises it on rank 0 only; the composite model's own ``post_init``
    then initialises the empty shards of the other ranks again and fails (``IndexError`` at the
    padding row; transformers PR #47297). Even in one process those weights differ from a plain build
    with the same seed. Built whole, every process draws the same seeded weights, those of a run
    without DeepSpeed; the DeepSpeed engine partitions them later (rank 0's, broadcast). The cost is
    one full float32 copy per process while building (about 15 GB for the 3b preset).
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref  # transformers offers no getter
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def preset_settings(preset: str, **overrides) -> RexOmniSettings:
    spec = PRESETS[preset]
    return RexOmniSettings(min_pixels=spec["min_pixels"], max_pixels=spec["max_pixels"], **overrides)


def save_checkpoint(folder: str, model, processor, settings: RexOmniSettings) -> str:
    """Write model (safetensors), processor, tokenizer, chat template and rexomni settings to ``folder``."""
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    settings.save(folder)
    return folder


def init_checkpoint(folder: str, preset: str = "tiny", tokenizer=None, seed: int = 0) -> str:
    """A random-initialised checkpoint folder: what ``rexomni model init`` writes.

    ``tokenizer`` is a tokenizer or a path to one; by default the offline test tokenizer.
    """
    from .offline_tokenizer import build_test_tokenizer
    from .processing import make_processor

    if tokenizer is None:
        tokenizer = build_test_tokenizer()
    elif isinstance(tokenizer, str):
        from .checkpoint import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    model = build_model(preset, tokenizer, seed=seed)
    settings = preset_settings(preset)
    processor = make_processor(tokenizer, settings.min_pixels, settings.max_pixels)
    return save_checkpoint(folder, model, processor, settings)


def grow_checkpoint(source: str, folder: str, parts: tuple[str, ...] = ("language",)) -> str:
    """Double the depth of the language model and/or the vision tower (``parts``): after each layer insert
    a copy of it whose output projections are zero. The copy adds nothing to the residual stream, so the
    grown model answers exactly as ``source`` does, and training goes on from there with twice the layers
    (docs/recipe.md: the lever that broke the tiny model's plateau on multi-object scenes). What
    ``rexomni model grow`` writes."""
    from .checkpoint import load_checkpoint

    unknown = set(parts) - {"language", "vision"}
    if unknown or not parts:
        raise ValueError(f"parts must name 'language' and/or 'vision', not {sorted(parts)}")
    checkpoint = load_checkpoint(source)
    model = checkpoint.model
    if "language" in parts:
        language = model.model.language_model
        language.layers = _doubled(language.layers, lambda twin: (twin.self_attn.o_proj, twin.mlp.down_proj))
        for index, layer in enumerate(language.layers):
            layer.self_attn.layer_idx = index  # the KV cache is indexed by it
        text_config = model.config.text_config
        text_config.layer_types = [t for t in text_config.layer_types for _ in (0, 1)]
        text_config.num_hidden_layers = len(language.layers)
    if "vision" in parts:
        visual = model.model.visual
        visual.blocks = _doubled(visual.blocks, lambda twin: (twin.attn.proj, twin.mlp.down_proj))
        # A copy attends as its original does: full attention where the original did, else windows.
        full = [i for old in visual.fullatt_block_indexes for i in (2 * old, 2 * old + 1)]
        visual.fullatt_block_indexes = full
        vision_config = model.config.vision_config
        vision_config.fullatt_block_indexes = full
        vision_config.depth = len(visual.blocks)
    return save_checkpoint(folder, model, checkpoint.processor, checkpoint.settings)


def _doubled(layers, output_projections):
    """Each layer followed by a deep copy whose ``output_projections(copy)`` are zeroed."""
    import copy

    import torch

    grown = []
    for layer in layers:
        twin = copy.deepcopy(layer)
        with torch.no_grad():
            for projection in output_projections(twin):
                projection.weight.zero_()
                if projection.bias is not None:
                    projection.bias.zero_()
        grown += [layer, twin]
    return torch.nn.ModuleList(grown)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def saved_parameter_count(folder: str) -> int:
    """Parameters stored in a checkpoint folder's safetensors files (read from their headers)."""
    import math

    from safetensors import safe_open

    total = 0
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), framework="numpy") as f:
                total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total
