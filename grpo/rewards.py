"""Geometry-aware rewards of the GRPO stage, each in TRL's reward form.

    reward(prompts, completions, completion_ids=None, **columns) -> list[float | None]   # one per completion

| name         | function              | rewards                                                          | range      |
|--------------|-----------------------|------------------------------------------------------------------|------------|
| `box`        | `box_reward`          | one-to-one F1 blended with the IoU of matched boxes              | [0, 1]     |
| `absent`     | `absent_reward`       | asked phrases the image lacks left without items (`None`)        | [0, 1]     |
| `point`      | `point_reward`        | points inside their object's mask (else box), one-to-one F1      | [0, 1]     |
| `keypoint`   | `keypoint_reward`     | OKS of one-to-one matched instances, as an F1 weighted by OKS    | [0, 1]     |
| `format`     | `format_reward`       | an answer the grammar wrote: 1 / (1 + problems), 0 when unread   | [0, 1]     |
| `duplicates` | `duplicate_penalty`   | minus the share of boxes repeating one of their phrase           | [-1, 0]    |
| `full_image` | `full_image_penalty`  | minus the share of boxes covering the image when no object does  | [-1, 0]    |
| `truncation` | `truncation_penalty`  | -1 for an answer cut at the token limit                          | {-1, 0}    |
| `negatives`  | `negative_penalty`    | minus the share of items on a negative phrase or negative box    | [-1, 0]    |
| `confidence` | `ConfidenceReward`    | Brier skill of item scores at telling matched items from others  | [-3, 1]    |

``build_rewards({"box": 1.0, "format": 0.2, ...}, tokenizer, **options)`` gives TRL's ``reward_funcs`` and
``reward_weights``; ``REWARDS`` maps the names to the functions.

A reward returns ``None`` for a completion it does not apply to (the box reward on a pointing task, the absent
reward when no asked phrase is absent, the negative penalty without negatives): TRL leaves such a value out of
that reward's mean and adds nothing for it to the total, so multi-task batches are scored by what applies.

Data set columns (keyword lists, one value per completion; any other column is ignored):
``objects`` (the ground truth: sample-schema objects with ``phrase``, ``bbox`` in pixels, optional ``point``,
``mask`` (COCO RLE), ``keypoints``), ``categories`` (the phrases asked), ``negatives`` (``{"phrases": [...],
"boxes": [...]}`` or None), ``width`` and ``height`` (required), ``coord_codec`` (default ``"center"``),
``task`` (default ``"detection"``; any name or alias of :mod:`rexomni.tasks`).

Answers are read as evaluation reads them: ``parse_output``, then ``build_result``, then ``eval``'s matchers.
TRL decodes completions with ``skip_special_tokens=True``, which drops the grammar's markers; the parser reads
such text (its "no group markers" case, which the format reward then does not count). Given ``tokenizer``
(``build_rewards`` passes it on), the rewards decode ``completion_ids`` with ``decode_answer`` instead, markers
kept, and see exactly what the model wrote.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from rexomni.eval.boxes import box_area, box_iou, match
from rexomni.eval.data import Prediction
from rexomni.eval.example import ExampleScore, absent_answers, score_prediction
from rexomni.eval.keypoints import oks_matrix
from rexomni.eval.pointing import points_in_object
from rexomni.eval.visual_prompt import DUPLICATE_IOU, duplicates

from rexomni.grammar import ParsedOutput, parse_output
from rexomni.result import Result, build_result
from rexomni.tasks import Task, get_task
from rexomni.tokens import coord_id_to_bin, decode_answer, end_of_answer_ids

MAX_COVER = 0.95  # a box over this share of the image covers it (the released analysis's threshold)
# Parser problems (rexomni.grammar) that mean the answer was cut short, and the one that only says the
# special tokens were skipped in decoding.
_CUT_SHORT = ("truncated", "keypoint JSON incomplete")
_NO_MARKERS = "no group markers"
_ANY_OVERLAP = 1e-9  # a matching threshold that pairs any positive similarity


def answer_text(completion) -> str:
    """A completion as TRL passes it -> its text: a string as is; in the conversational form, the last message's
    content, a string or a list of ``{"type": "text", "text": ...}`` parts (other parts skipped)."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text")


@dataclass
class _Sample:
    """One completion read against its row of the data set."""

    task: Task
    parsed: ParsedOutput
    result: Result
    prediction: Prediction
    objects: list[dict]
    categories: list[str] | None
    negatives: dict
    width: float
    height: float
    problems: list[str]

    @property
    def kind(self) -> str:
        return self.task.item


def _samples(completions: Sequence, completion_ids: Sequence | None, tokenizer, columns: Mapping,
             coord_logprobs: Sequence | None = None) -> list[_Sample]:
    """Parse every completion with its row's size, codec and task; ``coord_logprobs`` (per completion, the
    (bin, log p) of its coordinate tokens) give the items their scores."""
    missing = [name for name in ("width", "height") if columns.get(name) is None]
    if missing:
        raise ValueError(f"the rewards need the data set columns {missing}, one value per completion")
    n = len(completions)
    markers_kept = tokenizer is not None and completion_ids is not None
    if markers_kept:
        texts = [decode_answer(tokenizer, ids) for ids in completion_ids]
    else:
        texts = [answer_text(c) for c in completions]

    def column(name: str) -> list:
        values = columns.get(name)
        return [None] * n if values is None else list(values)

    rows = zip(texts, column("objects"), column("categories"), column("negatives"), columns["width"],
               columns["height"], column("coord_codec"), column("task"), coord_logprobs or [None] * n)
    samples = []
    for text, objects, categories, negatives, width, height, codec, task, logprobs in rows:
        task = get_task(task or "detection")
        parsed = parse_output(text, width, height, codec or "center")
        result = build_result(task.name, parsed, width, height, logprobs or [], text)
        problems = [p for p in result.problems if markers_kept or not p.startswith(_NO_MARKERS)]
        if categories is not None and not task.free_phrases:
            known = {*categories, *(o["phrase"] for o in objects or [])}
            problems += [f"unknown phrase {p!r}" for p in parsed.phrases if p not in known]
        samples.append(_Sample(task, parsed, result, Prediction.from_result(result), list(objects or []),
                               categories, negatives or {}, width, height, problems))
    return samples


def _by_phrase(labels: Sequence[str], objects: Sequence[Mapping]) -> Iterator[tuple[list[int], list[int]]]:
    """(prediction indices, object indices) of each predicted phrase that some object has."""
    for phrase in dict.fromkeys(labels):
        gt = [j for j, o in enumerate(objects) if o["phrase"] == phrase]
        if gt:
            yield [i for i, label in enumerate(labels) if label == phrase], gt


# --------------------------------------------------------------------------- geometry


def box_reward(prompts, completions, completion_ids=None, *, iou_threshold: float = 0.5, iou_weight: float = 0.5,
               giou_shaping: float = 0.0, tokenizer=None, **columns) -> list[float | None]:
    """``(1 - iou_weight) * F1 + iou_weight * mean IoU of the matched pairs``, in [0, 1].

    Boxes are matched one to one within each phrase (``eval.example.score_prediction``: Hungarian at
    ``iou_threshold``), so a duplicate is a false positive that costs precision, a box under the wrong phrase
    matches nothing, and a sloppy box that still matches costs IoU. The best-IoU many-to-one reward of the
    released Rex-Omni recipe scores ten copies of a right box as one; here they score lower.

    An answer that matches nothing scores 0, so a group of near misses gives GRPO no signal. ``giou_shaping`` > 0
    then grades them: ``giou_shaping * mean over ground-truth boxes of the best (GIoU + 1) / 2`` against the
    boxes of the same phrase (0 for a ground truth without one). Keep it at most ``iou_weight * iou_threshold``
    (0.25 with the defaults), below the least an answer with one match earns, so a miss never beats a hit.

    Both empty (nothing to find, nothing given) is a perfect 1. None for point tasks; keypoint instances and
    polygons are scored by their boxes.
    """
    return [None if s.kind == "point" else _box_value(s, iou_threshold, iou_weight, giou_shaping)
            for s in _samples(completions, completion_ids, tokenizer, columns)]


def _box_value(s: _Sample, iou_threshold: float, iou_weight: float, giou_shaping: float) -> float:
    score = score_prediction(s.prediction, s.objects, iou_threshold)
    if score.tp == 0 and score.num_gt and giou_shaping:
        return giou_shaping * _best_giou(s)
    # Without pairs the IoU term follows F1: perfect when there was nothing to find and nothing was given.
    matched_iou = float(np.mean([iou for *_, iou in score.pairs])) if score.pairs else score.f1
    return (1 - iou_weight) * score.f1 + iou_weight * matched_iou


def _best_giou(s: _Sample) -> float:
    labels = np.asarray(s.prediction.labels, dtype=object)
    best = []
    for o in s.objects:
        if o.get("bbox") is None:
            continue
        same = s.prediction.boxes[labels == o["phrase"]]
        best.append(float(_giou(same, [o["bbox"]]).max() + 1) / 2 if len(same) else 0.0)
    return float(np.mean(best))


def _giou(a, b) -> np.ndarray:
    """Generalised IoU (N, M) in [-1, 1]: IoU minus the share of the enclosing box that neither box covers."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iou = box_iou(a, b)
    union = (box_area(a)[:, None] + box_area(b)[None, :]) / (1 + iou)  # intersection = iou * union
    hull_wh = np.maximum(a[:, None, 2:], b[None, :, 2:]) - np.minimum(a[:, None, :2], b[None, :, :2])
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hull > 0, iou - (hull - union) / hull, iou)


def point_reward(prompts, completions, completion_ids=None, *, tokenizer=None, **columns) -> list[float | None]:
    """F1 of points inside their object, in [0, 1]: a point is right inside the mask of an object of its phrase
    (else its polygon, else its box; ``eval.pointing.points_in_object``), each object taking one point, so a
    second point on one object is a false positive. None for tasks that do not answer points."""
    return [_point_score(s).f1 if s.kind == "point" else None
            for s in _samples(completions, completion_ids, tokenizer, columns)]


def _point_score(s: _Sample) -> ExampleScore:
    points, labels = s.prediction.points, s.prediction.labels
    objects = [o for o in s.objects if any(o.get(k) is not None for k in ("mask", "polygon", "bbox"))]
    score = ExampleScore(num_pred=len(points), num_gt=len(objects))
    for pred_index, gt_index in _by_phrase(labels, objects):
        inside = np.stack([points_in_object(points[pred_index], objects[j]) for j in gt_index], axis=1)
        m = match(None, None, 0.5, iou=inside.astype(np.float64))
        score.pairs += [(labels[pred_index[p]], pred_index[p], gt_index[g], 1.0) for p, g in zip(m.pred, m.gt)]
    return score


def keypoint_reward(prompts, completions, completion_ids=None, *, tokenizer=None, **columns) -> list[float | None]:
    """``2 * sum of matched OKS / (instances + objects)``, in [0, 1]: an F1 where each pair counts its OKS.

    Instances are paired one to one with the objects of their phrase by OKS (``eval.keypoints``, strict
    protocol: COCO's sigmas, the object's area); an extra instance costs as a false positive does, a joint left
    out counts as infinitely far. None for tasks that do not answer keypoints.
    """
    return [_keypoint_value(s) if s.kind == "keypoints" else None
            for s in _samples(completions, completion_ids, tokenizer, columns)]


def _keypoint_value(s: _Sample) -> float:
    instances = s.prediction.keypoints
    objects = [o for o in s.objects if o.get("keypoints") and o.get("bbox") is not None]
    labels = [inst["label"] for inst in instances]
    total = 0.0
    for pred_index, gt_index in _by_phrase(labels, objects):
        oks = oks_matrix([instances[i] for i in pred_index], [objects[j] for j in gt_index])
        total += float(match(None, None, _ANY_OVERLAP, iou=oks).iou.sum())
    count = len(instances) + len(objects)
    return 2 * total / count if count else 1.0


def absent_reward(prompts, completions, completion_ids=None, *, tokenizer=None, **columns) -> list[float | None]:
    """The share of asked phrases the image lacks that the answer left without items, in [0, 1].

    Saying ``None`` for an absent phrase is the answer; a box for it is a hallucination (the box reward counts
    it as a false positive too, this reward makes absence a goal of its own). A phrase simply left out also
    counts as not hallucinated. None when no asked phrase is absent (or ``categories`` is not given).
    """
    out = []
    for s in _samples(completions, completion_ids, tokenizer, columns):
        absent, answered = absent_answers(s.prediction, {"objects": s.objects, "categories": s.categories or []})
        out.append(1.0 - answered / absent if absent else None)
    return out


# --------------------------------------------------------------------------- form and behaviour


def format_reward(prompts, completions, completion_ids=None, *, tokenizer=None, **columns) -> list[float]:
    """``1 / (1 + problems)``, in [0, 1]: 1 for an answer exactly as the grammar writes it, 0 when nothing parses.

    Problems are the parser's (truncated group, odd coordinate count, stray text, ...), items of the wrong kind
    for the task, and phrases that are neither asked nor in the ground truth (unless the task's phrases are free
    text, as in OCR). A well-formed answer is what lets the other rewards read the model at all.
    """
    return [1.0 / (1 + len(s.problems)) if s.parsed.phrases else 0.0
            for s in _samples(completions, completion_ids, tokenizer, columns)]


def duplicate_penalty(prompts, completions, completion_ids=None, *, duplicate_iou: float = DUPLICATE_IOU,
                      tokenizer=None, **columns) -> list[float | None]:
    """Minus the share of boxes that repeat an earlier box of their phrase at IoU > ``duplicate_iou``, in [-1, 0].

    Repeating a box is the cheapest way to hedge; one-to-one matching already makes it a false positive, this
    names the behaviour on its own (``eval.visual_prompt.duplicates``). None for point tasks.
    """
    return [None if s.kind == "point" else _duplicate_value(s, duplicate_iou)
            for s in _samples(completions, completion_ids, tokenizer, columns)]


def _duplicate_value(s: _Sample, duplicate_iou: float) -> float:
    boxes, labels = s.prediction.boxes, np.asarray(s.prediction.labels, dtype=object)
    if not len(boxes):
        return 0.0
    repeated = sum(duplicates(boxes[labels == phrase], duplicate_iou)[1] for phrase in set(s.prediction.labels))
    return -repeated / len(boxes)


def full_image_penalty(prompts, completions, completion_ids=None, *, max_cover: float = MAX_COVER, tokenizer=None,
                       **columns) -> list[float | None]:
    """Minus the share of boxes covering more than ``max_cover`` of the image, when no ground-truth object does;
    in [-1, 0]. A box over everything overlaps every object a little: a degenerate way to chase IoU shaping and
    recall. None for point tasks."""
    return [None if s.kind == "point" else _full_image_value(s, max_cover)
            for s in _samples(completions, completion_ids, tokenizer, columns)]


def _full_image_value(s: _Sample, max_cover: float) -> float:
    limit = max_cover * s.width * s.height
    gt = [o["bbox"] for o in s.objects if o.get("bbox") is not None]
    if not len(s.prediction.boxes) or (gt and box_area(gt).max() > limit):
        return 0.0
    return -float(np.mean(box_area(s.prediction.boxes) > limit))


def truncation_penalty(prompts, completions, completion_ids=None, *, max_completion_length: int | None = None,
                       tokenizer=None, **columns) -> list[float]:
    """-1 for an answer cut at the token limit, else 0.

    A cut answer loses its last items and its end, and GRPO would otherwise credit the items it kept. With
    ``completion_ids`` and ``max_completion_length`` (an option such as TRL's ``GRPOConfig`` value, or a column),
    an answer is cut when it used every token without an end-of-answer token (``<|im_end|>``, ``<|endoftext|>``;
    without ``tokenizer`` the end tokens are unknown and using every token is enough). Otherwise the parser says
    so (a truncated group or item, keypoint JSON cut short); TRL's decoded text has lost the group markers, so
    pass the limit to catch cut detection answers.
    """
    samples = _samples(completions, completion_ids, tokenizer, columns)
    limits = (max_completion_length if isinstance(max_completion_length, (list, tuple))
              else [max_completion_length] * len(samples))
    ends = set(end_of_answer_ids(tokenizer)) if tokenizer is not None else set()
    out = []
    for i, s in enumerate(samples):
        if completion_ids is not None and limits[i] is not None:
            cut = len(completion_ids[i]) >= limits[i] and not ends.intersection(completion_ids[i])
        else:
            cut = any(p.startswith(_CUT_SHORT) for p in s.problems)
        out.append(-1.0 if cut else 0.0)
    return out


def negative_penalty(prompts, completions, completion_ids=None, *, iou_threshold: float = 0.5, tokenizer=None,
                     **columns) -> list[float | None]:
    """Minus the share of items that break the negative prompt, in [-1, 0]: an item under a negative phrase, or a
    box matching a negative box at IoU >= ``iou_threshold``. Negatives are look-alikes the prompt says not to
    find; answering them is the failure they exist to train away. None without negatives."""
    return [_negative_value(s, iou_threshold) for s in _samples(completions, completion_ids, tokenizer, columns)]


def _negative_value(s: _Sample, iou_threshold: float) -> float | None:
    phrases, boxes = set(s.negatives.get("phrases") or []), s.negatives.get("boxes") or []
    if not phrases and not boxes:
        return None
    labels = s.prediction.labels
    if not labels:
        return 0.0
    broken = np.array([label in phrases for label in labels])
    if boxes and len(s.prediction.boxes):
        broken |= box_iou(s.prediction.boxes, boxes).max(1) >= iou_threshold
    return -float(broken.mean())


class ConfidenceReward:
    """Brier skill of the item scores, in [-3, 1]: ``1 - mean((score - matched)^2) / 0.25``.

    An item's score is what ``rexomni.result`` gives it, the geometric mean probability of its coordinate
    tokens; ``matched`` is 1 for an item matched one to one (boxes at ``iou_threshold``, points inside their
    object). 1: right items sure and wrong ones unsure; 0: no better than scoring every item 0.5; negative:
    confidently wrong. Scores are what the detector API returns as confidence, so this trains them to rank.

    It needs the per-token log-probabilities of each completion as the keyword ``completion_logprobs`` (one
    float list per completion, aligned with ``completion_ids``; temperature 1, before any constraint). TRL does
    not give reward functions log-probabilities: the trainer must pass them. Without them every completion gets
    0.0 (neutral: no better and no worse than uninformative scores). An answer without items gets None.
    """

    def __init__(self, tokenizer, iou_threshold: float = 0.5):
        self.tokenizer = tokenizer
        self.iou_threshold = iou_threshold
        self.bin_of = coord_id_to_bin(tokenizer)

    def __call__(self, prompts, completions, completion_ids=None, completion_logprobs=None,
                 **columns) -> list[float | None]:
        if completion_ids is None or completion_logprobs is None:
            return [0.0] * len(completions)
        coord_logprobs = [[(self.bin_of[t], lp) for t, lp in zip(ids, lps) if t in self.bin_of]
                          for ids, lps in zip(completion_ids, completion_logprobs)]
        return [self._skill(s) for s in _samples(completions, completion_ids, self.tokenizer, columns, coord_logprobs)]

    def _skill(self, s: _Sample) -> float | None:
        scores = np.asarray(s.prediction.scores, dtype=np.float64)
        if not len(scores):
            return None
        score = _point_score(s) if s.kind == "point" else score_prediction(s.prediction, s.objects, self.iou_threshold)
        matched = np.zeros(len(scores))
        matched[[pair[1] for pair in score.pairs]] = 1.0
        return 1.0 - float(np.mean((scores - matched) ** 2)) / 0.25


# --------------------------------------------------------------------------- composition


REWARDS: dict[str, Callable] = {
    "box": box_reward,
    "absent": absent_reward,
    "point": point_reward,
    "keypoint": keypoint_reward,
    "format": format_reward,
    "duplicates": duplicate_penalty,
    "full_image": full_image_penalty,
    "truncation": truncation_penalty,
    "negatives": negative_penalty,
    "confidence": ConfidenceReward,
}


def build_rewards(weights: Mapping[str, float], tokenizer=None, **options) -> tuple[list[Callable], list[float]]:
    """``{name: weight}`` -> (``reward_funcs``, ``reward_weights``) for TRL's ``GRPOTrainer`` and ``GRPOConfig``.

    Each option goes to every chosen reward that takes it (``iou_threshold`` to box, negatives and confidence;
    ``iou_weight`` and ``giou_shaping`` to box; ``max_completion_length`` to truncation; ...), bound with
    ``functools.partial`` so TRL logs the reward under its function's name. ``tokenizer`` goes to all of them
    (answers are then decoded from ``completion_ids`` with the markers kept); ``confidence`` requires it.
    An unknown name, or an option no chosen reward takes, is an error rather than silently ignored.
    """
    unknown = [name for name in weights if name not in REWARDS]
    if unknown:
        raise ValueError(f"unknown rewards {unknown}; expected some of {list(REWARDS)}")
    funcs, taken = [], set()
    for name in weights:
        factory = REWARDS[name]
        accepted = inspect.signature(factory).parameters
        kwargs = {key: value for key, value in options.items() if key in accepted}
        taken |= kwargs.keys()
        if tokenizer is not None and "tokenizer" in accepted:
            kwargs["tokenizer"] = tokenizer
        if isinstance(factory, type):
            if tokenizer is None:
                raise ValueError(f"reward {name!r} needs a tokenizer")
            funcs.append(factory(**kwargs))
        else:
            funcs.append(functools.partial(factory, **kwargs) if kwargs else factory)
    unused = sorted(set(options) - taken)
    if unused:
        raise ValueError(f"options {unused} are taken by none of the rewards {list(weights)}")
    return funcs, [float(w) for w in weights.values()]
