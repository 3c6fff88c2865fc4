"""The SFT training entry: transformers' Trainer with the project's data, losses and model set-up.

Why transformers' ``Trainer`` and not TRL's ``SFTTrainer`` (docs/training.md has the long form):
the parts SFTTrainer adds (dataset formatting by the processor, packing, completion-only masks,
its own VLM collator) are exactly the parts this project replaces: examples come tokenized and
masked from :mod:`rexomni.sft.data` by a hand-built pipeline (faster than the per-sample processor
call SFTTrainer makes), the loss is our own (coordinate soft labels, extra-loss hook), and the
optimizer has per-part learning rates. What remains is the Trainer: DeepSpeed, DDP, checkpoints,
exact resume, logging, and that is what is used.

    from rexomni.sft.config import load_config
    from rexomni.sft.trainer import run_sft
    run_sft(load_config("sft/configs/tiny.yaml", ["--max_steps", "20"]))

The configuration is the Trainer's ``args`` (``SFTConfig`` derives from ``TrainingArguments``); what
DeepSpeed and DDP need on machines without CUDA is in :mod:`rexomni.sft.cpu_deepspeed`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback

from rexomni.modeling import save_checkpoint
from rexomni.tokens import VISION_END

from .config import SFTConfig
from .data import ExampleEncoder, LengthGroupedDataset, MixtureDataset, SFTCollator
from .heldout import evaluate_heldout, heldout_sets
from .losses import HINGE_KEYS, CausalLMLoss, NegativeHingeLoss, load_extra_loss, predicting_positions
from .model_setup import ModelBundle, count_by_part, load_model, parameter_groups, prepare_model

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- trainer


class RexOmniTrainerMixin:
    """What every trainer of this project adds to its transformers/TRL base (``bundle`` is the
    :class:`ModelBundle`): AdamW (torch) over one parameter group per model part (DeepSpeed then wraps
    it instead of compiling its own), resume of full-model weights through ``from_pretrained``, and the
    rexomni settings saved next to every checkpoint so ``RexOmni.from_pretrained`` loads it."""

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = parameter_groups(self.model, self.args.model_args, self.args.learning_rate, self.args.weight_decay)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None):
        """Load full-model checkpoint weights through ``from_pretrained``.

        transformers 5.23 saves Qwen2.5-VL in the original key layout (``model.layers.*``,
        ``visual.*``) but the Trainer's resume loads the file with a plain ``load_state_dict``, which
        matches only ``lm_head`` and silently leaves every other weight as it was. ``from_pretrained``
        undoes the renaming. Adapters (PEFT) and DeepSpeed checkpoints keep the Trainer's own path.
        """
        model = model if model is not None else self.model
        has_full_weights = any(os.path.isfile(os.path.join(resume_from_checkpoint, name))
                               for name in ("model.safetensors", "model.safetensors.index.json"))
        if self.is_deepspeed_enabled or _is_peft(model) or not has_full_weights:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        reloaded = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
        model.load_state_dict(reloaded.state_dict(), strict=True)
        logger.info("resumed model weights from %s", resume_from_checkpoint)

    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            self.bundle.settings.save(output_dir)


class RexOmniSFTTrainer(RexOmniTrainerMixin, Trainer):
    """``Trainer`` with the project's loss, per-part learning rates, tokens/s logging, an extra-loss
    hook and checkpoints that ``RexOmni.from_pretrained`` loads (rexomni settings saved alongside).
    ``args`` is an :class:`SFTConfig` with its ``model_args``."""

    def __init__(self, *args, bundle: ModelBundle, **kwargs):
        super().__init__(*args, compute_loss_func=self.lm_loss_from_outputs, **kwargs)
        self.bundle = bundle
        self.lm_loss = CausalLMLoss(bundle.coord_ids, self.args.soft_label_sigma, self.args.soft_label_weight)
        self.extra_losses = [fn for fn in (load_extra_loss(self.args.extra_loss), self._hinge_loss(bundle),
                                           self._naming_loss(bundle), self._search_loss(bundle)) if fn]
        self._tokens, self._last_log_time, self._extra_logs = 0, None, {}

    @property
    def sft_config(self) -> SFTConfig:
        """The run's config, the Trainer's ``args`` (what the callbacks read)."""
        return self.args

    def _hinge_loss(self, bundle: ModelBundle) -> NegativeHingeLoss | None:
        if not self.args.negative_hinge_weight:
            return None
        tokenizer = bundle.processor.tokenizer
        return NegativeHingeLoss(self.args.negative_hinge_weight, self.args.negative_hinge_eta,
                                 tokenizer.convert_tokens_to_ids(VISION_END), tokenizer.pad_token_id or 0)

    def _naming_loss(self, bundle: ModelBundle):
        if not self.args.naming_loss_weight:
            return None
        from .recognition import NamingLoss

        args = self.args
        return NamingLoss(bundle.model, bundle.processor.tokenizer, bundle.processor.image_processor,
                          weight=args.naming_loss_weight, scenes=args.naming_scenes, attributes=args.naming_attributes,
                          batch_size=args.naming_batch_size, seed=args.seed, step=lambda: self.state.global_step)

    def _search_loss(self, bundle: ModelBundle):
        if not self.args.search_loss_weight:
            return None
        from .search import SearchLoss

        args = self.args
        encoder = ExampleEncoder(bundle.processor, args.system_prompt, args.max_length)
        return SearchLoss(bundle.model, encoder, bundle.coord_ids, weight=args.search_loss_weight,
                          scenes=args.search_scenes, batch_size=args.search_batch_size, layers=args.search_layers,
                          seed=args.seed, step=lambda: self.state.global_step, codec=bundle.settings.coord_codec,
                          tasks=args.search_tasks)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """The loss's divisor: under ``group_by_length`` the expected labelled tokens of the batches (their
        windows' means), not their own count, so that a batch of short answers weighs no more per token
        than one of long answers; otherwise the Trainer's count."""
        expected = [batch.pop("expected_label_tokens", None) for batch in batch_samples]
        if not expected or any(e is None for e in expected):
            return super()._get_num_items_in_batch(batch_samples, device)
        total = torch.stack(expected).sum().to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return total

    def lm_loss_from_outputs(self, outputs, labels, num_items_in_batch=None):
        return self.lm_loss(outputs.logits, labels, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self._tokens += int(inputs["attention_mask"].sum())
        labels = inputs["labels"]
        # The hinge loss's rows are not model inputs: they go to the extra losses only.
        extra_inputs = {k: inputs.pop(k) for k in HINGE_KEYS if k in inputs}
        inputs["logits_to_keep"] = predicting_positions(labels)
        if not self.extra_losses:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        self._extra_logs = {}
        for fn in self.extra_losses:
            extra = fn(model=model, inputs={**inputs, **extra_inputs}, outputs=outputs, labels=labels)
            if isinstance(extra, tuple):
                extra, logs = extra
                self._extra_logs.update(logs)
            # The main loss is already normalised over the accumulated batch; the extra term is a
            # per-batch mean, so it is divided by the accumulation steps here.
            loss = loss + extra / self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        """Indices in order: every index of a :class:`MixtureDataset` is already its own seeded random
        draw, so shuffling adds nothing, and an order that owes nothing to the global RNG makes a
        resumed run see exactly the batches an uninterrupted one would."""
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now = time.perf_counter()
            if self._last_log_time is not None and now > self._last_log_time:
                logs["tokens_per_s"] = round(self._tokens / (now - self._last_log_time), 1)
            self._tokens, self._last_log_time = 0, now
            logs.update({k: float(v) for k, v in self._extra_logs.items()})
        super().log(logs, start_time)



def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def keeping_step_log(control):
    """For a callback that calls ``Trainer.log`` in ``on_step_end``: that call clears
    ``control.should_log``, which would drop the step's own training-loss log; restore it."""
    should_log = control.should_log
    yield
    control.should_log = should_log


class HeldOutCallback(TrainerCallback):
    """Every ``eval_steps`` (and at the end): score the live model on the held-out sets as ``rexomni eval``
    would (:mod:`.heldout`), and log ``heldout/<task>/<metric>``."""

    def __init__(self, trainer: RexOmniSFTTrainer, sets: dict[str, list[dict]]):
        self.trainer, self.sets = trainer, sets
        self.history: list[dict] = []

    def _run(self, state) -> None:
        from transformers.integrations import is_deepspeed_zero3_enabled

        config, bundle = self.trainer.sft_config, self.trainer.bundle
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        metrics = evaluate_heldout(model, bundle.processor, bundle.settings, self.sets, config.eval_batch_size,
                                   config.eval_max_new_tokens, synced_gpus=is_deepspeed_zero3_enabled())
        if metrics:
            metrics = {f"heldout/{k}": v for k, v in metrics.items()}
            self.history.append({"step": state.global_step, **metrics})
            self.trainer.log(metrics)

    def on_step_end(self, args, state, control, **kwargs):
        steps = self.trainer.sft_config.eval_steps
        if steps and state.global_step % steps == 0 and state.global_step < state.max_steps:
            with keeping_step_log(control):
                self._run(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._run(state)


class TimeLimitCallback(TrainerCallback):
    """Stops training once ``minutes`` of training have passed (the final model is still saved)."""

    def __init__(self, minutes: float):
        self.seconds, self.start = minutes * 60.0, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start >= self.seconds:
            control.should_training_stop = True


class StopAtStepCallback(TrainerCallback):
    """Stops training at step ``step`` without touching the schedule, which still spans max_steps."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


# --------------------------------------------------------------------------- data


def build_mixture(config: SFTConfig):
    from rexomni.data_engines.mixture import Mixture

    if isinstance(config.data, dict):
        return Mixture(config.data)
    if not os.path.isfile(str(config.data)):
        raise ValueError(f"data: mixture spec {config.data!r} not found")
    return Mixture.from_yaml(config.data)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def global_batch(config: SFTConfig) -> int:
    return config.per_device_train_batch_size * config.gradient_accumulation_steps * world_size()


def build_datasets(config: SFTConfig, encoder: ExampleEncoder | None) -> tuple[Dataset, dict[str, list[dict]]]:
    """(training dataset, held-out sets by task). Training draws are seeded by the mixture's seed and
    the run's ``seed``; held-out draws by the mixture's seed only, so every run scores the same scenes."""
    mixture = build_mixture(config)
    length = config.train_examples or config.max_steps * global_batch(config)
    seed = f"train:{mixture.seed}:{config.seed}"
    train = MixtureDataset(mixture, length, encoder, seed=seed, cache=config.cache_examples)
    if config.group_by_length:
        if world_size() > 1:
            logger.warning("group_by_length: each of the %d processes encodes every window, its own batches and "
                           "the others'", world_size())
        train = LengthGroupedDataset(train, config.per_device_train_batch_size, config.length_group_window, seed)
    return train, heldout_sets(mixture, config.eval_examples)


# --------------------------------------------------------------------------- checkpoints


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` whose trainer state was written (the Trainer writes it last), so a
    folder half-written when the run was killed is never resumed from."""
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith("checkpoint-") and name[11:].isdigit() and os.path.isdir(path):
            try:
                with open(os.path.join(path, "trainer_state.json")) as f:
                    json.load(f)
            except (OSError, ValueError):
                continue
            found.append((int(name[11:]), path))
    return max(found)[1] if found else None


def resume_point(config: SFTConfig) -> str | None:
    value = config.resume_from_checkpoint
    if value in (None, False, "false", "no"):
        return None
    if value in (True, "true", "auto", "last"):
        checkpoint = last_complete_checkpoint(config.output_dir)
        if checkpoint is None:
            logger.info("resume: no complete checkpoint in %s; starting from the beginning", config.output_dir)
        return checkpoint
    if not os.path.isdir(str(value)):
        raise ValueError(f"resume_from_checkpoint: {value!r} is not a folder")
    return str(value)


def save_final(trainer: RexOmniSFTTrainer, config: SFTConfig) -> str:
    """The final model in ``output_dir``, loadable by ``RexOmni.from_pretrained``. A LoRA run also
    keeps its adapter in ``output_dir/adapter`` and writes the merged weights to ``output_dir``."""
    bundle = trainer.bundle
    if not config.model_args.uses_lora:
        trainer.save_model(config.output_dir)
        return config.output_dir
    trainer.save_model(os.path.join(config.output_dir, "adapter"))
    if trainer.is_world_process_zero():
        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        merged = peft_model.merge_and_unload()
        save_checkpoint(config.output_dir, merged, bundle.processor, bundle.settings)
    return config.output_dir




def run_sft(config: SFTConfig) -> dict[str, Any]:
    """Train as ``config`` says; returns the final train metrics and the held-out history."""
    # The config already set DeepSpeed up: under ZeRO-3 a checkpoint is partitioned as it loads,
    # and a preset's random model, built whole, is partitioned by the Trainer.
    bundle = load_model(config.model_args, seed=config.seed, bf16=config.bf16)
    model = prepare_model(bundle, config.model_args, config.activation_checkpointing)
    hinge_codec = bundle.settings.coord_codec if config.negative_hinge_weight else None
    encoder = ExampleEncoder(bundle.processor, config.system_prompt, config.max_length, hinge_codec,
                             config.negative_hinge_max_negatives)
    train_set, heldout = build_datasets(config, encoder)
    collator = SFTCollator(encoder.pad_id, encoder.image_token_id)
    trainer = RexOmniSFTTrainer(model=model, args=config, train_dataset=train_set, data_collator=collator,
                                processing_class=bundle.processor, bundle=bundle)
    callback = HeldOutCallback(trainer, heldout)
    if config.eval_examples:
        trainer.add_callback(callback)
    if config.max_train_minutes:
        trainer.add_callback(TimeLimitCallback(config.max_train_minutes))
    if config.stop_at_step:
        trainer.add_callback(StopAtStepCallback(config.stop_at_step))
    if trainer.is_world_process_zero():
        logger.info("trainable parameters by part (total, trainable): %s", count_by_part(model))
    result = trainer.train(resume_from_checkpoint=resume_point(config))
    save_final(trainer, config)
    if train_set.skipped_images:
        logger.warning("skipped unreadable images: %s", dict(train_set.skipped_images))
    return {"train": result.metrics, "heldout": callback.history, "log_history": trainer.state.log_history,
            "output_dir": config.output_dir,
            "global_step": trainer.state.global_step,
            "samples_per_s": trainer.state.global_step * global_batch(config) / result.metrics["train_runtime"]}


# --------------------------------------------------------------------------- dry run


def plan(config: SFTConfig) -> str:
    """What a run would do, without training: sizes, batches, tokens, freezing, parameter counts
    (the model is built on the meta device; no weight is loaded)."""
    from .model_setup import apply_freezing, apply_lora, fake_new_token_ids, meta_model

    model_args = config.model_args
    model, settings, origin = meta_model(model_args)
    apply_freezing(model, model_args)
    lora_note = ""
    if model_args.uses_lora:
        try:
            model = apply_lora(model, model_args, fake_new_token_ids(model))
        except Exception as e:  # PEFT on meta tensors: report rather than fail the plan
            lora_note = f" (LoRA not simulated: {e})"
    counts = count_by_part(model)
    total = sum(c[0] for c in counts.values())
    trainable = sum(c[1] for c in counts.values())
    ws, gb = world_size(), global_batch(config)
    lines = [
        f"model          {model_args.model_name_or_path or 'random ' + str(model_args.preset)}  [shape: {origin}]",
        f"world size     {ws}  (WORLD_SIZE; launchers set it)",
        f"batch          {config.per_device_train_batch_size} per device x {config.gradient_accumulation_steps} "
        f"accumulation x {ws} processes = {gb} global"
        + (f", grouped by length {config.length_group_window} batches at a time" if config.group_by_length else ""),
        f"steps          {config.max_steps}  ({config.max_steps * gb} examples)"
        + (f", stopping at {config.stop_at_step}" if config.stop_at_step else ""),
        f"tokens/step    {_tokens_per_step(config, settings, gb)}",
        f"learning rate  llm {config.learning_rate:g}, merger {model_args.merger_learning_rate}, vision "
        f"{model_args.vision_learning_rate}; {config.lr_scheduler_type.value}, warm-up {config.warmup_steps:g}",
        f"precision      bf16={config.bf16}  activation checkpointing={config.activation_checkpointing}",
        f"deepspeed      {config.deepspeed or 'off'}{_zero_stage(config)}",
        "losses         cross-entropy" + (f" + soft labels (sigma {config.soft_label_sigma:g} bins, weight "
                                           f"{config.soft_label_weight:g})" if config.soft_label_sigma else "")
        + (f" + {config.extra_loss}" if config.extra_loss else "")
        + (f" + negative hinge (weight {config.negative_hinge_weight:g}, eta {config.negative_hinge_eta:g})"
           if config.negative_hinge_weight else "")
        + (f" + naming ({', '.join(config.naming_attributes)} at each shape's image token, weight "
           f"{config.naming_loss_weight:g}, {config.naming_batch_size} scenes per step)"
           if config.naming_loss_weight else "")
        + (f" + search (attention of layers {config.search_layers} on the asked shape, weight "
           f"{config.search_loss_weight:g}, {config.search_batch_size} scenes per step)"
           if config.search_loss_weight else ""),
        f"lora           {f'r={model_args.lora_r} alpha={model_args.lora_alpha}' if model_args.uses_lora else 'off'}"
        + lora_note,
        "parameters     part      total          trainable   frozen",
    ]
    for part, (n, t) in counts.items():
        frozen = "yes" if n and not t else "partly" if t < n else "no"
        lines.append(f"               {part:<8}{n:>14,} {t:>14,}   {frozen}")
    lines.append(f"               {'all':<8}{total:>14,} {trainable:>14,}")
    lines.append(f"output         {config.output_dir}")
    return "\n".join(lines)


def _zero_stage(config: SFTConfig) -> str:
    """`` (ZeRO-N)`` from the DeepSpeed config that TrainingArguments has read, or nothing."""
    if not config.deepspeed:
        return ""
    return f" (ZeRO-{config.hf_deepspeed_config.get_value('zero_optimization.stage')})"


def _tokens_per_step(config: SFTConfig, settings, batch: int) -> str:
    """Mean encoded length of a few examples x global batch, or why it cannot be estimated."""
    from rexomni.offline_tokenizer import build_test_tokenizer
    from rexomni.processing import make_processor

    try:
        mixture = build_mixture(config)
        tokenizer = build_test_tokenizer()  # a stand-in: image tokens dominate the count
        encoder = ExampleEncoder(make_processor(tokenizer, settings.min_pixels, settings.max_pixels),
                                 config.system_prompt, config.max_length)
        sample = MixtureDataset(mixture, 8, encoder, seed="plan")
        mean = sum(len(sample[i]["input_ids"]) for i in range(len(sample))) / len(sample)
        return f"about {math.ceil(mean * batch):,} ({mean:.0f} per example, from 8 drawn examples)"
    except Exception as e:  # the plan still prints when the data is not on this machine
        return f"not estimated ({type(e).__name__}: {e})"
