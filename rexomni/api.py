"""The detector API: ``RexOmni.from_pretrained(...)`` and ``detect``/``point``/... on images.

A list of images is answered as one left-padded batch (split into ``batch_size`` chunks); one
image gives one :class:`Result`, a list gives a list. Coordinates come back in pixels of the
original image. Every box and point has a confidence score from the probabilities of the tokens
that wrote it (see :func:`rexomni.result.item_score` and docs/api.md). Decoding is constrained to the answer
grammar by default (:mod:`rexomni.constrained`).
"""

from __future__ import annotations

import time

import numpy as np

from .codec import get_codec
from .grammar import parse_output
from .images import fit_aspect_ratio, load_image
from .modeling import RexOmniSettings
from .negatives import DEFAULT_BETA, DEFAULT_THRESHOLD, auto_negatives, rescore
from .prompts import KEYPOINT_NAMES, SYSTEM_PROMPT, build_messages, build_prompt
from .result import Result, build_result
from .tasks import get_task
from .tokens import coord_id_to_bin, decode_answer, end_of_answer_ids

DEFAULT_MAX_NEW_TOKENS = 1024


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; a CUDA device on a machine without one is an error."""
    import torch

    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but torch sees no CUDA GPU on this machine; use device='cpu' or 'auto'")
    return device


def canonical_task(task: str) -> str:
    return get_task(task).name


# --------------------------------------------------------------------------- the detector


class RexOmni:
    """A Rex-Omni style detector: a Qwen2.5-VL model that writes coordinate tokens.

    Build it with :meth:`from_pretrained`. See docs/api.md.
    """

    def __init__(self, model, processor, settings: RexOmniSettings, *, engine=None, device: str = "cpu",
                 name: str = ""):
        """``model``: a transformers model (None when another engine, such as vLLM, generates);
        ``engine``: what generates (default: a :class:`rexomni.engines.TransformersEngine` on ``model``)."""
        from .engines import TransformersEngine

        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.settings = settings
        self.codec = get_codec(settings.coord_codec, settings.num_bins)
        self.engine = engine or TransformersEngine(model, processor, settings.num_bins)
        self.backend = self.engine.name
        self.device = device
        self.name = name
        self._coord_bin = coord_id_to_bin(self.tokenizer, settings.num_bins)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | None = None, device: str = "auto", backend: str = "transformers", dtype=None,
                        attn_implementation: str | None = None, **backend_kwargs) -> RexOmni:
        """Load a checkpoint folder or hub id by the rule of :func:`rexomni.checkpoint.load_checkpoint`;
        without one (or with ``"rexomni-synth"``), the small model shipped with the package.

        ``device``: "auto" (a GPU when there is one), "cpu", "cuda", "cuda:1", ... ``dtype``
        defaults to float32 on the CPU and bfloat16 on a GPU. ``backend="vllm"`` serves generation
        with vLLM on a GPU.
        """
        from .checkpoint import load_checkpoint

        device = resolve_device(device)
        if backend == "vllm":
            from .vllm_backend import VLLMEngine

            checkpoint = load_checkpoint(path, load_model=False)
            engine = VLLMEngine.load(checkpoint, **backend_kwargs)
            return cls(None, checkpoint.processor, checkpoint.settings, engine=engine, device="cuda",
                       name=checkpoint.source)
        if backend != "transformers":
            raise ValueError(f"unknown backend {backend!r}; expected 'transformers' or 'vllm'")
        import torch

        if dtype is None:
            dtype = torch.float32 if device == "cpu" else torch.bfloat16
        checkpoint = load_checkpoint(path, dtype=dtype, attn_implementation=attn_implementation or "sdpa")
        checkpoint.model.to(device).eval()
        return cls(checkpoint.model, checkpoint.processor, checkpoint.settings, device=device, name=checkpoint.source)

    # ------------------------------------------------------------------ tasks
    def detect(self, images, categories=None, negatives=None, negative_boxes=None, **kwargs):
        """Boxes of ``categories``; ``negatives`` (phrases, or "auto" for look-alikes of the categories) and
        ``negative_boxes`` say what not to detect (``suppress=True``, ``ood=True``: see :meth:`predict`).

        Without categories (None or empty) the task is ``detect_all``: the model names what it sees,
        and the labels are the phrases it wrote.
        """
        task = "detection" if categories else "detect_all"
        return self.predict(images, task=task, categories=categories or None, negatives=negatives,
                            negative_boxes=negative_boxes, **kwargs)

    def point(self, images, categories, **kwargs):
        """One point per instance of each category."""
        return self.predict(images, task="pointing", categories=categories, **kwargs)

    def visual_prompt(self, images, boxes, **kwargs):
        """Objects like the example ``boxes`` (a list of boxes, or of groups, or name -> boxes)."""
        return self.predict(images, task="visual_prompting", visual_prompt=boxes, **kwargs)

    def keypoints(self, images, categories="person", keypoint_names=None, **kwargs):
        """Instance boxes and named keypoints (person, animal or hand lists by default)."""
        return self.predict(images, task="keypoint", categories=categories, keypoint_names=keypoint_names, **kwargs)

    def ocr(self, images, level: str = "text line", polygons: bool = False, **kwargs):
        """Text regions (``level``: "word" or "text line") with the recognised text as label."""
        return self.predict(images, task="ocr_polygon" if polygons else "ocr_box", categories=level, **kwargs)

    def gui(self, images, element: str, pointing: bool = False, **kwargs):
        """The box (or point) of a described GUI element."""
        return self.predict(images, task="gui_pointing" if pointing else "gui_grounding", categories=element, **kwargs)

    def predict(self, images, task: str = "detection", categories=None, *, negatives=None, negative_boxes=None,
                visual_prompt=None, keypoint_names=None, constrained: bool = True, scores: bool = True,
                max_boxes: int | None = None, max_new_tokens: int | None = None, batch_size: int = 8,
                progress: bool = False, negatives_in_prompt: bool = True, suppress: bool = False,
                suppress_beta: float = DEFAULT_BETA, suppress_threshold: float = DEFAULT_THRESHOLD, ood: bool = False,
                **generate_kwargs):
        """The general form. ``images``: one image or a list (path, URL, PIL, numpy or bytes).

        ``categories``, ``negatives``, ``negative_boxes``, ``visual_prompt`` and ``keypoint_names``
        are either shared by every image or given per image as a list of the same length.
        ``negatives="auto"``: look-alikes of the categories from the rule engine (docs/negatives.md).
        Detection only: ``suppress`` rescores every box against the negatives (NNC:
        ``sigmoid(S_pos - suppress_beta * max S_neg)``) and drops those under ``suppress_threshold``;
        ``ood`` adds ``result.ood_scores`` (high: in-distribution). ``negatives_in_prompt=False`` uses
        the negatives for that scoring only (for models never trained with negative conditioning).
        ``generate_kwargs`` go to ``generate`` (e.g. ``do_sample=True, temperature=1.0``).
        """
        task = canonical_task(task)
        if (suppress or ood) and task != "detection":
            raise ValueError(f"suppress and ood score detection boxes under phrases; task {task!r} has none")
        single = not isinstance(images, (list, tuple))
        requests = self.prepare(images, task, categories, negatives=negatives, negative_boxes=negative_boxes,
                                visual_prompt=visual_prompt, keypoint_names=keypoint_names,
                                negatives_in_prompt=negatives_in_prompt)
        n = len(requests)
        if n == 0:
            return []
        results = []
        chunks = range(0, n, max(1, batch_size))
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"rexomni {task}", unit="batch")
        for start in chunks:
            batch = self._run_batch(task, requests[start:start + batch_size], constrained=constrained,
                                    scores=scores, max_boxes=max_boxes, max_new_tokens=max_new_tokens,
                                    **generate_kwargs)
            if suppress or ood:
                batch = rescore(self, requests[start:start + batch_size], batch, suppress=suppress,
                                beta=suppress_beta, threshold=suppress_threshold, ood=ood)
            results += batch
        return results[0] if single else results

    __call__ = predict

    def score(self, images, answers, task: str = "detection", categories=None, *, negatives=None,
              negative_boxes=None, visual_prompt=None, keypoint_names=None):
        """Teacher-forced: the result the model gives ``answers`` (answer texts), with scores.

        The same prompts and score definition as :meth:`predict`, but the coordinate tokens are the
        given ones: how confident the model is in an answer it did not necessarily write.
        """
        import torch

        if self.model is None:
            raise NotImplementedError(f"teacher-forced score() needs the transformers backend, not {self.backend}")
        task = canonical_task(task)
        single = not isinstance(images, (list, tuple))
        answer_list = [answers] if single else list(answers)
        requests = self.prepare(images, task, categories, negatives=negatives, negative_boxes=negative_boxes,
                                visual_prompt=visual_prompt, keypoint_names=keypoint_names)
        if len(answer_list) != len(requests):
            raise ValueError(f"got {len(answer_list)} answers for {len(requests)} images")
        prompts = [self.chat_text(r["prompt"]) for r in requests]
        answer_ids = [self.tokenizer.encode(a, add_special_tokens=False) for a in answer_list]
        images_in = [r["image"] for r in requests]
        inputs = self.processor(text=[p + a for p, a in zip(prompts, answer_list)], images=images_in,
                                padding=True, return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, inputs["input_ids"][:, 1:, None])[..., 0]
        results = []
        for i, request in enumerate(requests):
            k = len(answer_ids[i])
            ids = inputs["input_ids"][i, -k:].tolist() if k else []
            row = logprobs[i, -k:].tolist() if k else []
            results.append(self._to_result(task, request, ids, row, int(inputs["attention_mask"][i].sum()) - k))
        return results[0] if single else results

    def prepare(self, images, task: str = "detection", categories=None, *, negatives=None, negative_boxes=None,
                visual_prompt=None, keypoint_names=None, negatives_in_prompt: bool = True) -> list[dict]:
        """Load the images and build each one's prompt: a list of requests with ``image`` (RGB PIL),
        ``width``, ``height``, ``prompt`` (the user text), ``phrases`` (the names it may answer),
        ``negatives`` (phrases; "auto" resolved) and ``negative_boxes`` (in the prompt unless
        ``negatives_in_prompt`` is False)."""
        task = canonical_task(task)
        image_list = list(images) if isinstance(images, (list, tuple)) else [images]
        n = len(image_list)
        return [
            self._request(task, image, _pick(categories, i, n, depth=1), _pick(negatives, i, n, depth=1),
                          _pick(negative_boxes, i, n, depth=1, boxes=True),
                          _pick(visual_prompt, i, n, depth=(1, 2), boxes=True),
                          _pick(keypoint_names, i, n, depth=1), negatives_in_prompt)
            for i, image in enumerate(image_list)
        ]

    # ------------------------------------------------------------------ internals
    def _request(self, task, image, categories, negatives, negative_boxes, visual_prompt, keypoint_names,
                 negatives_in_prompt: bool = True) -> dict:
        pil = load_image(image)
        width, height = pil.size
        if task == "keypoint":
            categories = categories or "person"
            if keypoint_names is None:
                key = categories if isinstance(categories, str) else categories[0]
                keypoint_names = KEYPOINT_NAMES.get(key, KEYPOINT_NAMES["person"])
        if isinstance(categories, str):
            categories = [categories]
        if task == "visual_prompting" and visual_prompt is not None and not isinstance(visual_prompt, dict):
            visual_prompt = _as_box_groups(visual_prompt)
        if negatives == "auto":
            negatives = auto_negatives(categories or [])
        prompt = build_prompt(task, categories or [], width=width, height=height, codec=self.codec,
                              visual_prompt=visual_prompt, keypoint_names=keypoint_names,
                              negatives=(negatives or ()) if negatives_in_prompt else (),
                              negative_boxes=(negative_boxes or ()) if negatives_in_prompt else ())
        if task == "visual_prompting":
            names = list(visual_prompt) if isinstance(visual_prompt, dict) else \
                [f"object_{i + 1}" for i in range(len(visual_prompt))]
        else:
            names = list(categories or [])
        return {"image": fit_aspect_ratio(pil), "width": width, "height": height, "prompt": prompt, "phrases": names,
                "negatives": list(negatives or ()), "negative_boxes": list(negative_boxes or ())}

    def chat_text(self, prompt: str) -> str:
        """The full model input text for one image and prompt (generation prompt included)."""
        return self.processor.apply_chat_template(build_messages(prompt, system=SYSTEM_PROMPT),
                                                  add_generation_prompt=True, tokenize=False)

    def _generation_settings(self, max_new_tokens, generate_kwargs) -> dict:
        if generate_kwargs.get("num_return_sequences", 1) != 1 or generate_kwargs.get("num_beams", 1) != 1:
            raise ValueError("one answer per image: repeat an image in the list to get several samples of it")
        settings = {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "repetition_penalty": 1.0,
                    **self.settings.generation}
        if max_new_tokens is not None:
            settings["max_new_tokens"] = max_new_tokens
        settings.update(generate_kwargs)
        return settings

    def _run_batch(self, task: str, requests: list[dict], *, constrained: bool, scores: bool,
                   max_boxes: int | None, max_new_tokens: int | None, **generate_kwargs) -> list[Result]:
        start = time.perf_counter()
        texts = [self.chat_text(r["prompt"]) for r in requests]
        gen = self._generation_settings(max_new_tokens, generate_kwargs)
        generations, timing = self.engine.generate(task, requests, texts, gen, constrained=constrained, scores=scores,
                                                   max_boxes=max_boxes)
        before_parse = time.perf_counter()
        results = [self._to_result(task, request, g.ids, g.logprobs, g.num_prompt_tokens)
                   for request, g in zip(requests, generations)]
        end = time.perf_counter()
        timing = {**timing, "postprocess_s": end - before_parse}
        for r in results:
            r.timing, r.seconds = dict(timing), (end - start) / len(results)
        return results

    def _to_result(self, task: str, request: dict, ids: list[int], logprobs: list[float] | None,
                   num_prompt_tokens: int) -> Result:
        text = decode_answer(self.tokenizer, ids)
        parsed = parse_output(text, request["width"], request["height"], self.codec)
        coord_logprobs = []
        for pos in range(_answer_length(self.tokenizer, ids)):
            b = self._coord_bin.get(ids[pos])
            if b is not None:
                lp = float(logprobs[pos]) if logprobs is not None else float("nan")
                coord_logprobs.append((b, lp))
        result = build_result(task, parsed, request["width"], request["height"], coord_logprobs, text)
        if logprobs is None:
            result.scores = np.full(len(result.labels), np.nan, dtype=np.float32)
        result.num_prompt_tokens = num_prompt_tokens
        result.num_generated_tokens = _generated_length(self.tokenizer, ids)
        return result


def _answer_length(tokenizer, ids: list[int]) -> int:
    """Index of the first end-of-turn token (the answer's end)."""
    stop = set(end_of_answer_ids(tokenizer))
    return next((i for i, t in enumerate(ids) if t in stop), len(ids))


def _generated_length(tokenizer, ids: list[int]) -> int:
    """Tokens generated, counting the end-of-turn token but not the padding after it."""
    n = _answer_length(tokenizer, ids)
    return min(n + 1, len(ids))


def _pick(value, i: int, n: int, depth, boxes: bool = False):
    """``value`` for image ``i``: shared, or per image when it is a list of ``n`` per-image values.

    ``depth`` is how many list levels one image's value has (see :func:`_nesting`), or a tuple of
    those allowed. ``boxes`` belong to one image, so a batch must give them per image.
    """
    if value is None or isinstance(value, (str, dict)):
        return value
    depths = depth if isinstance(depth, tuple) else (depth,)
    value = list(value)
    if len(value) == n and all(isinstance(v, dict) or _nesting(v) in depths for v in value):
        return value[i]
    if n > 1 and boxes and value:
        raise ValueError("boxes for a batch must be given per image: a list with one entry per image")
    return value


def _nesting(value) -> int:
    """List levels above the leaves: ``["a"]`` 1, ``[x0, y0, x1, y1]`` 0, a list of boxes 1."""
    depth = 0
    while isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0:
        value = value[0]
        depth += 1
    return depth if isinstance(value, str) else max(depth - 1, 0)


def _as_box_groups(boxes) -> list:
    """One box, a list of boxes, or a list of groups -> a list of groups."""
    arr_depth = _nesting(boxes)
    if arr_depth == 0:
        return [[list(boxes)]]
    if arr_depth == 1:
        return [[list(b) for b in boxes]]
    return [[list(b) for b in group] for group in boxes]
