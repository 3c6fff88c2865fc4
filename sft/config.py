"""The SFT run configuration: one flat dataclass, read from YAML, overridden from the command line.

    config = load_config("sft/configs/tiny.yaml", ["--max_steps", "50", "--output_dir", "runs/t"])

Every field is also a command-line flag of ``rexomni sft`` (``--max_steps 50``, ``--freeze_vision
true``, ``--lora_r 16``). Field names follow ``transformers.TrainingArguments`` where the concept
is the same, so the YAML reads like a Trainer recipe.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

import yaml

from rexomni.prompts import SYSTEM_PROMPT


@dataclass
class SFTConfig:
    """Everything one SFT run needs. Defaults follow the released Rex-Omni SFT recipe."""

    # ---- model: either a checkpoint folder / hub id, or a preset built from random weights
    model_name_or_path: str | None = None
    preset: str | None = None            # tiny | small | 3b: a random model (from-scratch training)
    shape_preset: str | None = None      # shapes for --dry-run when the model's config is not on disk
    tokenizer: str | None = None         # for presets; default the offline test tokenizer
    coord_codec: str = "center"          # for presets and plain Qwen2.5-VL bases (a checkpoint keeps its own)
    attn_implementation: str = "auto"    # auto: flash_attention_2 on a GPU when installed, else sdpa
    system_prompt: str = SYSTEM_PROMPT   # the system turn the trained model will see at inference

    # ---- data: a mixture spec (path or inline mapping, see data_engines/mixture.py)
    data: Any = None
    train_examples: int | None = None    # dataset length; default max_steps x global batch (all fresh)
    eval_examples: int = 32              # held-out examples (a different seed) scored during training
    eval_steps: int = 0                  # parse-and-score every N steps (0: only at the end)
    eval_batch_size: int = 16
    eval_max_new_tokens: int = 64
    max_length: int = 4096               # longer sequences are cut (the answer's end is then lost)
    cache_examples: bool = False         # keep encoded examples in memory (small fixed data sets)

    # ---- optimisation
    output_dir: str = "runs/sft"
    max_steps: int = 1000
    max_train_minutes: float | None = None  # stop (and save) after this much training time
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5          # language model (and new token rows)
    merger_learning_rate: float | None = 2e-5
    vision_learning_rate: float | None = 2e-6
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    bf16: Any = "auto"                   # auto: on where the device supports it
    gradient_checkpointing: bool = False
    deepspeed: str | None = None         # path to a DeepSpeed JSON (sft/configs/ds_zero2.json)
    dataloader_num_workers: int = 0

    # ---- what trains
    freeze_vision: bool = False
    freeze_merger: bool = False
    freeze_llm: bool = False
    lora_r: int = 0                      # > 0: LoRA adapters on the language model (PEFT)
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                    "gate_proj", "up_proj", "down_proj"])
    lora_train_new_tokens: bool = True   # embedding (and lm_head) rows of added tokens stay trainable

    # ---- losses
    soft_label_sigma: float = 0.0        # > 0: Gaussian soft labels over coordinate bins (sigma in bins)
    soft_label_weight: float = 1.0       # share of the soft-label term on coordinate positions
    extra_loss: str | None = None        # "package.module:function" adding a sequence-level loss

    # ---- logging and checkpoints
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 3
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    resume_from_checkpoint: Any = None   # a folder, or true: the last checkpoint in output_dir
    progress: bool = True

    def __post_init__(self):
        if self.model_name_or_path is None and self.preset is None:
            raise ValueError("config: give model_name_or_path (a checkpoint) or preset (a random model)")
        if self.model_name_or_path is not None and self.preset is not None:
            raise ValueError("config: model_name_or_path and preset exclude each other; give one")
        if self.data is None:
            raise ValueError("config: 'data' (a mixture spec path or mapping) is required")
        for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if self.soft_label_sigma < 0 or not 0 <= self.soft_label_weight <= 1:
            raise ValueError("config: need soft_label_sigma >= 0 and 0 <= soft_label_weight <= 1")
        if self.freeze_llm and self.freeze_merger and self.freeze_vision and not self.lora_r:
            raise ValueError("config: everything is frozen and lora_r is 0; nothing would train")
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to in ("none", "") else [self.report_to]

    @property
    def uses_lora(self) -> bool:
        return self.lora_r > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_types() -> dict[str, Any]:
    return get_type_hints(SFTConfig)


def _parse_value(name: str, text: str) -> Any:
    """A command-line string -> the field's type (YAML syntax: ``true``, ``1e-3``, ``[a, b]``, ``null``)."""
    value = _coerce(name, yaml.safe_load(text))
    if str(_field_types()[name]).startswith("str") and not isinstance(value, str) and value is not None:
        return str(text)
    return value


def _coerce(name: str, value: Any) -> Any:
    """Numbers for float fields: YAML reads ``1e-4`` (no dot) as a string, and ints stay ints."""
    hint = str(_field_types()[name])
    if "float" in hint and value is not None and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"config: {name} must be a number, got {value!r}") from None
    return value


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """``["--max_steps", "5", "--bf16=false"]`` -> ``{"max_steps": 5, "bf16": False}``; unknown flags raise."""
    known = {f.name for f in fields(SFTConfig)}
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; overrides look like --name value")
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if name not in known:
            raise ValueError(f"unknown option --{name}; config fields are: {', '.join(sorted(known))}")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                value = "true"  # a bare flag switches a boolean on
            else:
                i += 1
                value = argv[i]
        out[name] = _parse_value(name, value)
        i += 1
    return out


def load_config(path: str | None, overrides: list[str] | dict[str, Any] | None = None) -> SFTConfig:
    """Read ``path`` (YAML) and apply ``overrides`` (argv-style list or dict).

    A relative ``data`` or ``deepspeed`` path is looked up next to the YAML file first, then from
    the current folder, so shipped configs work from anywhere.
    """
    data: dict[str, Any] = {}
    base_dir = "."
    if path is not None:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: an SFT config must be a YAML mapping, got {type(data).__name__}")
        base_dir = os.path.dirname(os.path.abspath(path))
    known = {f.name for f in fields(SFTConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; see sft/config.py for the fields")
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    data.update(overrides or {})
    data = {key: _coerce(key, value) for key, value in data.items()}
    for key in ("data", "deepspeed"):
        if isinstance(data.get(key), str):
            data[key] = resolve_path(data[key], base_dir)
    return SFTConfig(**data)


def resolve_path(value: str, base_dir: str) -> str:
    """``value`` next to the config file if it exists there, else as given (cwd-relative or absolute)."""
    if os.path.isabs(value):
        return value
    candidates = [os.path.join(base_dir, value), os.path.join(base_dir, os.path.basename(value)), value]
    return next((c for c in candidates if os.path.exists(c)), value)
