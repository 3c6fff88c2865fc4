"""The SFT run configuration, as TRL does it: dataclasses whose fields carry their help, read from
YAML and command-line flags by transformers' ``HfArgumentParser``.

- :class:`ModelArguments`: what model set-up reads (a checkpoint or a preset, freezing, per-part
  learning rates, LoRA); GRPO uses the same class.
- :class:`SFTConfig`: ``transformers.TrainingArguments`` with this project's defaults, plus the
  SFT fields (data, held-out scoring, losses).

One YAML file holds both; every field is also a flag and overrides it (``--max_steps 50``), and
``rexomni sft --help`` lists every field with its help and default.

    config = load_config("sft/configs/tiny.yaml", ["--max_steps", "50", "--output_dir", "runs/t"])
    config.model_args.preset   # "tiny"
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, get_args, get_type_hints

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import DataClass, DataClassType
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from rexomni.prompts import SYSTEM_PROMPT

from .cpu_deepspeed import prepare_cpu_processes

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _help(text: str, default: Any = None, **kwargs) -> Any:
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class ModelArguments:
    """The model to train and what of it trains (read by sft/model_setup.py)."""

    model_name_or_path: str | None = _help(
        "A checkpoint folder or hub id: a checkpoint of this project, the released Rex-Omni, or a plain Qwen2.5-VL "
        "base (the coordinate and negative tokens are then added). Give this or preset.")
    preset: str | None = _help("tiny, small or 3b: a model from random weights (from-scratch training). Give this or "
                               "model_name_or_path.")
    shape_preset: str | None = _help("The preset whose shapes --dry-run uses when the config of model_name_or_path is "
                                     "not on this machine (e.g. 3b).")
    tokenizer: str | None = _help("For a preset: a tokenizer folder or hub id (default: the offline test tokenizer).")
    coord_codec: str = _help("Coordinate codec of a preset or a plain Qwen2.5-VL base: center or rexomni (a "
                             "checkpoint keeps its own).", "center")
    attn_implementation: str = _help("auto: flash_attention_2 on a GPU when installed, else sdpa; or any value "
                                     "transformers takes.", "auto")
    freeze_vision: bool = _help("Freeze the vision tower (model.visual.* except the merger).", False)
    freeze_merger: bool = _help("Freeze the patch merger, the projector (model.visual.merger.*).", False)
    freeze_llm: bool = _help("Freeze the language model, its embeddings and lm_head.", False)
    vision_learning_rate: float | None = _help("Learning rate of the vision tower (null: learning_rate).", 2e-6)
    merger_learning_rate: float | None = _help("Learning rate of the merger (null: learning_rate). The language model "
                                               "trains at learning_rate.", 2e-5)
    lora_r: int = _help("> 0: LoRA adapters of this rank on the language model's projections (PEFT); needs "
                        "freeze_vision.", 0)
    lora_alpha: int = _help("LoRA alpha (the adapters are scaled by alpha / r).", 32)
    lora_dropout: float = _help("Dropout on the LoRA path.", 0.05)
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS), metadata={
        "help": "Module names that get LoRA adapters, inside the language model only (the vision blocks share "
                "the names)."})
    generation: dict = field(default_factory=dict, metadata={
        "help": "Decoding defaults saved with the trained model (its rexomni_config.json 'generation', over the "
                "loaded checkpoint's), used by held-out scoring and by whoever loads the model: e.g. "
                "{presence_threshold: 0.5} (rexomni/constrained.py)."})
    lora_train_new_tokens: bool = _help("Under LoRA, keep the embedding (and untied lm_head) rows of the coordinate "
                                        "and negative tokens trainable: a base model has never seen them.", True)

    def __post_init__(self):
        if not isinstance(self.generation or {}, dict):
            raise ValueError(f"config: generation must be a mapping of decoding settings, got {self.generation!r}")
        if self.model_name_or_path is None and self.preset is None:
            raise ValueError("config: give model_name_or_path (a checkpoint) or preset (a random model)")
        if self.model_name_or_path is not None and self.preset is not None:
            raise ValueError("config: model_name_or_path and preset exclude each other; give one")
        if self.freeze_llm and self.freeze_merger and self.freeze_vision and not self.lora_r:
            raise ValueError("config: everything is frozen and lora_r is 0; nothing would train")

    @property
    def uses_lora(self) -> bool:
        return self.lora_r > 0


def _default(name: str, default: Any, help: str | None = None) -> Any:
    """TrainingArguments' field ``name`` with this project's default (and its own help where the
    meaning here differs), so that ``--help`` shows the default a run really gets."""
    metadata = dict(TrainingArguments.__dataclass_fields__[name].metadata)
    if help:
        metadata["help"] = help
    return field(default=default, metadata=metadata)


@dataclass
class SFTConfig(TrainingArguments):
    """TrainingArguments with the released Rex-Omni SFT recipe's defaults, plus the SFT fields.

    ``model_args`` holds the :class:`ModelArguments` read from the same YAML and flags.
    """

    # ---- TrainingArguments fields whose default (or meaning) differs here
    output_dir: str | None = _default("output_dir", "runs/sft")
    max_steps: int = _default("max_steps", 1000)
    per_device_train_batch_size: int = _default("per_device_train_batch_size", 4)
    learning_rate: float = _default("learning_rate", 2e-5, "Learning rate of the language model and the new token "
                                    "rows (and of merger and vision tower when their own rate is null).")
    lr_scheduler_type: SchedulerType | str = _default("lr_scheduler_type", "cosine")
    warmup_steps: float = _default("warmup_steps", 0.03)
    weight_decay: float = _default("weight_decay", 0.01)
    seed: int = _default("seed", 0)
    bf16: bool | str = _default("bf16", "auto", "true, false or auto: on where the device supports it.")
    optim: OptimizerNames | str = _default("optim", "adamw_torch", "The optimizer. Keep adamw_torch: the trainer "
                                           "builds it over per-part parameter groups and DeepSpeed wraps it.")
    logging_steps: float = _default("logging_steps", 10)
    logging_first_step: bool = _default("logging_first_step", True)
    save_total_limit: int | None = _default("save_total_limit", 3)
    report_to: None | str | list[str] = _default("report_to", "tensorboard")
    disable_tqdm: bool | None = _default("disable_tqdm", False)
    # Batches carry pixel_values, image_grid_thw and mm_token_type_ids; none may be dropped.
    remove_unused_columns: bool = _default("remove_unused_columns", False)
    resume_from_checkpoint: str | None = _default("resume_from_checkpoint", None, "A checkpoint folder, or auto "
                                                  "(or true): the newest complete checkpoint in output_dir, a fresh "
                                                  "start when there is none.")
    eval_steps: int = _default("eval_steps", 0, "Held-out parse-and-score every N steps (0: only at the end); the "
                               "Trainer's own evaluation is not used.")

    # ---- data
    data: dict | str | None = _help(
        "Required. The mixture spec (data_engines/mixture.py): a YAML file, looked up next to the config first, or "
        "a mapping; on the command line a mapping is YAML flow text: '{seed: 0, sources: [...]}'.")
    system_prompt: str = _help("The system turn of every example: the one inference sends, so the trained model "
                               "meets it again in rexomni detect.", SYSTEM_PROMPT)
    train_examples: int | None = _help("Dataset length (default: max_steps x global batch, every example fresh).")
    cache_examples: bool = _help("Keep encoded examples in memory (small fixed data sets).", False)
    max_length: int = _help("Longer sequences are cut (the end of the answer is then lost).", 4096)
    group_by_length: bool = _help(
        "Batch examples of about one length, length_group_window batches at a time "
        "(sft/data.py LengthGroupedDataset), the loss still weighing every labelled token alike: on the synthetic "
        "stages 1.6x fewer tokens per step. Needs dataloader_num_workers 0.", False)
    length_group_window: int = _help("Batches drawn together and sorted by length under group_by_length.", 8)
    max_train_minutes: float | None = _help("Stop after this much training time; the final model is still saved.")
    stop_at_step: int | None = _help("Stop at this step and save the final model, the learning rate schedule still "
                                     "spanning max_steps: a stage the recipe stopped early, reproduced.")

    # ---- held-out scoring during training
    eval_examples: int = _help("Held-out examples (drawn with another seed) generated, parsed and scored during "
                               "training; 0: none.", 32)
    eval_batch_size: int = _help("Batch size of the held-out generation.", 16)
    eval_max_new_tokens: int = _help("Longest held-out answer generated, in tokens.", 64)

    # ---- losses
    soft_label_sigma: float = _help("> 0: Gaussian soft labels over the coordinate bins, sigma in bins (off by "
                                    "default: it hurt the from-scratch runs, docs/training.md).", 0.0)
    soft_label_weight: float = _help("Share of the soft-label term at coordinate positions, in [0, 1]; the rest is "
                                     "the one-hot target.", 1.0)
    extra_loss: str | None = _help("package.module:function adding a loss, called as fn(model=, inputs=, outputs=, "
                                   "labels=) and returning a tensor or (tensor, {name: float}) (the dict is logged).")
    negative_hinge_weight: float = _help("> 0: add the negative hinge loss (NNH, docs/negatives.md) with this weight: "
                                         "a ground-truth box must be eta nats per coordinate token more likely under "
                                         "its phrase than under each negative phrase of its prompt. 0: off.", 0.0)
    negative_hinge_eta: float = _help("The hinge's margin eta, in nats per coordinate token.", 0.3)
    negative_hinge_max_negatives: int = _help("Negative phrases an example's box is scored under, at most.", 4)
    naming_loss_weight: float = _help("> 0: keep the recognition warm-up's objective on with this weight "
                                      "(sft/recognition.py NamingLoss): each step also draws naming_batch_size "
                                      "synthetic scenes, and the image token at each shape's centre must name its "
                                      "attributes by the language model's own word embeddings. 0: off.", 0.0)
    naming_batch_size: int = _help("Scenes drawn per step for the naming loss.", 8)
    naming_attributes: list[str] = field(default_factory=lambda: ["kind", "color"], metadata={
        "help": "What the token at each shape's centre names under the naming loss: any of kind, color, size."})
    naming_scenes: dict = field(default_factory=lambda: dict(
        mode="single", size=224, sizes=["medium", "large"], num_objects=[1, 4], distractors=True), metadata={
        "help": "generate_scene options of the naming loss's scenes (mode single or shapes)."})
    search_loss_weight: float = _help("> 0: add the search loss (sft/search.py) with this weight: each step also asks "
                                      "search_batch_size fresh scenes one of search_tasks, and at each box's "
                                      "<|box_start|> the attention of search_layers must fall on the image tokens "
                                      "of its phrase's shapes. 0: off.", 0.0)
    search_batch_size: int = _help("Scenes drawn per step for the search loss.", 8)
    search_layers: list[int] = field(default_factory=lambda: [1, 2], metadata={
        "help": "Language-model layers whose attention (mean over heads) the search loss trains; negative "
                "indices count from the last. Default: the default model's (docs/recipe.md, runs 56-59; its "
                "last layer's attention barely looks at shapes)."})
    search_tasks: list[str] = field(default_factory=lambda: ["referring"], metadata={
        "help": "What the search loss asks, one drawn per scene: referring (a shape with a look-alike in the scene "
                "whenever it has one), grounding, pointing (category lists in reading order: every box is a query)."})
    search_scenes: dict = field(default_factory=lambda: dict(
        mode="single", size=224, sizes=["medium", "large"], num_objects=[1, 4], distractors=True), metadata={
        "help": "generate_scene options of the search loss's scenes (mode single or shapes)."})

    model_args: ModelArguments | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if isinstance(self.data, str) and self.data.lstrip().startswith("{"):
            self.data = yaml.safe_load(self.data)  # a mapping given on the command line
        if self.data is None:
            raise ValueError("config: 'data' (a mixture spec path or mapping) is required")
        for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if self.soft_label_sigma < 0 or not 0 <= self.soft_label_weight <= 1:
            raise ValueError("config: need soft_label_sigma >= 0 and 0 <= soft_label_weight <= 1")
        if isinstance(self.naming_scenes, str):
            self.naming_scenes = yaml.safe_load(self.naming_scenes)
        if isinstance(self.search_scenes, str):
            self.search_scenes = yaml.safe_load(self.search_scenes)
        if self.group_by_length and (self.dataloader_num_workers or self.length_group_window < 1):
            raise ValueError("config: group_by_length needs dataloader_num_workers 0 (a worker would encode a whole "
                             "window for each batch it loads) and length_group_window >= 1")
        if self.naming_loss_weight < 0 or self.naming_batch_size < 1:
            raise ValueError("config: need naming_loss_weight >= 0 and naming_batch_size >= 1")
        if self.search_loss_weight < 0 or self.search_batch_size < 1:
            raise ValueError("config: need search_loss_weight >= 0 and search_batch_size >= 1")
        if self.negative_hinge_weight < 0 or self.negative_hinge_eta < 0 or self.negative_hinge_max_negatives < 1:
            raise ValueError("config: need negative_hinge_weight >= 0, negative_hinge_eta >= 0 and "
                             "negative_hinge_max_negatives >= 1")
        self.bf16 = resolve_bf16(self.bf16)
        prepare_cpu_processes(self)  # before TrainingArguments sets up the devices
        super().__post_init__()


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_bf16(value: bool | str) -> bool:
    """``auto`` -> on where the device has it; an explicit true on a GPU without it is an error."""
    if value == "auto":
        return bf16_supported()
    if not isinstance(value, bool):
        raise ValueError(f"config: bf16 must be true, false or auto, got {value!r}")
    if value and torch.cuda.is_available() and not bf16_supported():
        raise ValueError("bf16: true, but this GPU does not support bfloat16; set bf16: false")
    return value


# --------------------------------------------------------------------------- parsing


class ConfigParser(HfArgumentParser):
    """transformers' ``HfArgumentParser`` with a YAML config, as TRL's ``TrlParser`` has it: the
    file's values replace the fields' defaults and flags override both. Beyond that: unknown keys
    and flags are errors that name them (a ``ValueError``, never an exit), ``null`` on the command
    line sets an optional field to None, a field that also takes a string keeps text its type cannot
    read (``--bf16 auto``), and relative paths in ``path_fields`` are looked up next to the YAML
    first."""

    def __init__(self, dataclass_types: list[DataClassType], path_fields: tuple[str, ...] = (), **kwargs):
        super().__init__(dataclass_types, allow_abbrev=False, **kwargs)
        self.path_fields = path_fields
        self.add_argument("--config", metavar="YAML", help="A YAML file of field values; flags override them.")
        hints = {name: hint for dtype in self.dataclass_types for name, hint in get_type_hints(dtype).items()}
        for action in self._actions:
            if action.type is not None and action.dest in hints:
                action.type = _from_text(action.type, hints[action.dest])

    def _add_dataclass_arguments(self, dtype: DataClassType) -> None:
        """One argument group per class that declares fields, the most derived first: the fields this
        project adds or gives its own default come before the rest of TrainingArguments."""
        hints = get_type_hints(dtype)
        by_owner: dict[type, list[dataclasses.Field]] = {}
        for f in dataclasses.fields(dtype):
            if f.init:
                owner = next(c for c in dtype.__mro__ if f.name in c.__dict__.get("__annotations__", {}))
                by_owner.setdefault(owner, []).append(f)
        for owner in sorted(by_owner, key=dtype.__mro__.index):
            group = self.add_argument_group(owner.__name__, " ".join(owner.__doc__.split("\n\n")[0].split()))
            for f in by_owner[owner]:
                f.type = hints[f.name]
                self._parse_dataclass_field(group, f)

    def error(self, message: str):
        raise ValueError(message)

    def parse_config(self, argv: list[str], values: dict | None = None) -> tuple[list[DataClass], argparse.Namespace]:
        """(one instance per dataclass, the other arguments) from the YAML of ``--config``, then
        ``values`` (a dict, as in YAML), then the flags in ``argv``."""
        path = _config_path(argv)
        base_dir = os.path.dirname(os.path.abspath(path)) if path else "."
        self._set_values(read_yaml(path) if path else {}, path)
        self._set_values(values or {}, "overrides")
        namespace, unknown = self.parse_known_args(argv)
        if unknown:
            raise ValueError(f"unknown option {' '.join(unknown)}; `{self.prog} --help` lists the fields")
        for name in self.path_fields:
            if isinstance(getattr(namespace, name, None), str):
                setattr(namespace, name, resolve_path(getattr(namespace, name), base_dir))
        outputs = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            outputs.append(dtype(**{name: vars(namespace).pop(name) for name in names}))
        return outputs, namespace

    def _set_values(self, values: dict, source: str) -> None:
        unknown = sorted(set(values) - {action.dest for action in self._actions})
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; `{self.prog} --help` lists the fields")
        self.set_defaults(**values)


def _config_path(argv: list[str]) -> str | None:
    finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    finder.add_argument("--config")
    return finder.parse_known_args(argv)[0].config


def _yaml_mapping(text: str) -> dict:
    """A mapping field's flag: YAML flow text, ``--naming_scenes '{mode: single, size: 224}'``."""
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a mapping (YAML flow text such as '{{key: value}}'): {text!r}")
    return value


def _from_text(convert, hint):
    """``convert`` (the type HfArgumentParser chose for a field) extended to YAML's ``null`` for an
    optional field, to the text itself for a field that also takes a string (bf16: auto), and to YAML
    flow text for a mapping."""
    nullable, textual = type(None) in get_args(hint), str in get_args(hint)
    if convert is dict:
        convert = _yaml_mapping

    def parse(text: str):
        if nullable and text.strip().lower() in ("null", "~"):
            return None
        try:
            return convert(text)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            if textual:
                return text
            raise

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names it in "invalid <type> value"
    return parse


def read_yaml(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


def resolve_path(value: str, base_dir: str) -> str:
    """``value`` next to the config file if it exists there, else as given (cwd-relative or absolute)."""
    if os.path.isabs(value):
        return value
    candidates = [os.path.join(base_dir, value), os.path.join(base_dir, os.path.basename(value)), value]
    return next((c for c in candidates if os.path.exists(c)), value)


def sft_parser() -> ConfigParser:
    return ConfigParser([ModelArguments, SFTConfig], path_fields=("data", "deepspeed"), prog="rexomni sft",
                        usage="rexomni sft --config CONFIG.yaml [--dry-run] [--FIELD VALUE ...]",
                        description="Supervised fine-tuning. Every field below is a key of the YAML config and a "
                                    "flag that overrides it (docs/training.md).")


def parse_args(parser: ConfigParser, argv: list[str], values: dict | None = None) -> tuple[Any, Any]:
    """(the run config, with its ``model_args``; the other arguments) as ``parser`` reads them. SFT's and
    GRPO's parsers both read ``[ModelArguments, <their config>]``."""
    (model_args, config), rest = parser.parse_config(argv, values)
    config.model_args = model_args
    return config, rest


def read_config(parser: ConfigParser, path: str | None, overrides: list[str] | dict[str, Any] | None = None):
    """Read ``path`` (YAML), then ``overrides``: flags (a list, as on the command line) or values
    (a dict, as in YAML)."""
    argv = (["--config", path] if path else []) + (overrides if isinstance(overrides, list) else [])
    return parse_args(parser, argv, overrides if isinstance(overrides, dict) else None)[0]


def load_config(path: str | None, overrides: list[str] | dict[str, Any] | None = None) -> SFTConfig:
    """An :class:`SFTConfig` from a YAML file and overrides (see :func:`read_config`)."""
    return read_config(sft_parser(), path, overrides)
