"""The GRPO recipe: TRL's ``GRPOTrainer`` on this project's model, processor, prompts and rewards.

    from rexomni.grpo.config import load_config
    from rexomni.grpo.trainer import run_grpo
    run_grpo(load_config("grpo/configs/tiny.yaml", ["--model_name_or_path", "runs/tiny", "--max_steps", "5"]))

Top to bottom (:func:`run_grpo`): the model through SFT's set-up (``sft.model_setup.load_model`` /
``prepare_model``: the same loader, freezing, LoRA and per-part learning rates); prompts drawn from a mixture
(:mod:`.data`) as the conversational ``prompt`` + ``image`` rows TRL's vision path takes; the project's
``RexOmniProcessor`` as ``processing_class``, so TRL renders and tokenizes exactly what ``RexOmni.predict`` sends
(a test compares the ids); rewards from :func:`.rewards.build_rewards`; checkpoints that
``RexOmni.from_pretrained`` loads; resume from the newest complete checkpoint as SFT does.

**The grammar seam (transformers rollouts).** TRL's ``GRPOTrainer`` has no logits-processor hook: its regular
generation path calls ``unwrapped_model.generate(**inputs, generation_config=...)``. Of the seams (a
``rollout_func``, which must redo the chat templating, the image handling and TRL's EOS masking; a copy of
``_generate_single_turn``; a ``generate`` wrapper), :class:`RexOmniGRPOTrainer` takes the narrowest: it overrides
``_generate_single_turn`` only to put, for the duration of TRL's own call, a ``generate`` on the unwrapped model
that adds ``logits_processor=[TokenLogProbRecorder, grammar]``. The grammar processors are the ones
``TransformersEngine.logits_processors`` builds for ``RexOmni.predict`` (per task, the row's own phrases), so
rollouts are constrained exactly as inference is. Everything else (padding, image fields, EOS masking, the
forward passes) stays TRL's.

**What the constraint does to the sampling distribution.** transformers applies custom processors after its
own (repetition penalty, TRL's suppression of the image token) and before temperature and top-p: a rollout is
sampled from the model's distribution masked to the tokens the grammar allows, renormalised, then tempered and
cut by top-p. TRL's loss uses the log-probabilities of the unmasked model (at the sampling temperature), as it
already does for top-p. On-policy (``num_iterations`` 1, steps aligned) the ratio is 1 and the gradient is
``A * grad log p(token)`` of the unmasked model, which also pushes up the probability of allowed tokens against
disallowed ones (the renormaliser's gradient is left out); with ``num_iterations`` > 1 both old and new
log-probabilities are unmasked, so the importance ratio stays consistent. The recorder keeps the unmasked
log-probability of every sampled token at temperature 1: the ``confidence`` reward reads it as
``completion_logprobs`` (the score ``RexOmni`` reports).

**vLLM rollouts (GPU).** ``use_vllm`` with ``vllm_mode`` colocate or server; the grammar goes in as
``vllm_structured_outputs_regex`` (:func:`rexomni.grammar.answer_regex` for boxes under any phrase, one regex
for every prompt, as TRL takes only one, so the config refuses it for mixtures with other answers); no
log-probabilities reach the rewards, so the config refuses a ``confidence`` weight with vLLM.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import Any

import torch
from rexomni.sft.heldout import heldout_sets
from rexomni.sft.model_setup import ModelBundle, count_by_part, load_model, prepare_model
from rexomni.sft.trainer import (
    HeldOutCallback,
    RexOmniTrainerMixin,
    build_mixture,
    resume_point,
    save_final,
    world_size,
)
from transformers import LogitsProcessorList
from trl import GRPOTrainer

from rexomni.engines import TokenLogProbRecorder, TransformersEngine
from rexomni.processing import make_processor

from .config import GRPOConfig
from .data import prompt_dataset
from .metrics import rollout_metrics
from .rewards import build_rewards

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the grammar in rollouts


class RowsOf:
    """A logits processor applied to some rows of the batch only: a batch may mix tasks (boxes, points), and one
    grammar processor serves one item kind."""

    def __init__(self, rows: list[int], processor):
        self.rows, self.processor = torch.tensor(rows), processor

    def __call__(self, input_ids, scores):
        rows = self.rows.to(scores.device)
        scores[rows] = self.processor(input_ids[rows], scores[rows])
        return scores


def grammar_processors(engine: TransformersEngine, rows: list[dict], max_new_tokens: int,
                       max_boxes: int | None) -> list:
    """The grammar constraint of ``RexOmni.predict`` for each task of the batch, on that task's rows, with each
    row's own phrases (keypoint answers stay unconstrained, as in inference)."""
    by_task: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_task.setdefault(row["task"], []).append(i)
    out = []
    for task, indices in by_task.items():
        processors = engine.logits_processors(task, [rows[i]["phrases"] for i in indices], constrained=True,
                                              max_boxes=max_boxes, max_new_tokens=max_new_tokens,
                                              repetition_penalty=1.0)  # TRL's generation config has its own
        out += [RowsOf(indices, p) for p in processors]
    return out


@contextlib.contextmanager
def extra_logits_processors(model, processors: list):
    """Within the block, ``model.generate`` also applies ``processors`` (after transformers' own processors,
    before temperature and top-p)."""
    model.generate = functools.partial(type(model).generate, model, logits_processor=LogitsProcessorList(processors))
    try:
        yield
    finally:
        del model.generate


def recorded_logprobs(recorder: TokenLogProbRecorder, completion_ids: list[list[int]]) -> list[list[float]]:
    """The recorder's log p of each completion token, cut as TRL cut the completions (after the first EOS)."""
    steps = torch.stack(recorder.logprobs, dim=1).float().cpu() if recorder.logprobs else torch.zeros(0, 0)
    out = []
    for i, ids in enumerate(completion_ids):
        values = steps[i, : len(ids)].tolist() if len(steps) else []
        if len(ids) > len(values):  # the last step's token: read from the distribution the recorder kept
            values.append(float(recorder.previous[i, ids[-1]]))
        out.append(values)
    return out


# --------------------------------------------------------------------------- trainer


class RexOmniGRPOTrainer(RexOmniTrainerMixin, GRPOTrainer):
    """``GRPOTrainer`` with grammar-constrained transformers rollouts, the rollouts' log-probabilities passed to
    the rewards (``completion_logprobs``), rollout metrics, per-part learning rates, and checkpoints that
    ``RexOmni.from_pretrained`` loads. ``args`` is a :class:`GRPOConfig` with its ``model_args``."""

    def __init__(self, *args, bundle: ModelBundle, **kwargs):
        super().__init__(*args, **kwargs)
        self.bundle = bundle
        self.engine = TransformersEngine(None, bundle.processor, bundle.settings.num_bins)
        self._rows: list[dict] | None = None
        self._completion_logprobs: list[list[float]] | None = None

    @property
    def sft_config(self) -> GRPOConfig:
        """The run's config under the name SFT's held-out callback reads."""
        return self.args

    def _generate_and_score_completions(self, inputs):
        self._rows, self._completion_logprobs = inputs, None
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._rows, self._completion_logprobs = None, None

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.use_vllm or self.use_transformers_continuous_batching or not self.args.constrained:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        recorder = TokenLogProbRecorder()
        processors = [recorder, *grammar_processors(self.engine, self._rows, self.max_completion_length,
                                                    self.args.max_boxes)]
        with extra_logits_processors(self.accelerator.unwrap_model(self.model), processors):
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, images, multimodal_fields,
                                                                     num_generations, has_tool_images)
        self._completion_logprobs = recorded_logprobs(recorder, completion_ids)
        return completion_ids, logprobs

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if self._completion_logprobs is not None:
            inputs = [dict(row, completion_logprobs=lp) for row, lp in zip(inputs, self._completion_logprobs)]
        for name, value in rollout_metrics(completion_ids_list, inputs, self.bundle.tokenizer).items():
            self._log_metric(name, value)
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)



# --------------------------------------------------------------------------- the recipe


def apply_pixel_limits(bundle: ModelBundle, min_pixels: int | None, max_pixels: int | None) -> None:
    """Resize images to the config's limits in rollouts, and record them in the settings saved with the model
    (so ``RexOmni.predict`` resizes as training did)."""
    if min_pixels is None and max_pixels is None:
        return
    settings = bundle.settings
    settings.min_pixels = min_pixels or settings.min_pixels
    settings.max_pixels = max_pixels or settings.max_pixels
    settings.__post_init__()  # validates the pair
    bundle.processor = make_processor(bundle.tokenizer, settings.min_pixels, settings.max_pixels)


def prompts_per_step(config: GRPOConfig) -> int:
    return math.ceil(config.per_device_train_batch_size * config.gradient_accumulation_steps * world_size()
                     / config.num_generations)


def build_prompts(config: GRPOConfig) -> tuple[Any, Any]:
    """(training prompts, the mixture); prompts are seeded by the mixture's seed and the run's ``seed``."""
    mixture = build_mixture(config)
    length = config.train_examples or config.max_steps * prompts_per_step(config)
    return prompt_dataset(mixture, length, seed=f"grpo:{mixture.seed}:{config.seed}"), mixture


def reward_functions(config: GRPOConfig, tokenizer) -> list:
    """TRL's reward functions for ``config.rewards`` (the weights are the config's list, in the same order)."""
    options = dict(config.reward_options)
    if "truncation" in config.rewards:
        options.setdefault("max_completion_length", config.max_completion_length)
    funcs, _ = build_rewards(config.rewards, tokenizer, **options)
    return funcs


def check_reference(config: GRPOConfig) -> None:
    """TRL loads the KL reference from the policy's ``model_name_or_path``: a random preset has none."""
    if config.beta and not config.model_args.uses_lora and not config.model_args.model_name_or_path:
        raise ValueError("beta > 0 needs a reference model, which TRL loads from model_name_or_path; start GRPO from "
                         "a checkpoint (an SFT run's output_dir) or set beta: 0")


def build_trainer(config: GRPOConfig) -> RexOmniGRPOTrainer:
    """The trainer for ``config``: model, prompts, rewards, held-out callback."""
    check_reference(config)
    bundle = load_model(config.model_args, seed=config.seed, bf16=config.bf16)
    apply_pixel_limits(bundle, config.min_pixels, config.max_pixels)
    model = prepare_model(bundle, config.model_args, config.activation_checkpointing)
    prompts, mixture = build_prompts(config)
    trainer = RexOmniGRPOTrainer(model=model, reward_funcs=reward_functions(config, bundle.tokenizer), args=config,
                                 train_dataset=prompts, processing_class=bundle.processor, bundle=bundle)
    if config.eval_examples:
        trainer.add_callback(HeldOutCallback(trainer, heldout_sets(mixture, config.eval_examples)))
    return trainer


def run_grpo(config: GRPOConfig) -> dict[str, Any]:
    """Train as ``config`` says; returns the final train metrics and the log history."""
    trainer = build_trainer(config)
    if trainer.is_world_process_zero():
        logger.info("trainable parameters by part (total, trainable): %s", count_by_part(trainer.model))
    result = trainer.train(resume_from_checkpoint=resume_point(config))
    save_final(trainer, config)
    heldout = [c.history for c in trainer.callback_handler.callbacks if isinstance(c, HeldOutCallback)]
    return {"train": result.metrics, "log_history": trainer.state.log_history, "output_dir": config.output_dir,
            "global_step": trainer.state.global_step, "heldout": heldout[0] if heldout else []}


# --------------------------------------------------------------------------- dry run


def plan(config: GRPOConfig) -> str:
    """What a run would do, without training (the model is built on the meta device; no weight is loaded)."""
    from rexomni.sft.model_setup import apply_freezing, meta_model

    model_args = config.model_args
    model, _, origin = meta_model(model_args)
    apply_freezing(model, model_args)
    counts = count_by_part(model)
    ws = world_size()
    completions = config.per_device_train_batch_size * config.gradient_accumulation_steps * ws
    if config.use_vllm:
        rollouts = f"vLLM ({config.vllm_mode}), grammar regex {'on' if config.vllm_structured_outputs_regex else 'off'}"
    else:
        rollouts = f"transformers generate, grammar {'on' if config.constrained else 'off'}"
    rewards = ", ".join(f"{name} {weight:g}" for name, weight in config.rewards.items())
    lines = [
        f"model          {model_args.model_name_or_path or 'random ' + str(model_args.preset)}  [shape: {origin}]",
        f"world size     {ws}  (WORLD_SIZE; launchers set it)",
        f"batch          {completions} completions per step = {prompts_per_step(config)} prompts x "
        f"{config.num_generations} rollouts ({config.per_device_train_batch_size} per device x "
        f"{config.gradient_accumulation_steps} accumulation x {ws} processes)",
        f"steps          {config.max_steps}",
        f"rollouts       {rollouts}; temperature {config.temperature:g}, top_p {config.top_p:g}, at most "
        f"{config.max_completion_length} tokens",
        f"loss           {config.loss_type}, KL beta {config.beta:g}, {config.num_iterations} iteration(s) per batch",
        f"rewards        {rewards}",
        f"learning rate  llm {config.learning_rate:g}, merger {model_args.merger_learning_rate}, vision "
        f"{model_args.vision_learning_rate}; {config.lr_scheduler_type.value}",
        f"precision      bf16={config.bf16}  activation checkpointing={config.activation_checkpointing}",
        f"deepspeed      {config.deepspeed or 'off'}",
        "parameters     part      total          trainable",
    ]
    lines += [f"               {part:<8}{n:>14,} {t:>14,}" for part, (n, t) in counts.items()]
    lines.append(f"output         {config.output_dir}")
    return "\n".join(lines)
