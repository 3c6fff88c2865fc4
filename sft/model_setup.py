"""Model set-up for SFT: load or build the model, freeze parts, group parameters by learning rate,
wrap in LoRA, and describe the result (the ``--dry-run`` plan uses the same functions on the meta
device). Everything here reads :class:`~rexomni.sft.config.ModelArguments` (shared with GRPO), never
the SFT training config.

Parts of a Qwen2.5-VL model, by parameter name:

- ``vision``: the vision tower (``model.visual.*`` except the merger), learning rate ``vision_learning_rate``;
- ``merger``: the patch merger / projector (``model.visual.merger.*``), ``merger_learning_rate``;
- ``llm``: everything else (language model, embeddings, lm_head), ``learning_rate``.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from rexomni.modeling import RexOmniSettings, build_model, preset_config, preset_settings
from rexomni.processing import make_processor
from rexomni.tokens import NEGATIVE_TOKENS, coord_tokens, prepare_tokenizer

from .config import ModelArguments

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


def resolve_attn(args: ModelArguments) -> str:
    if args.attn_implementation != "auto":
        return args.attn_implementation
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _load_tokenizer(args: ModelArguments):
    """The tokenizer of a from-scratch preset: ``args.tokenizer`` (a folder or hub id), else the offline one."""
    if args.tokenizer:
        from rexomni.checkpoint import load_tokenizer

        return load_tokenizer(args.tokenizer)
    from rexomni.offline_tokenizer import build_test_tokenizer

    return build_test_tokenizer()


def load_model(args: ModelArguments, *, seed: int = 0, bf16: bool = False) -> ModelBundle:
    """The model to train: a random ``preset`` (initialised from ``seed``), or a checkpoint folder /
    hub id loaded by :func:`rexomni.checkpoint.load_checkpoint` in bfloat16 when ``bf16`` (the
    released Rex-Omni, a plain Qwen2.5-VL base given ``args.coord_codec``, or a checkpoint of this
    project)."""
    if args.preset:
        tokenizer = _load_tokenizer(args)
        model = build_model(args.preset, tokenizer, seed=seed)
        settings = preset_settings(args.preset, coord_codec=args.coord_codec)
        token_ids = prepare_tokenizer(tokenizer, settings.num_bins)
        processor = make_processor(tokenizer, settings.min_pixels, settings.max_pixels)
    else:
        from rexomni.checkpoint import load_checkpoint

        dtype = torch.bfloat16 if bf16 else torch.float32
        checkpoint = load_checkpoint(args.model_name_or_path, dtype=dtype, attn_implementation=resolve_attn(args),
                                     base_codec=args.coord_codec)
        model, processor, settings, token_ids = (checkpoint.model, checkpoint.processor, checkpoint.settings,
                                                 checkpoint.token_ids)
    if args.generation:
        settings = replace(settings, generation={**settings.generation, **args.generation})
    new_ids = list(token_ids.coords) + list(token_ids.negatives.values())
    return ModelBundle(model, processor, settings, list(token_ids.coords), new_ids)


def apply_freezing(model, args: ModelArguments) -> None:
    """Switch off gradients of the frozen parts (before LoRA, which freezes the rest itself)."""
    frozen = {part for part, flag in (("vision", args.freeze_vision), ("merger", args.freeze_merger),
                                      ("llm", args.freeze_llm)) if flag}
    for name, param in model.named_parameters():
        if part_of(name) in frozen:
            param.requires_grad_(False)


def apply_lora(model, args: ModelArguments, new_token_ids: list[int]):
    """Wrap ``model`` in PEFT LoRA on the language model's projections.

    The embedding rows of the coordinate and negative tokens stay trainable (PEFT's trainable token
    indices, on lm_head too when it is not tied): a base model has never seen them. The merger
    trains fully unless frozen; training the whole vision tower under LoRA is refused (use full
    fine-tuning for that).
    """
    from peft import LoraConfig, get_peft_model

    if not args.freeze_vision:
        raise ValueError("LoRA with an unfrozen vision tower is not supported; set freeze_vision: true")
    names = "|".join(args.lora_target_modules)
    trainable_tokens = None
    if args.lora_train_new_tokens and new_token_ids:
        trainable_tokens = {"embed_tokens": sorted(new_token_ids)}
        if not getattr(model.config, "tie_word_embeddings", False):
            trainable_tokens["lm_head"] = sorted(new_token_ids)
    lora = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=LORA_SCOPE.format(names=names), task_type="CAUSAL_LM",
        modules_to_save=None if args.freeze_merger else ["merger"],
        trainable_token_indices=trainable_tokens,
    )
    return get_peft_model(model, lora)


def prepare_model(bundle: ModelBundle, args: ModelArguments, activation_checkpointing: bool = False):
    """Freezing, then LoRA when asked, then what activation checkpointing needs; returns the model to
    train (the Trainer switches the checkpointing itself on)."""
    model = bundle.model
    apply_freezing(model, args)
    if args.uses_lora:
        model = apply_lora(model, args, bundle.new_token_ids)
    if activation_checkpointing:
        model.config.use_cache = False
        if args.uses_lora:
            model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
    return model


def parameter_groups(model, args: ModelArguments, learning_rate: float, weight_decay: float) -> list[dict]:
    """Optimizer groups: one per (part, decay or not) with the part's learning rate (``learning_rate``
    for the language model, and for merger and vision when theirs is None).

    Biases, norms and embeddings get no weight decay, as in transformers' default grouping.
    """
    rates = {"llm": learning_rate,
             "merger": args.merger_learning_rate if args.merger_learning_rate is not None else learning_rate,
             "vision": args.vision_learning_rate if args.vision_learning_rate is not None else learning_rate}
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and "embed" not in name and "norm" not in name
        groups.setdefault((part_of(name), decay), []).append(param)
    return [{"params": params, "lr": rates[part], "weight_decay": weight_decay if decay else 0.0,
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


def meta_model(args: ModelArguments):
    """(model on the meta device, settings, where its shape came from) without loading any weight."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    if args.preset:
        tokenizer = _load_tokenizer(args)
        model = build_model(args.preset, tokenizer, device="meta")
        rows = _grown_rows(model, len(tokenizer))
        return model, preset_settings(args.preset, coord_codec=args.coord_codec), \
            f"preset {args.preset} ({rows} vocabulary rows)"
    from rexomni.checkpoint import DEFAULT_MODEL, DEFAULT_MODEL_DIR

    source = DEFAULT_MODEL_DIR if args.model_name_or_path == DEFAULT_MODEL else args.model_name_or_path
    try:
        from transformers import AutoConfig

        # Local folders and the hub cache only: a plan never waits on the network.
        model_config = AutoConfig.from_pretrained(source, local_files_only=True)
        origin = f"{source}/config.json"
    except (OSError, ValueError) as e:
        if not args.shape_preset:
            raise ValueError(f"cannot read the config of {source!r} ({e}); give shape_preset for a dry run") from None
        from rexomni.offline_tokenizer import build_base_tokenizer

        model_config = preset_config(args.shape_preset, build_base_tokenizer())
        origin = f"preset {args.shape_preset} (the config of {source} is not on this machine)"
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(model_config)
    settings = RexOmniSettings(coord_codec=args.coord_codec)
    return model, settings, origin


def _grown_rows(model, tokenizer_length: int) -> int:
    return max(model.get_input_embeddings().weight.shape[0], tokenizer_length)


def fake_new_token_ids(model, count: int = len(coord_tokens()) + len(NEGATIVE_TOKENS)) -> list[int]:
    """Stand-in ids for the token rows a dry run would keep trainable (the last ``count`` rows)."""
    rows = model.get_input_embeddings().weight.shape[0]
    return list(range(max(0, rows - count), rows))
