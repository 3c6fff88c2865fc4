"""Negative prompts at inference: look-alike phrases (``negatives="auto"``), teacher-forced scores of
each predicted box under prompt variants, training-free suppression (NNC) and an out-of-distribution
score (NegS-style). docs/negatives.md has the long form.

The score of a box under a variant is ``S = mean log p`` of its four coordinate tokens, teacher-forced
after the variant's prompt and the answer's opening ``<|object_ref_start|>NAME<|object_ref_end|><|box_start|>``.
A variant is a phrase (the released detection prompt for that phrase alone) or a group of negative
boxes (the released visual-prompting prompt with them as examples, answered as ``object_1``). Then

- NNC (T-Rex-Omni's Negating Negative Computing): ``p = sigmoid(S_pos - beta * max_i S_neg_i)``, S_pos
  under the box's own phrase, S_neg_i under each negative; boxes with ``p < threshold`` are dropped and
  the kept ones score ``p``. T-Rex-Omni's beta 0.3 weighs similarity logits; S here is a log-probability
  (<= 0), where only a difference is scale-free: with beta 1, ``p`` is the posterior of the box's phrase
  against its strongest negative (equal priors), and the default threshold 0.5 drops a box exactly when
  a negative explains it better than its own phrase. (Beta 0.3 kept a box only if ``S_pos >= 0.3 max
  S_neg``, which dropped nearly every box of an unsure model: docs/negatives.md.)
- OOD score: ``sigmoid(max_c S_c - max_i S_neg_i)``, the strongest response to an in-distribution label
  (every asked category) against the strongest response to a negative. NegS fuses ID and negative-label
  responses through a sigmoid; the max (not NegLabel's sum) keeps the score independent of how many
  negatives a request has. High: in-distribution.

Every variant of an image continues the same prefix (system turn, image, ``<|vision_end|>``): it is run
once per image and its KV cache is expanded over the variants (:func:`suffix_logprobs`), so neither the
image encoder nor the image tokens run again per variant. The SFT hinge loss (NNH, rexomni.sft.losses)
scores its pairs with the same function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .tokens import BOX_START, OBJECT_REF_END, OBJECT_REF_START, VISION_END

DEFAULT_BETA = 1.0        # the strongest negative's weight: p is a posterior over log-probabilities
DEFAULT_THRESHOLD = 0.5   # p >= 0.5  <=>  S_pos >= beta * max S_neg
AUTO_PER_CATEGORY = 2     # look-alikes that negatives="auto" adds per asked category
MAX_ROWS = 64             # variant rows per forward: bounds the expanded KV cache
NEGATIVE_BOXES_NAME = "object_1"  # the name a visual prompt's group is answered under


# --------------------------------------------------------------------------- look-alikes


@lru_cache(maxsize=1)
def _rule_foiler():
    # The rule engine lives with the data engines; it is offline (a YAML lexicon) and imported only
    # when negatives="auto" is used (docs/negatives.md: a departure from the core's import rule).
    from rexomni.data_engines.negatives_text import RuleFoiler

    return RuleFoiler()


def auto_negatives(categories: Sequence[str], per_category: int = AUTO_PER_CATEGORY) -> list[str]:
    """Look-alikes of ``categories`` from the rule engine, ``per_category`` each: one edit of a kind
    (colour, size, the category itself, ...) after another, so "red circle" gives "orange circle" and
    "red heart" rather than two colours. Deterministic; never one of the ``categories``."""
    asked = {c.lower() for c in categories}
    out: list[str] = []
    for category in categories:
        by_kind: dict[str, list[str]] = {}
        for foil in _rule_foiler().foils(category):
            by_kind.setdefault(foil.kind, []).append(foil.text)
        picked: list[str] = []
        for rank in range(max((len(v) for v in by_kind.values()), default=0)):
            for texts in by_kind.values():
                if len(picked) < per_category and rank < len(texts):
                    text = texts[rank]
                    if text.lower() not in asked and text not in out and text not in picked:
                        picked.append(text)
        out += picked
    return out


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """A prompt under which boxes are scored, and the name its answer group opens with."""

    prompt: str
    name: str

    @classmethod
    def phrase(cls, phrase: str) -> Variant:
        from .prompts import build_prompt

        return cls(build_prompt("detection", [phrase]), phrase)

    @classmethod
    def boxes(cls, boxes, width: float, height: float, codec) -> Variant:
        from .prompts import build_prompt

        prompt = build_prompt("visual_prompting", visual_prompt=[boxes], width=width, height=height, codec=codec)
        return cls(prompt, NEGATIVE_BOXES_NAME)

    def scoring_text(self, after_prompt: str, box: str = "") -> str:
        """What follows the image when ``box`` (coordinate tokens) is scored under this variant: the
        prompt, ``after_prompt`` (the chat template's end of the user turn and start of the answer) and
        the answer up to the box."""
        return f"{self.prompt}{after_prompt}{OBJECT_REF_START}{self.name}{OBJECT_REF_END}{BOX_START}{box}"


_PROMPT_MARK = "\u2063PROMPT\u2063"


def template_parts(chat_text) -> tuple[str, str]:
    """(everything through ``<|vision_end|>``: the prefix every variant shares, the text between the prompt
    and the answer) from ``chat_text(prompt) -> str``, the chat template of a model."""
    head, sep, rest = chat_text(_PROMPT_MARK).partition(VISION_END)
    before, mark, after_prompt = rest.partition(_PROMPT_MARK)
    if not sep or not mark or before:
        raise ValueError("the chat template must put the prompt right after the image (<|vision_end|>)")
    return head + sep, after_prompt


# --------------------------------------------------------------------------- scoring


def _core_module(model):
    """The Qwen2.5-VL base module (it owns ``get_rope_index`` and ``get_image_features``), through any
    wrapper (DDP, DeepSpeed, PEFT)."""
    for module in model.modules():
        if hasattr(module, "get_rope_index") and hasattr(module, "get_image_features"):
            return module
    raise TypeError(f"{type(model).__name__} holds no Qwen2.5-VL model (no get_rope_index)")


def _unwrap(model):
    """The module under DDP / DeepSpeed wrappers (each holds it as ``.module``): a DDP wrapper expects one
    forward per backward, so the extra passes go to the module it wraps. Its gradients still reach the
    wrapper's reduction, which hooks the parameters, not the forward; under ZeRO-3 the wrapped module's own
    hooks gather the partitioned parameters. (DeepSpeed's engine answers every attribute of the module it
    wraps, so only the type of ``.module`` tells a wrapper.)"""
    import torch

    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device):
    import torch

    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), length), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, length - len(row):] = torch.as_tensor(list(row), device=device)
            mask[i, length - len(row):] = 1
    return ids, mask


def suffix_logprobs(model, prefix: Mapping, rows: Sequence[int], suffixes: Sequence[Sequence[int]],
                    num_scored: int = 4, share_prefix: bool = True, max_rows: int = MAX_ROWS, pad_id: int = 0):
    """Mean log-probability of the last ``num_scored`` tokens of each suffix, suffix ``r`` continuing
    prefix row ``rows[r]``: a (len(rows),) float tensor, differentiable when grad is enabled.

    ``prefix``: ``input_ids`` and ``attention_mask`` LEFT-padded (every prefix ends in the last
    column), ``pixel_values`` and ``image_grid_thw`` of one image per row.

    ``share_prefix=True``: one forward over the prefixes fills a KV cache; it is expanded over the
    rows and the suffixes run on it, ``max_rows`` at a time. ``False``: one forward over the stacked
    (prefix + suffix) rows, the image still encoded once (its features are reused per row); the
    training hinge loss uses this under activation checkpointing, where transformers drops the KV
    cache inside checkpointed layers. Both give the same numbers (tests/test_negatives.py).
    """
    import torch

    if len(rows) != len(suffixes):
        raise ValueError(f"{len(rows)} rows but {len(suffixes)} suffixes")
    if not len(rows):
        return torch.zeros(0)
    if min(len(s) for s in suffixes) <= num_scored:
        raise ValueError(f"every suffix needs more than the {num_scored} scored tokens")
    core = _core_module(model)
    model = _unwrap(model)
    ids, mask = prefix["input_ids"], prefix["attention_mask"]
    device = ids.device
    if not bool(mask[:, -1].all()):
        raise ValueError("prefix rows must be left-padded: every prefix must end in the last column")
    image_token = model.config.image_token_id
    grid = prefix["image_grid_thw"]
    rows_t = torch.as_tensor(list(rows), dtype=torch.long, device=device)
    out = []
    if share_prefix:
        positions, _ = core.get_rope_index(ids, (ids == image_token).long(), grid, attention_mask=mask)
        prefix_out = model(input_ids=ids, attention_mask=mask, pixel_values=prefix["pixel_values"],
                           image_grid_thw=grid, mm_token_type_ids=(ids == image_token).long(), position_ids=positions,
                           use_cache=True, logits_to_keep=1)
        cache = prefix_out.past_key_values
        start = positions[0, :, -1] + 1  # text after the prefix continues 1-D from its last position
        for lo in range(0, len(rows), max_rows):
            index = rows_t[lo:lo + max_rows]
            suffix_ids, suffix_mask = _left_pad(suffixes[lo:lo + max_rows], pad_id, device)
            steps = (suffix_mask.cumsum(1) - 1).clamp_min(0)
            position_ids = (start[index, None] + steps).unsqueeze(0).expand(3, -1, -1)
            logits = model(input_ids=suffix_ids, attention_mask=torch.cat([mask[index], suffix_mask], 1),
                           position_ids=position_ids, past_key_values=_expand_cache(cache, index), use_cache=True,
                           logits_to_keep=num_scored + 1).logits
            out.append(_mean_scored(logits, suffix_ids, num_scored))
    else:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        features = core.get_image_features(prefix["pixel_values"], grid).pooler_output
        for lo in range(0, len(rows), max_rows):
            index = rows_t[lo:lo + max_rows]
            suffix_ids, suffix_mask = _left_pad(suffixes[lo:lo + max_rows], pad_id, device)
            full_ids = torch.cat([ids[index], suffix_ids], 1)
            full_mask = torch.cat([mask[index], suffix_mask], 1)
            mm = (full_ids == image_token).long()
            positions, _ = core.get_rope_index(full_ids, mm, grid[index], attention_mask=full_mask)
            encoded = BaseModelOutputWithPooling(pooler_output=[features[i] for i in index.tolist()])
            logits = model(input_ids=full_ids, attention_mask=full_mask, image_grid_thw=grid[index],
                           mm_token_type_ids=mm, position_ids=positions, mm_encoder_outputs={"image": encoded},
                           logits_to_keep=num_scored + 1).logits
            out.append(_mean_scored(logits, suffix_ids, num_scored))
    return torch.cat(out)


def _expand_cache(cache, index):
    """A new cache holding prefix row ``index[r]`` at row r (the prefix cache itself stays as it was)."""
    from transformers import DynamicCache

    return DynamicCache([(layer.keys[index], layer.values[index]) for layer in cache.layers])


def _mean_scored(logits, ids, num_scored: int):
    """Mean log p of the last ``num_scored`` tokens of ``ids`` from the last ``num_scored + 1`` logits."""
    import torch

    logprobs = torch.log_softmax(logits[:, :num_scored].float(), dim=-1)
    return logprobs.gather(2, ids[:, -num_scored:, None])[..., 0].mean(1)


# --------------------------------------------------------------------------- the detector's side


def request_negatives(request: Mapping, codec) -> list[Variant]:
    """The negative variants of one request: each negative phrase, and its negative boxes as one group."""
    variants = [Variant.phrase(p) for p in request.get("negatives") or ()]
    if request.get("negative_boxes"):
        variants.append(Variant.boxes(request["negative_boxes"], request["width"], request["height"], codec))
    return variants


def box_bins(result, codec) -> list[list[int]]:
    """The coordinate bins of each box of a detection ``result`` as the model wrote them (re-read from
    its raw text, so nothing is lost to decoding and re-encoding)."""
    from .grammar import parse_output

    parsed = parse_output(result.raw_text, result.width, result.height, codec)
    bins = [list(item.bins[:4]) for _, items in parsed.phrases.items() for item in items
            if item.kind in ("box", "keypoints")]
    if len(bins) != len(result.labels):
        raise RuntimeError(f"re-reading the answer gave {len(bins)} boxes for {len(result.labels)} results")
    return bins


def rescore(detector, requests: list[dict], results: list, *, suppress: bool = False, beta: float = DEFAULT_BETA,
            threshold: float = DEFAULT_THRESHOLD, ood: bool = False) -> list:
    """NNC and/or OOD scores for one batch of detection results (see the module docstring).

    Every box is scored under its own phrase (NNC), every asked category (OOD) and every negative of
    its request, in one prefix pass per image and batched suffix passes. ``suppress`` replaces the
    scores by NNC's ``p`` and drops the boxes under ``threshold``; ``ood`` sets ``result.ood_scores``.
    """
    import time

    import torch

    from .tokens import coord_token

    if detector.model is None:
        raise NotImplementedError(f"negative scoring needs the transformers model; the {detector.backend} "
                                  "backend only generates")
    start_time = time.perf_counter()
    tokenizer = detector.tokenizer
    plans = []  # per image: (variants: the named phrases then the negatives, how many are named, box bins)
    for i, (request, result) in enumerate(zip(requests, results)):
        negatives = request_negatives(request, detector.codec)
        if not negatives:
            raise ValueError(f"image {i}: suppress/ood need negatives (phrases, boxes or 'auto'), and it has none")
        overlap = set(request.get("negatives") or ()) & set(request["phrases"])
        if overlap:
            raise ValueError(f"image {i}: {sorted(overlap)} asked both as categories and as negatives")
        names = list(dict.fromkeys(list(result.labels) + (list(request["phrases"]) if ood else [])))
        variants = [Variant.phrase(p) for p in names] + negatives
        plans.append((variants, len(names), box_bins(result, detector.codec) if len(result) else []))

    prefix_text, after_prompt = template_parts(detector.chat_text)
    rows, suffixes = [], []
    for i, (variants, _, bins) in enumerate(plans):
        openings = [tokenizer.encode(v.scoring_text(after_prompt), add_special_tokens=False) for v in variants]
        for b in bins:  # the bins the model wrote, never re-encoded pixels
            box = tokenizer.convert_tokens_to_ids([coord_token(x) for x in b])
            for opening in openings:
                rows.append(i)
                suffixes.append(opening + box)
    scores = np.zeros(0, dtype=np.float64)
    if rows:
        with_boxes = sorted(set(rows))  # only images with boxes run their prefix
        images = [requests[i]["image"] for i in with_boxes]
        prefix = detector.processor(text=[prefix_text] * len(images), images=images, padding=True, padding_side="left",
                                    return_tensors="pt").to(detector.model.device)
        with torch.inference_mode():
            scores = suffix_logprobs(detector.model, prefix, [with_boxes.index(i) for i in rows], suffixes,
                                     pad_id=tokenizer.pad_token_id or 0).double().cpu().numpy()

    out, cursor = [], 0
    for (variants, n_names, bins), request, result in zip(plans, requests, results):
        count = len(bins) * len(variants)
        matrix = scores[cursor:cursor + count].reshape(len(bins), len(variants))
        cursor += count
        out.append(_apply(result, matrix, variants, n_names, request, suppress, beta, threshold, ood))
    seconds = time.perf_counter() - start_time
    for result in out:
        result.timing = {**result.timing, "negatives_s": seconds}
        result.seconds += seconds / len(out)
    return out


def _apply(result, matrix: np.ndarray, variants: list[Variant], n_names: int, request: Mapping, suppress: bool,
           beta: float, threshold: float, ood: bool):
    if not len(result):
        if ood:
            result.ood_scores = np.zeros(0, dtype=np.float32)
        return result
    negative = matrix[:, n_names:].max(1)
    column = {v.name: j for j, v in enumerate(variants[:n_names])}
    if ood:
        asked = [column[p] for p in request["phrases"]]
        result.ood_scores = _sigmoid(matrix[:, asked].max(1) - negative).astype(np.float32)
    if suppress:
        own = matrix[np.arange(len(result)), [column[label] for label in result.labels]]
        p = _sigmoid(own - beta * negative)
        result.scores = p.astype(np.float32)
        result = result.select(p >= threshold)
    return result


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))

