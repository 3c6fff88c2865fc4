"""The vLLM engine (GPU): ``RexOmni.from_pretrained(path, backend="vllm")``.

``RexOmni`` keeps its prompts, parsing, results and score definition; only generation moves to a
vLLM engine (see :mod:`rexomni.engines`). What differs:

- Constrained decoding uses vLLM's structured outputs with a regular expression of the grammar
  (:func:`rexomni.grammar.answer_regex`): phrases limited to the requested ones, whole items,
  ``None``, the group separators and a bound on items per group. The rules a regex cannot state
  cheaply (x1 >= x0, no repeated box, the token budget) are only enforced by the transformers engine.
- Scores use the log-probability vLLM reports for each sampled token (``logprobs=0``), which is
  the raw model distribution, as in the transformers engine.
- vLLM tokenizes the prompt with the tokenizer that :func:`rexomni.checkpoint.load_checkpoint`
  prepared (saved to a folder of its own), so ids and negative tokens are the same as here.

``vllm`` is imported only here and only when the engine is built.
"""

from __future__ import annotations

import time
from typing import Any

from .engines import Generation
from .grammar import answer_regex
from .tasks import TASKS
from .tokens import end_of_answer_ids


class VLLMEngine:
    """Generation with a ``vllm.LLM`` (``llm``) for a tokenizer prepared by the checkpoint loader."""

    name = "vllm"

    def __init__(self, llm, tokenizer):
        self.llm, self.tokenizer = llm, tokenizer

    @classmethod
    def load(cls, checkpoint, **engine_kwargs) -> VLLMEngine:
        """A vLLM engine on ``checkpoint`` (a :class:`rexomni.checkpoint.Checkpoint` loaded without weights).

        vLLM gets the tokenizer as the loader made it, saved to a folder of its own: its ids are the
        declared ones and it has the negative tokens, whatever the checkpoint's own files would give.
        """
        import tempfile

        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("backend='vllm' needs the vllm package on a GPU machine: "
                              "pip install 'rexomni[gpu]'") from e
        settings = checkpoint.settings
        tokenizer_dir = tempfile.mkdtemp(prefix="rexomni-tokenizer-")
        checkpoint.tokenizer.save_pretrained(tokenizer_dir)
        engine_kwargs.setdefault("limit_mm_per_prompt", {"image": 1})
        engine_kwargs.setdefault("mm_processor_kwargs", {"min_pixels": settings.min_pixels,
                                                         "max_pixels": settings.max_pixels})
        return cls(LLM(model=checkpoint.source, tokenizer=tokenizer_dir, **engine_kwargs), checkpoint.tokenizer)

    # ------------------------------------------------------------------ requests (no GPU needed)
    def build_requests(self, task: str, requests: list[dict], texts: list[str], gen: dict, *, constrained: bool,
                       scores: bool, max_boxes: int | None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(prompt, sampling parameters as a dict) per image, ready for ``vllm.LLM.generate``."""
        gen = dict(gen)
        if gen.pop("presence_threshold", None) is not None:
            raise ValueError("presence_threshold (from the call or the checkpoint's rexomni_config.json 'generation') "
                             "needs the transformers backend: vLLM's regex decoding lets the likeliest token "
                             "decide None; pass presence_threshold=None to decode that way")
        sampling = {
            "max_tokens": gen.pop("max_new_tokens"),
            "repetition_penalty": gen.pop("repetition_penalty", 1.0),
            "stop_token_ids": end_of_answer_ids(self.tokenizer),
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
        }
        if gen.pop("do_sample", False):
            sampling["temperature"] = gen.pop("temperature", 1.0)
            for key in ("top_p", "top_k", "seed"):
                if key in gen:
                    sampling[key] = gen.pop(key)
        else:
            sampling["temperature"] = 0.0
            gen.pop("temperature", None)
        if gen:
            raise ValueError(f"the vllm backend does not take {sorted(gen)}")
        if scores:
            sampling["logprobs"] = 0  # the sampled token's log-probability
        spec = TASKS[task]
        out = []
        for request, text in zip(requests, texts):
            params = dict(sampling)
            if constrained and spec.item != "keypoints":
                phrases = None if spec.free_phrases else request["phrases"]
                params["regex"] = answer_regex(phrases, spec.item, max_boxes)
            out.append(({"prompt": text, "multi_modal_data": {"image": request["image"]}}, params))
        return out

    @staticmethod
    def generations(outputs) -> list[Generation]:
        """vLLM ``RequestOutput`` objects -> token ids, sampled log-probs and prompt lengths."""
        generations = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = None
            if completion.logprobs is not None:
                logprobs = [float(step[tid].logprob) for step, tid in zip(completion.logprobs, ids)]
            generations.append(Generation(ids, logprobs, len(output.prompt_token_ids or [])))
        return generations

    # ------------------------------------------------------------------ generation
    def generate(self, task: str, requests: list[dict], texts: list[str], gen: dict, *, constrained: bool,
                 scores: bool, max_boxes: int | None) -> tuple[list[Generation], dict[str, float]]:
        start = time.perf_counter()
        built = self.build_requests(task, requests, texts, gen, constrained=constrained, scores=scores,
                                    max_boxes=max_boxes)
        params = [self.sampling_params(p) for _, p in built]
        prepared = time.perf_counter()
        outputs = self.llm.generate([prompt for prompt, _ in built], sampling_params=params, use_tqdm=False)
        timing = {"preprocess_s": prepared - start, "generate_s": time.perf_counter() - prepared}
        return self.generations(outputs), timing

    @staticmethod
    def sampling_params(params: dict[str, Any]):
        """A ``vllm.SamplingParams`` from the dict of :meth:`build_requests`."""
        import vllm

        params = dict(params)
        regex = params.pop("regex", None)
        if regex is not None:
            if hasattr(vllm.sampling_params, "StructuredOutputsParams"):
                params["structured_outputs"] = vllm.sampling_params.StructuredOutputsParams(regex=regex)
            else:  # vLLM before 0.11
                params["guided_decoding"] = vllm.sampling_params.GuidedDecodingParams(regex=regex)
        return vllm.SamplingParams(**params)
