"""Special tokens: the grammar's markers, the coordinate tokens `<0>`..`<999>` and the four negative
conditioning tokens; making a tokenizer ready for them and growing a model's embeddings to fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

OBJECT_REF_START = "<|object_ref_start|>"
OBJECT_REF_END = "<|object_ref_end|>"
BOX_START = "<|box_start|>"
BOX_END = "<|box_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"

NEG_REF_START = "<|neg_ref_start|>"
NEG_REF_END = "<|neg_ref_end|>"
NEG_BOX_START = "<|neg_box_start|>"
NEG_BOX_END = "<|neg_box_end|>"
NEGATIVE_TOKENS = (NEG_REF_START, NEG_REF_END, NEG_BOX_START, NEG_BOX_END)
# Each negative token starts from the embedding of the marker it mirrors.
NEGATIVE_COUNTERPARTS = {
    NEG_REF_START: OBJECT_REF_START,
    NEG_REF_END: OBJECT_REF_END,
    NEG_BOX_START: BOX_START,
    NEG_BOX_END: BOX_END,
}

NUM_BINS = 1000


def coord_token(b: int) -> str:
    return f"<{int(b)}>"


def coord_tokens(num_bins: int = NUM_BINS) -> list[str]:
    return [coord_token(i) for i in range(num_bins)]


@dataclass
class TokenIds:
    """Ids of the tokens the grammar needs, and which of them this call added."""

    coords: list[int]
    negatives: dict[str, int]
    markers: dict[str, int]
    added: list[str] = field(default_factory=list)


def coord_id_to_bin(tokenizer, num_bins: int = NUM_BINS) -> dict[int, int]:
    """Token id -> bin of the coordinate tokens ``<0>``..``<num_bins - 1>``."""
    return {tid: b for b, tid in enumerate(tokenizer.convert_tokens_to_ids(coord_tokens(num_bins)))}


def end_of_answer_ids(tokenizer) -> list[int]:
    """The tokens that end an answer: ``<|im_end|>``, and ``<|endoftext|>`` for models that write it instead."""
    return tokenizer.convert_tokens_to_ids([IM_END, END_OF_TEXT])


def prepare_tokenizer(tokenizer, num_bins: int = NUM_BINS) -> TokenIds:
    """Make a Qwen2-style tokenizer ready for rexomni, in place, and report the ids.

    Coordinate tokens are added only where absent (the released Rex-Omni tokenizer already has
    them) as plain, unnormalised added tokens: they survive ``skip_special_tokens=True`` and never
    split. The negative tokens are added as special tokens.
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing_coords = [t for t in coord_tokens(num_bins) if t not in vocab]
    if missing_coords:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing_coords])
    missing_neg = [t for t in NEGATIVE_TOKENS if t not in vocab]
    if missing_neg:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in missing_neg]},
            replace_extra_special_tokens=False,
        )
    ids = tokenizer.convert_tokens_to_ids
    markers = {t: ids(t) for t in (OBJECT_REF_START, OBJECT_REF_END, BOX_START, BOX_END, IM_END)}
    unknown = [t for t, i in markers.items() if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} lacks the Qwen marker tokens {unknown}")
    token_ids = TokenIds(
        coords=[ids(t) for t in coord_tokens(num_bins)],
        negatives={t: ids(t) for t in NEGATIVE_TOKENS},
        markers=markers,
        added=missing_coords + missing_neg,
    )
    bad = [t for t in coord_tokens(num_bins) if len(tokenizer.encode(t, add_special_tokens=False)) != 1]
    if bad:
        raise ValueError(f"coordinate tokens do not encode as single tokens: {bad[:5]}")
    return token_ids


def grow_embeddings(
    model, tokenizer, token_ids: TokenIds, *, ordinal_init: bool = True, pad_to_multiple_of: int = 64, seed: int = 0
) -> int:
    """Grow the input embeddings (and an untied lm_head) to hold every token id; never shrink.

    Rows at the ids of newly added tokens are initialised, never left random: coordinate rows from
    the mean embedding plus (``ordinal_init``) a smooth sinusoidal component of the bin index, so
    neighbouring bins start close together; negative tokens from the marker they mirror. Works on
    matrices that DeepSpeed ZeRO-3 has partitioned (they are gathered for the initialisation).
    Returns the number of rows afterwards.
    """
    import torch

    old_rows = _rows(model.get_input_embeddings().weight)
    needed = max(len(tokenizer), old_rows)
    rows = math.ceil(needed / pad_to_multiple_of) * pad_to_multiple_of
    if rows > old_rows:
        model.resize_token_embeddings(rows, mean_resizing=False)
    if not token_ids.added:
        return max(rows, old_rows)
    added = set(token_ids.added)
    new_coord = [(b, tid) for b, tid in enumerate(token_ids.coords) if coord_token(b) in added]
    new_neg = [(tok, tid) for tok, tid in token_ids.negatives.items() if tok in added]
    # Statistics come from the rows of tokens that existed before this call.
    known = sorted(set(range(min(old_rows, len(tokenizer)))) - {tid for _, tid in new_coord + new_neg})
    generator = torch.Generator().manual_seed(seed)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    matrices = [embed] if head is None or head.weight is embed else [embed, head.weight]
    with _gathered(matrices), torch.no_grad():
        for weight in matrices:
            base = weight[known].float()
            mean, std = base.mean(0), base.std(0).mean().clamp_min(1e-6)
            if new_coord:
                bins = torch.tensor([b for b, _ in new_coord], dtype=torch.float32)
                rows_init = mean.expand(len(new_coord), -1).clone()
                if ordinal_init:
                    rows_init += std * ordinal_features(bins / len(token_ids.coords), weight.shape[1])
                weight[[tid for _, tid in new_coord]] = rows_init.to(weight.dtype)
            for tok, tid in new_neg:
                src = weight[token_ids.markers[NEGATIVE_COUNTERPARTS[tok]]].float()
                # A small offset keeps the negative marker distinguishable from the positive one.
                noise = torch.randn(weight.shape[1], generator=generator) * 0.02 * std
                weight[tid] = (src + noise).to(weight.dtype)
    return rows


def _rows(weight) -> int:
    """Rows of an embedding matrix, also when DeepSpeed ZeRO-3 has partitioned it (local shape empty)."""
    return getattr(weight, "ds_shape", weight.shape)[0]


def _gathered(params):
    """The full matrices while the new rows are written: ZeRO-3 partitions them, so gather them
    (rank 0's writes are scattered back); a no-op for ordinary tensors."""
    import contextlib

    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)


def ordinal_features(position, dim: int):
    """Smooth features of a position in [0, 1): sines and cosines of low frequencies, unit RMS.

    The highest frequency turns by about 0.2 rad per bin at 1000 bins, so neighbours stay close
    while distant bins are far apart.
    """
    import torch

    half = dim // 2
    freqs = math.pi * torch.logspace(0, math.log10(64), half)
    angles = position[:, None] * freqs[None, :]
    features = torch.zeros(len(position), dim)
    features[:, 0 : 2 * half : 2] = torch.sin(angles)
    features[:, 1 : 2 * half : 2] = torch.cos(angles)
    return features * math.sqrt(2.0)  # each sin/cos pair has mean square 1/2 per element


def decode_answer(tokenizer, ids) -> str:
    """Token ids of a generated answer -> the text the parser reads.

    Grammar markers are always kept (whatever the tokenizer would skip), padding and everything
    after the first end-of-turn token are dropped, so the parse is the same however the caller
    would have decoded.
    """
    ids = [int(i) for i in ids]
    stop = set(end_of_answer_ids(tokenizer))
    if tokenizer.pad_token_id is not None:
        stop.add(tokenizer.pad_token_id)
    start = 0
    while start < len(ids) and ids[start] == tokenizer.pad_token_id:
        start += 1
    end = next((i for i in range(start, len(ids)) if ids[i] in stop), len(ids))
    return tokenizer.decode(ids[start:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
