"""What the rollouts look like, logged next to the rewards at every step: how often a box repeats one of its
phrase, how many boxes cover the whole image, how many tokens an item costs, how many items an answer has.

TRL already logs each reward (``rewards/<function>/mean``), the total, the completion lengths
(``completions/mean_length``, ``clipped_ratio``) and, with ``beta`` > 0, the KL (``kl``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rexomni.eval.boxes import box_area
from rexomni.eval.visual_prompt import DUPLICATE_IOU, duplicates

from rexomni.grammar import parse_output
from rexomni.tokens import decode_answer

from .rewards import MAX_COVER


def rollout_metrics(completion_ids: Sequence[Sequence[int]], rows: Sequence[dict], tokenizer) -> dict[str, float]:
    """``rollouts/<name>`` -> value over a batch of completions and their data set rows.

    - ``duplicate_rate``: share of boxes repeating an earlier box of their phrase (IoU > DUPLICATE_IOU);
    - ``image_covering_share``: share of boxes over ``MAX_COVER`` of the image;
    - ``tokens_per_box``: completion tokens per item written (boxes, points, polygons, instances);
    - ``items_per_answer``: items per completion.
    """
    boxes = repeated = covering = items = tokens = 0
    for ids, row in zip(completion_ids, rows):
        parsed = parse_output(decode_answer(tokenizer, ids), row["width"], row["height"],
                              row.get("coord_codec") or "center")
        tokens += len(ids)
        by_phrase: dict[str, list] = {}
        for phrase, item in parsed.items():
            items += 1
            if item.kind == "box":
                by_phrase.setdefault(phrase, []).append(item.coords)
        for phrase_boxes in by_phrase.values():
            array = np.asarray(phrase_boxes, dtype=np.float64)
            boxes += len(array)
            repeated += int(duplicates(array, DUPLICATE_IOU)[1])
            covering += int((box_area(array) > MAX_COVER * row["width"] * row["height"]).sum())
    out = {"rollouts/items_per_answer": items / max(len(rows), 1)}
    if items:
        out["rollouts/tokens_per_box"] = tokens / items
    if boxes:
        out["rollouts/duplicate_rate"] = repeated / boxes
        out["rollouts/image_covering_share"] = covering / boxes
    return out
