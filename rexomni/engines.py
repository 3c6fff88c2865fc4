"""Generation engines: what :class:`rexomni.api.RexOmni` holds to turn prompts and images into answers.

An engine has a ``name`` and one method,

    generate(task, requests, texts, gen, *, constrained, scores, max_boxes) -> (generations, timing)

``requests`` are :meth:`RexOmni.prepare`'s (image, phrases, ...), ``texts`` the full chat texts,
``gen`` the generation settings (``max_new_tokens``, ``repetition_penalty``, sampling). Each
:class:`Generation` holds the generated token ids, the log-probability of each under the raw
model distribution (temperature 1, before any constraint or penalty; None without ``scores``) and
the prompt length. Prompts, parsing, scores and results stay in ``RexOmni``, the same for every engine.

- :class:`TransformersEngine` (here): a transformers model; the grammar constraint is a logits processor.
- ``VLLMEngine`` (:mod:`rexomni.vllm_backend`, GPU): vLLM, the grammar as a regular expression.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .tasks import TASKS
from .tokens import end_of_answer_ids


@dataclass
class Generation:
    ids: list[int]
    logprobs: list[float] | None
    num_prompt_tokens: int


class TokenLogProbRecorder:
    """A logits processor, placed first, that records log p of each generated token.

    At step t it sees the token chosen at step t-1 as the last input id and reads its
    log-probability from the distribution it kept from step t-1; so it holds one (batch, vocab)
    distribution at a time, never the whole history. :meth:`finish` adds the final token.
    """

    def __init__(self):
        self.previous = None
        self.logprobs: list = []

    def __call__(self, input_ids, scores):
        import torch

        if self.previous is not None:
            self.logprobs.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences, prompt_length: int):
        """(batch, generated) log-probs aligned with ``sequences[:, prompt_length:]``."""
        import torch

        steps = sequences.shape[1] - prompt_length
        values = list(self.logprobs)
        if self.previous is not None and len(values) < steps:
            values.append(self.previous.gather(1, sequences[:, prompt_length + len(values)][:, None]).squeeze(1))
        if not values:
            return torch.zeros(sequences.shape[0], 0)
        return torch.stack(values[:steps], dim=1).cpu()


class TransformersEngine:
    """Batched ``generate`` of a transformers Qwen2.5-VL model, left-padded, grammar-constrained."""

    name = "transformers"

    def __init__(self, model, processor, num_bins: int = 1000):
        self.model, self.processor, self.tokenizer, self.num_bins = model, processor, processor.tokenizer, num_bins

    def logits_processors(self, task: str, phrases, *, constrained: bool, max_boxes: int | None,
                          max_new_tokens: int, repetition_penalty: float,
                          presence_threshold: float | None = None) -> list:
        """[repetition penalty], [grammar constraint]; the score recorder goes before them.
        ``presence_threshold``: see :class:`~rexomni.constrained.GrammarConstrainedLogitsProcessor`."""
        from transformers import RepetitionPenaltyLogitsProcessor

        processors = []
        if repetition_penalty and repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
        spec = TASKS[task]
        if constrained and spec.item != "keypoints":
            from .constrained import GrammarConstrainedLogitsProcessor

            processors.append(GrammarConstrainedLogitsProcessor(
                self.tokenizer, None if spec.free_phrases else phrases, item=spec.item,
                max_boxes=max_boxes, max_new_tokens=max_new_tokens, num_bins=self.num_bins,
                presence_threshold=presence_threshold))
        return processors

    def generate(self, task: str, requests: list[dict], texts: list[str], gen: dict, *, constrained: bool,
                 scores: bool, max_boxes: int | None) -> tuple[list[Generation], dict[str, float]]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        start = time.perf_counter()
        inputs = self.processor(text=texts, images=[r["image"] for r in requests], padding=True, return_tensors="pt")
        # Without mm_token_type_ids Qwen2.5-VL silently uses 1-D positions for image tokens.
        if "mm_token_type_ids" not in inputs:
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.processor.image_token_id).long()
        inputs = inputs.to(self.model.device)
        prepared = time.perf_counter()

        gen = dict(gen)
        repetition_penalty = gen.pop("repetition_penalty", 1.0)
        synced_gpus = gen.pop("synced_gpus", False)  # a generate() argument, not a generation setting (ZeRO-3)
        presence_threshold = gen.pop("presence_threshold", None)  # applies inside the grammar constraint
        processors = self.logits_processors(task, [r["phrases"] for r in requests], constrained=constrained,
                                            max_boxes=max_boxes, max_new_tokens=gen["max_new_tokens"],
                                            repetition_penalty=repetition_penalty,
                                            presence_threshold=presence_threshold)
        recorder = TokenLogProbRecorder() if scores else None
        if recorder is not None:
            processors.insert(0, recorder)
        gen.setdefault("do_sample", False)
        config = GenerationConfig(pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=end_of_answer_ids(self.tokenizer), **gen)
        with torch.inference_mode():
            sequences = self.model.generate(**inputs, generation_config=config, synced_gpus=synced_gpus,
                                            logits_processor=LogitsProcessorList(processors))
        prompt_length = inputs["input_ids"].shape[1]
        logprobs = recorder.finish(sequences, prompt_length) if recorder is not None else None
        generated = sequences[:, prompt_length:].cpu()
        generations = [Generation(generated[i].tolist(), None if logprobs is None else logprobs[i].tolist(),
                                  int(inputs["attention_mask"][i].sum())) for i in range(len(requests))]
        return generations, {"preprocess_s": prepared - start, "generate_s": time.perf_counter() - prepared}
