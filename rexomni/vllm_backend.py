"""The vLLM backend (GPU): ``RexOmni.from_pretrained(path, backend="vllm")``.

Same prompts, parsing, results and score definition as the transformers backend; only generation
moves to a vLLM engine. What differs:

- Constrained decoding uses vLLM's structured outputs with a regular expression of the grammar
  (:func:`rexomni.grammar.answer_regex`): phrases limited to the requested ones, whole boxes/points, ``None``,
  the group separators and a bound on items per group. The rules a regex cannot state cheaply
  (x1 >= x0, no repeated box, the token budget) are only enforced by the transformers backend.
- Scores use the log-probability vLLM reports for each sampled token (``logprobs=0``), which is
  the raw model distribution, as in the transformers backend.
- vLLM tokenizes the prompt with the tokenizer that :func:`rexomni.checkpoint.load_checkpoint`
  prepared (saved to a folder of its own), so ids and negative tokens are the same as here.

``vllm`` is imported only here and only when the backend is used.
"""

from __future__ import annotations

from typing import Any

from .api import RexOmni
from .grammar import answer_regex
from .result import Result
from .tasks import TASKS
from .tokens import end_of_answer_ids


class VLLMDetector(RexOmni):
    """RexOmni whose ``model`` is a ``vllm.LLM``."""

    @classmethod
    def load(cls, checkpoint, **engine_kwargs) -> VLLMDetector:
        """A vLLM engine on ``checkpoint`` (a :class:`rexomni.checkpoint.Checkpoint` loaded without weights).

        vLLM gets the tokenizer as :func:`rexomni.checkpoint.load_checkpoint` made it, saved to a
        folder of its own: its ids are the declared ones and it has the negative tokens, whatever
        the checkpoint's own tokenizer files would give when read again.
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
        llm = LLM(model=checkpoint.source, tokenizer=tokenizer_dir, **engine_kwargs)
        return cls(llm, checkpoint.processor, settings, backend="vllm", device="cuda", name=checkpoint.source)

    # ------------------------------------------------------------------ requests (no GPU needed)
    def build_requests(self, task: str, requests: list[dict], *, constrained: bool = True, scores: bool = True,
                       max_boxes: int | None = None, max_new_tokens: int | None = None,
                       **generate_kwargs) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(prompt, sampling parameters as a dict) per image, ready for ``vllm.LLM.generate``."""
        gen = self._generation_settings(max_new_tokens, generate_kwargs)
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
        for request in requests:
            params = dict(sampling)
            if constrained and spec.item != "keypoints":
                phrases = None if spec.free_phrases else request["phrases"]
                params["regex"] = answer_regex(phrases, spec.item, max_boxes)
            prompt = {"prompt": self.chat_text(request["prompt"]), "multi_modal_data": {"image": request["image"]}}
            out.append((prompt, params))
        return out

    def results_from_outputs(self, task: str, requests: list[dict], outputs) -> list[Result]:
        """vLLM ``RequestOutput`` objects -> results (token ids and sampled log-probs)."""
        import torch

        results = []
        for request, output in zip(requests, outputs):
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = None
            if completion.logprobs is not None:
                logprobs = torch.tensor([float(step[tid].logprob) for step, tid in zip(completion.logprobs, ids)])
            results.append(self._to_result(task, request, torch.tensor(ids, dtype=torch.long), logprobs,
                                           len(output.prompt_token_ids or [])))
        return results

    # ------------------------------------------------------------------ generation
    def _run_batch(self, task: str, requests: list[dict], **kwargs) -> list[Result]:
        import time

        t0 = time.perf_counter()
        built = self.build_requests(task, requests, **kwargs)
        t1 = time.perf_counter()
        params = [self.sampling_params(s) for _, s in built]
        outputs = self.model.generate([p for p, _ in built], sampling_params=params, use_tqdm=False)
        t2 = time.perf_counter()
        results = self.results_from_outputs(task, requests, outputs)
        t3 = time.perf_counter()
        timing = {"preprocess_s": t1 - t0, "generate_s": t2 - t1, "postprocess_s": t3 - t2}
        for r in results:
            r.timing, r.seconds = dict(timing), (t3 - t0) / max(1, len(results))
        return results

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

    def score(self, *args, **kwargs):
        raise NotImplementedError("teacher-forced score() needs the transformers backend")
