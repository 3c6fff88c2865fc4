"""The GRPO run configuration: TRL's ``GRPOConfig`` with this project's defaults and fields, read from YAML and
flags by the same parser as SFT (:class:`rexomni.sft.config.ConfigParser`).

- :class:`~rexomni.sft.config.ModelArguments` (shared with SFT): the model to start from, freezing, per-part
  learning rates, LoRA.
- :class:`GRPOConfig`: ``trl.GRPOConfig`` (every TrainingArguments and GRPO field is a key: ``num_generations``,
  ``temperature``, ``top_p``, ``beta``, ``loss_type``, ``max_completion_length``, ``use_vllm``, ...) with the
  released recipe's defaults where they differ, plus the fields of this project: ``data``, ``reward_weights`` as a
  name -> weight mapping, ``reward_options``, ``constrained``, image limits, held-out scoring.

    config = load_config("grpo/configs/tiny.yaml", ["--model_name_or_path", "runs/tiny", "--max_steps", "5"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trl
import yaml
from rexomni.sft.config import ConfigParser, ModelArguments, read_config, resolve_bf16
from rexomni.sft.cpu_deepspeed import prepare_cpu_processes
from transformers.trainer_utils import SchedulerType

# The rewards a run optimises when the config names none: geometry and form. `duplicates` and `full_image` are
# logged at weight 0 (their means are the duplicate rate and the image-covering share, negated). `confidence`
# is left out: it reads the rollout's log-probabilities, which only the transformers rollouts record (not vLLM).
DEFAULT_REWARDS = {"box": 1.0, "point": 1.0, "absent": 0.5, "format": 0.2, "negatives": 0.5, "truncation": 0.5,
                   "duplicates": 0.0, "full_image": 0.0}


def _help(text: str, default: Any = None, **kwargs) -> Any:
    return field(default=default, metadata={"help": text}, **kwargs)


def _default(name: str, default: Any, help: str | None = None) -> Any:
    """trl.GRPOConfig's field ``name`` with this project's default (and its own help where the meaning differs)."""
    metadata = dict(trl.GRPOConfig.__dataclass_fields__[name].metadata)
    if help:
        metadata["help"] = help
    return field(default=default, metadata=metadata)


@dataclass
class GRPOConfig(trl.GRPOConfig):
    """TRL's GRPOConfig with the released Rex-Omni GRPO recipe's defaults, plus the fields of this project.

    ``model_args`` holds the :class:`ModelArguments` read from the same YAML and flags.
    """

    # ---- trl.GRPOConfig / TrainingArguments fields whose default (or meaning) differs here
    output_dir: str | None = _default("output_dir", "runs/grpo")
    max_steps: int = _default("max_steps", 1000)
    per_device_train_batch_size: int = _default("per_device_train_batch_size", 8, "Completions per device per "
                                                "step (not prompts): a multiple of num_generations over all devices.")
    learning_rate: float = _default("learning_rate", 1e-6, "Learning rate of the language model (and of merger and "
                                    "vision tower when their own rate is null); the released recipe's 1e-6.")
    beta: float = _default("beta", 0.01, "KL coefficient against the starting model (the released recipe: 0.01; "
                           "0 loads no reference model).")
    num_generations: int | None = _default("num_generations", 8, "Group size: completions sampled per prompt.")
    temperature: float = _default("temperature", 1.0)
    top_p: float = _default("top_p", 0.99)
    max_completion_length: int | None = _default("max_completion_length", 512, "Longest completion in tokens; an "
                                                 "answer cut there gets the truncation penalty.")
    lr_scheduler_type: SchedulerType | str = _default("lr_scheduler_type", "constant")
    seed: int = _default("seed", 0)
    bf16: bool | str = _default("bf16", "auto", "true, false or auto: on where the device supports it.")
    gradient_checkpointing: bool = _default("gradient_checkpointing", False, "Activation checkpointing of the "
                                            "policy (TRL's default is on; the tiny CPU runs do not need it).")
    logging_steps: float = _default("logging_steps", 10)
    logging_first_step: bool = _default("logging_first_step", True)
    save_total_limit: int | None = _default("save_total_limit", 3)
    report_to: None | str | list[str] = _default("report_to", "tensorboard")
    disable_tqdm: bool | None = _default("disable_tqdm", False)
    reward_weights: dict | str | None = _help(
        "Rewards by name (grpo/rewards.py: box, absent, point, keypoint, format, duplicates, full_image, "
        "truncation, negatives, confidence) -> weight; each one's mean is logged as rewards/<function>/mean, "
        "weight 0 included. On the command line YAML flow text: '{box: 1.0, format: 0.2}'.",
        None)
    resume_from_checkpoint: str | None = _default("resume_from_checkpoint", None, "A checkpoint folder, or auto "
                                                  "(or true): the newest complete checkpoint in output_dir, a fresh "
                                                  "start when there is none.")

    # ---- data
    data: dict | str | None = _help(
        "Required. The mixture spec (data_engines/mixture.py) the prompts are drawn from: a YAML file, looked up "
        "next to the config first, or a mapping. Its answers are not used, only prompts, images and ground truth.")
    train_examples: int | None = _help("Distinct prompts (default: max_steps x prompts per step, every one fresh).")
    min_pixels: int | None = _help("Smallest image area after resizing, in pixels (null: the checkpoint's).")
    max_pixels: int | None = _help("Largest image area after resizing, in pixels (null: the checkpoint's). Saved with "
                                   "the model, so RexOmni.predict resizes as the rollouts did.")

    # ---- rewards and rollouts
    reward_options: dict | str | None = _help(
        "Options of the rewards (build_rewards): iou_threshold, iou_weight, giou_shaping, duplicate_iou, max_cover, "
        "... ; max_completion_length goes to the truncation penalty by itself.")
    constrained: bool = _help("Transformers rollouts: decode under the answer grammar (rexomni.constrained), the "
                              "asked phrases only. With use_vllm the grammar is vllm_structured_outputs_regex instead "
                              "(filled from rexomni.grammar.answer_regex when null).", True)
    max_boxes: int | None = _help("Constrained rollouts: at most this many items per answer (null: no cap).")

    # ---- held-out scoring during training (sft/heldout.py)
    eval_examples: int = _help("Held-out scenes per scored task, asked through RexOmni.predict and scored as rexomni "
                               "eval scores them, every eval_steps and at the end; 0: none.", 0)
    eval_steps: int = _default("eval_steps", 0, "Held-out scoring every N steps (0: only at the end).")
    eval_batch_size: int = _help("Batch size of the held-out generation.", 16)
    eval_max_new_tokens: int = _help("Longest held-out answer generated, in tokens.", 64)

    model_args: ModelArguments | None = field(default=None, init=False, repr=False)
    reward_names: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        self.data = _mapping(self.data)
        if self.data is None:
            raise ValueError("config: 'data' (a mixture spec path or mapping) is required")
        weights = _mapping(self.reward_weights) or dict(DEFAULT_REWARDS)
        if not isinstance(weights, dict):
            raise ValueError(f"config: reward_weights must map reward names to weights, got {weights!r}")
        # trl.GRPOTrainer reads reward_weights as a list in the order of its reward functions: keep the names apart.
        self.reward_names, self.reward_weights = list(weights), [float(w) for w in weights.values()]
        self.reward_options = _mapping(self.reward_options) or {}
        if self.use_vllm:
            self._check_vllm_rollouts()
        self.bf16 = resolve_bf16(self.bf16)
        prepare_cpu_processes(self)  # before TrainingArguments sets up the devices
        super().__post_init__()

    def _check_vllm_rollouts(self) -> None:
        """vLLM rollouts take one grammar regex for every prompt (boxes under any phrase text) and hand the
        rewards no log-probabilities: refuse the configurations in which that would silently do the wrong thing."""
        if self.rewards.get("confidence"):
            raise ValueError("config: the confidence reward needs the rollouts' log-probabilities, which vLLM "
                             "rollouts do not pass; set its weight to 0 or use_vllm: false")
        if not self.constrained or self.vllm_structured_outputs_regex is not None:
            return
        others = sorted(_answer_items(self.data) - {"box"})
        if others:
            raise ValueError(f"config: the mixture also trains tasks answered with {others}, but vLLM rollouts take "
                             "one grammar regex for every prompt (boxes); set constrained: false, or train box "
                             "tasks only")
        from rexomni.grammar import answer_regex

        self.vllm_structured_outputs_regex = answer_regex(None, "box", self.max_boxes)

    @property
    def rewards(self) -> dict[str, float]:
        """reward name -> weight, as the config gave them (what build_rewards takes)."""
        return dict(zip(self.reward_names, self.reward_weights))


def _answer_items(data) -> set[str]:
    """The item kinds (box, point, ...) that the tasks of a mixture spec (mapping or YAML path) answer with."""
    from rexomni.tasks import get_task

    if isinstance(data, str):
        with open(data, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    return {get_task(task).item for source in data.get("sources", []) for task, weight in
            (source.get("tasks") or {}).items() if weight}


def _mapping(value):
    """A mapping given on the command line (YAML flow text) -> dict; anything else as it is."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        return yaml.safe_load(value)
    return value


def grpo_parser() -> ConfigParser:
    return ConfigParser([ModelArguments, GRPOConfig], path_fields=("data", "deepspeed"), prog="rexomni grpo",
                        usage="rexomni grpo --config CONFIG.yaml [--dry-run] [--FIELD VALUE ...]",
                        description="GRPO from an SFT checkpoint. Every field below is a key of the YAML config and "
                                    "a flag that overrides it (docs/grpo.md).")


def load_config(path: str | None, overrides: list[str] | dict[str, Any] | None = None) -> GRPOConfig:
    """A :class:`GRPOConfig` from a YAML file and overrides (see :func:`rexomni.sft.config.read_config`)."""
    return read_config(grpo_parser(), path, overrides)
