"""Model set-up for SFT: load or build the model, freeze parts, group parameters by learning rate,
wrap in LoRA, and describe the result (the ``--dry-run`` plan uses the same functions on the meta
device).

Parts of a Qwen2.5-VL model, by parameter name:

- ``vision``: the vision tower (``model.visual.*`` except the merger), learning rate ``vision_learning_rate``;
- ``merger``: the patch merger / projector (``model.visual.merger.*``), ``merger_learning_rate``;
- ``llm``: everything else (language model, embeddings, lm_head), ``learning_rate``.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from rexomni.modeling import RexOmniSettings, build_model, preset_config, preset_settings
from rexomni.processing import make_processor
from rexomni.tokens import NEGATIVE_TOKENS, coord_tokens, prepare_tokenizer

from .config import SFTConfig

logger = logging.getLogger(__name__)
PARTS = ("vision", "merger", "llm")
# LoRA goes on the language model's projections only: the vision blocks use the same module names.
LORA_SCOPE = r".*language_model.*\.({names})$"


@dataclass
class ModelBundle:
    """The model with what training and saving need next to it."""

    model: Any
    processor: Any
    settings: RexOmniSettings
    coord_ids: list[int]
    new_token_ids: list[int] = field(default_factory=list)  # rows kept trainable under LoRA

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def part_of(name: str) -> str:
    """``vision``, ``merger`` or ``llm`` for a parameter name (plain, DDP- or PEFT-wrapped)."""
    if "visual.merger." in name:
        return "merger"
    if "visual." in name:
        return "vision"
    return "llm"


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_bf16(config: SFTConfig) -> bool:
    """``bf16: auto`` -> on where the device has it; an explicit true on a device without it is an error."""
    if config.bf16 in ("auto", None):
        return bf16_supported()
    wanted = bool(config.bf16)
    if wanted and not bf16_supported() and torch.cuda.is_available():
        raise ValueError("bf16: true, but this GPU does not support bfloat16; set bf16: false")
    return wanted


def resolve_attn(config: SFTConfig) -> str:
    if config.attn_implementation != "auto":
        return config.attn_implementation
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _load_tokenizer(config: SFTConfig):
    """The tokenizer of a from-scratch preset: ``config.tokenizer`` (a folder or hub id), else the offline one."""
    if config.tokenizer:
        from rexomni.checkpoint import load_tokenizer

        return load_tokenizer(config.tokenizer)
    from rexomni.testing import build_test_tokenizer

    return build_test_tokenizer()


def load_model(config: SFTConfig) -> ModelBundle:
    """The model to train: a random ``preset``, or a checkpoint folder / hub id loaded by
    :func:`rexomni.checkpoint.load_checkpoint` (the released Rex-Omni, a plain Qwen2.5-VL base
    given ``config.coord_codec``, or a checkpoint of this project)."""
    if config.preset:
        tokenizer = _load_tokenizer(config)
        model = build_model(config.preset, tokenizer, seed=config.seed)
        settings = preset_settings(config.preset, coord_codec=config.coord_codec)
        token_ids = prepare_tokenizer(tokenizer, settings.num_bins)
        processor = make_processor(tokenizer, settings.min_pixels, settings.max_pixels)
    else:
        from rexomni.checkpoint import load_checkpoint

        dtype = torch.bfloat16 if resolve_bf16(config) else torch.float32
        checkpoint = load_checkpoint(config.model_name_or_path, dtype=dtype, attn_implementation=resolve_attn(config),
                                     base_codec=config.coord_codec)
        model, processor, settings, token_ids = (checkpoint.model, checkpoint.processor, checkpoint.settings,
                                                 checkpoint.token_ids)
    new_ids = list(token_ids.coords) + list(token_ids.negatives.values())
    return ModelBundle(model, processor, settings, list(token_ids.coords), new_ids)


def apply_freezing(model, config: SFTConfig) -> None:
    """Switch off gradients of the frozen parts (before LoRA, which freezes the rest itself)."""
    frozen = {part for part, flag in (("vision", config.freeze_vision), ("merger", config.freeze_merger),
                                      ("llm", config.freeze_llm)) if flag}
    for name, param in model.named_parameters():
        if part_of(name) in frozen:
            param.requires_grad_(False)


def apply_lora(model, config: SFTConfig, new_token_ids: list[int]):
    """Wrap ``model`` in PEFT LoRA on the language model's projections.

    The embedding rows of the coordinate and negative tokens stay trainable (PEFT's trainable token
    indices, on lm_head too when it is not tied): a base model has never seen them. The merger
    trains fully unless frozen; training the whole vision tower under LoRA is refused (use full
    fine-tuning for that).
    """
    from peft import LoraConfig, get_peft_model

    if not config.freeze_vision:
        raise ValueError("LoRA with an unfrozen vision tower is not supported; set freeze_vision: true")
    names = "|".join(config.lora_target_modules)
    trainable_tokens = None
    if config.lora_train_new_tokens and new_token_ids:
        trainable_tokens = {"embed_tokens": sorted(new_token_ids)}
        if not getattr(model.config, "tie_word_embeddings", False):
            trainable_tokens["lm_head"] = sorted(new_token_ids)
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=LORA_SCOPE.format(names=names), task_type="CAUSAL_LM",
        modules_to_save=None if config.freeze_merger else ["merger"],
        trainable_token_indices=trainable_tokens,
    )
    return get_peft_model(model, lora)


def prepare_model(bundle: ModelBundle, config: SFTConfig):
    """Freezing, then LoRA when asked, then gradient checkpointing; returns the model to train."""
    model = bundle.model
    apply_freezing(model, config)
    if config.uses_lora:
        model = apply_lora(model, config, bundle.new_token_ids)
    if config.gradient_checkpointing:
        model.config.use_cache = False
        if config.uses_lora:
            model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
    return model


def parameter_groups(model, config: SFTConfig) -> list[dict]:
    """Optimizer groups: one per (part, decay or not) with the part's learning rate.

    Biases, norms and embeddings get no weight decay, as in transformers' default grouping.
    """
    rates = {"llm": config.learning_rate,
             "merger": config.merger_learning_rate if config.merger_learning_rate is not None else config.learning_rate,
             "vision": config.vision_learning_rate if config.vision_learning_rate is not None else config.learning_rate}
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and "embed" not in name and "norm" not in name
        groups.setdefault((part_of(name), decay), []).append(param)
    return [{"params": params, "lr": rates[part], "weight_decay": config.weight_decay if decay else 0.0,
             "name": f"{part}{'' if decay else '_no_decay'}"}
            for (part, decay), params in sorted(groups.items())]


def count_by_part(model) -> dict[str, tuple[int, int]]:
    """part -> (parameters, trainable parameters); full sizes also for ZeRO-3 partitioned parameters."""
    out = {p: [0, 0] for p in PARTS}
    for name, param in model.named_parameters():
        part, numel = part_of(name), getattr(param, "ds_numel", param.numel())
        out[part][0] += numel
        if param.requires_grad:
            out[part][1] += numel
    return {k: (v[0], v[1]) for k, v in out.items()}


# --------------------------------------------------------------------------- dry run (meta device)


def meta_model(config: SFTConfig):
    """(model on the meta device, settings, where its shape came from) without loading any weight."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    if config.preset:
        tokenizer = _load_tokenizer(config)
        model = build_model(config.preset, tokenizer, device="meta")
        rows = _grown_rows(model, len(tokenizer))
        return model, preset_settings(config.preset, coord_codec=config.coord_codec), \
            f"preset {config.preset} ({rows} vocabulary rows)"
    source = config.model_name_or_path
    try:
        from transformers import AutoConfig

        # Local folders and the hub cache only: a plan never waits on the network.
        model_config = AutoConfig.from_pretrained(source, local_files_only=True)
        origin = f"{source}/config.json"
    except (OSError, ValueError) as e:
        if not config.shape_preset:
            raise ValueError(f"cannot read the config of {source!r} ({e}); give shape_preset for a dry run") from None
        from rexomni.testing import build_base_tokenizer

        model_config = preset_config(config.shape_preset, build_base_tokenizer())
        origin = f"preset {config.shape_preset} (the config of {source} is not on this machine)"
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(model_config)
    settings = RexOmniSettings(coord_codec=config.coord_codec)
    return model, settings, origin


def _grown_rows(model, tokenizer_length: int) -> int:
    return max(model.get_input_embeddings().weight.shape[0], tokenizer_length)


def fake_new_token_ids(model, count: int = len(coord_tokens()) + len(NEGATIVE_TOKENS)) -> list[int]:
    """Stand-in ids for the token rows a dry run would keep trainable (the last ``count`` rows)."""
    rows = model.get_input_embeddings().weight.shape[0]
    return list(range(max(0, rows - count), rows))
