"""GRPO rewards, hand-computed on a 100x100 image with the center codec.

Coordinates are chosen on the codec's grid (bin b decodes to (b + 0.5) / 10 pixels), so an answer written with
``format_answer`` reads back exactly the boxes it was written from.
"""

import functools
import math

import numpy as np
import pytest
from rexomni.data_engines.masks import rle_encode
from rexomni.eval.boxes import box_iou
from rexomni.grpo.rewards import (
    REWARDS,
    ConfidenceReward,
    absent_reward,
    answer_text,
    box_reward,
    build_rewards,
    duplicate_penalty,
    format_reward,
    full_image_penalty,
    keypoint_reward,
    negative_penalty,
    point_reward,
    truncation_penalty,
)

from rexomni import format_answer, format_keypoints
from rexomni.prompts import PERSON_KEYPOINTS

W = H = 100
CAT = [20.05, 20.05, 60.05, 60.05]        # bins 200, 200, 600, 600
SHIFTED = [40.05, 20.05, 80.05, 60.05]    # CAT moved by half its width: IoU 800 / 2400 = 1/3
FAR = [70.05, 70.05, 90.05, 90.05]        # 20x20, no overlap with CAT
WHOLE = [0.0, 0.0, 100.0, 100.0]          # bins 0, 0, 999, 999: decodes to 0.05 .. 99.95, 99.8% of the image
GT = [{"phrase": "cat", "bbox": CAT}]


def answer(*boxes, phrases=("cat", "dog"), phrase="cat"):
    return format_answer([{"phrase": phrase, "bbox": b} for b in boxes], W, H, phrases=list(phrases))


def call(reward, answers, objects, categories=("cat", "dog"), **columns):
    """``reward`` as TRL calls it: every column one value per completion, plus TRL's own keywords."""
    n = len(answers)
    rows = {"objects": objects, "categories": list(categories), "width": W, "height": H, **columns}
    return reward(prompts=["prompt"] * n, completions=list(answers), completion_ids=None, trainer_state=None,
                  log_metric=None, **{k: [v] * n for k, v in rows.items()})


def one(reward, text, objects, **columns):
    return call(reward, [text], objects, **columns)[0]


EXACT = answer(CAT)
TRUNCATED = EXACT[: EXACT.index("<|box_end|>")]  # cut after the cat's box: "truncated group 'cat'"
CASES = {  # name: (answer, ground truth); "dog" is asked in every case and never present
    "empty_gt": (EXACT, []),
    "empty_both": (answer(), []),
    "empty_answer": (answer(), GT),
    "exact": (EXACT, GT),
    "duplicates": (answer(CAT, CAT), GT),
    "shifted": (answer(SHIFTED), GT),
    "truncated": (TRUNCATED, GT),
}
EXPECTED = {
    # 0.5 * F1 + 0.5 * mean IoU of matched pairs; duplicates: precision 1/2, F1 2/3, the pair at IoU 1
    "box": {"empty_gt": 0.0, "empty_both": 1.0, "empty_answer": 0.0, "exact": 1.0, "duplicates": 0.5 * 2 / 3 + 0.5,
            "shifted": 0.0, "truncated": 1.0},
    # absent phrases left without items: dog always; with no ground truth cat is absent too (and boxed)
    "absent": {"empty_gt": 0.5, "empty_both": 1.0, "empty_answer": 1.0, "exact": 1.0, "duplicates": 1.0,
               "shifted": 1.0, "truncated": 1.0},
    # 1 / (1 + problems): the truncated answer has one
    "format": {"empty_gt": 1.0, "empty_both": 1.0, "empty_answer": 1.0, "exact": 1.0, "duplicates": 1.0,
               "shifted": 1.0, "truncated": 0.5},
    "duplicates": {"empty_gt": 0.0, "empty_both": 0.0, "empty_answer": 0.0, "exact": 0.0, "duplicates": -0.5,
                   "shifted": 0.0, "truncated": 0.0},
    "full_image": dict.fromkeys(CASES, 0.0),
    "truncation": {"empty_gt": 0.0, "empty_both": 0.0, "empty_answer": 0.0, "exact": 0.0, "duplicates": 0.0,
                   "shifted": 0.0, "truncated": -1.0},
    "negatives": dict.fromkeys(CASES),  # no negatives: does not apply
    "point": dict.fromkeys(CASES),      # a detection task: does not apply
    "keypoint": dict.fromkeys(CASES),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", EXPECTED)
def test_detection_cases(name, case):
    text, objects = CASES[case]
    assert one(REWARDS[name], text, objects) == pytest.approx(EXPECTED[name][case])


def test_ten_copies_score_lower_than_one():
    ten, single = answer(*[CAT] * 10), answer(CAT)
    # The released reward: each predicted box takes its best IoU with any ground truth, many to one.
    best_iou_many_to_one = box_iou([CAT] * 10, [CAT]).max(1).mean()
    assert best_iou_many_to_one == pytest.approx(1.0)
    # Ours: precision 1/10, F1 2/11, the one pair at IoU 1.
    assert one(box_reward, ten, GT) == pytest.approx(0.5 * 2 / 11 + 0.5)
    assert one(box_reward, ten, GT) < one(box_reward, single, GT) == pytest.approx(1.0)
    assert one(duplicate_penalty, ten, GT) == pytest.approx(-0.9)


def test_box_reward_blends_f1_and_iou():
    sloppy = [22.05, 20.05, 62.05, 60.05]  # shifted 2 px: IoU 38 * 40 / (3200 - 1520) = 1520 / 1680
    assert one(box_reward, answer(sloppy), GT) == pytest.approx(0.5 + 0.5 * 1520 / 1680)
    assert call(functools.partial(box_reward, iou_weight=0.0), [answer(sloppy)], GT) == pytest.approx([1.0])
    # at a stricter threshold the sloppy box no longer matches
    assert call(functools.partial(box_reward, iou_threshold=0.95), [answer(sloppy)], GT) == [0.0]
    # a box under the wrong phrase matches nothing
    assert one(box_reward, answer(CAT, phrase="dog"), GT) == 0.0


def test_box_reward_giou_shaping_grades_misses():
    shaped = functools.partial(box_reward, giou_shaping=0.25)
    # shifted: GIoU = IoU = 1/3 (the two boxes fill their hull), (1/3 + 1) / 2 = 2/3
    assert one(shaped, answer(SHIFTED), GT) == pytest.approx(0.25 * 2 / 3)
    # far: hull 70 x 70 = 4900, union 1600 + 400 = 2000, GIoU = -2900 / 4900
    assert one(shaped, answer(FAR), GT) == pytest.approx(0.25 * (1 - 2900 / 4900) / 2)
    assert one(shaped, answer(), GT) == 0.0             # nothing of the phrase: 0
    assert one(shaped, EXACT, GT) == pytest.approx(1.0)  # a match is scored as without shaping
    assert one(shaped, EXACT, []) == 0.0                 # no ground truth: nothing to shape towards


def test_geometry_rewards_skip_other_tasks():
    point = format_answer([{"phrase": "cat", "point": [30.05, 40.05]}], W, H, phrases=["cat", "dog"])
    for reward in (box_reward, duplicate_penalty, full_image_penalty):
        assert one(reward, point, GT, task="pointing") is None
    assert one(point_reward, point, GT, task="pointing") == 1.0
    assert one(keypoint_reward, point, GT, task="pointing") is None


# --------------------------------------------------------------------------- points

LEFT_HALF = np.zeros((H, W), dtype=np.uint8)
LEFT_HALF[20:60, 20:40] = 1  # the cat's mask fills the left half of its box
MASKED = [{"phrase": "cat", "bbox": CAT, "mask": rle_encode(LEFT_HALF)}]


def points(*xy):
    return format_answer([{"phrase": "cat", "point": p} for p in xy], W, H, phrases=["cat", "dog"])


POINT = points([30.05, 40.05])
POINT_CASES = {
    "empty_gt": (POINT, [], 0.0),
    "empty_both": (points(), [], 1.0),
    "empty_answer": (points(), MASKED, 0.0),
    "exact": (POINT, MASKED, 1.0),
    "duplicates": (points([30.05, 40.05], [35.05, 45.05]), MASKED, 2 / 3),  # one object, two points: F1 2/3
    "shifted": (points([50.05, 40.05]), MASKED, 0.0),  # moved half the box width: in the box, out of the mask
    "truncated": (POINT[: POINT.index("<|box_end|>")], MASKED, 1.0),  # cut after the cat's point
}


@pytest.mark.parametrize("case", POINT_CASES)
def test_point_reward(case):
    text, objects, expected = POINT_CASES[case]
    assert one(point_reward, text, objects, task="pointing") == pytest.approx(expected)


def test_point_reward_uses_the_box_without_a_mask():
    assert one(point_reward, points([50.05, 40.05]), GT, task="pointing") == 1.0


# --------------------------------------------------------------------------- keypoints

JOINTS = PERSON_KEYPOINTS[:2]  # nose (COCO sigma 0.026), left eye (0.025)
PERSON = {"phrase": "person", "bbox": CAT, "keypoints": {"nose": [30.05, 30.05], "left eye": [40.05, 30.05]}}
NOSE_2PX = {**PERSON, "keypoints": {**PERSON["keypoints"], "nose": [32.05, 30.05]}}
# OKS of a nose 2 px off: exp(-d^2 / (2 * area * (2 sigma)^2)) with the box area 40 * 40; the eye scores 1
NOSE_OKS = math.exp(-4 / (2 * 1600 * (2 * 0.026) ** 2))


def keypoints(*objects):
    return format_keypoints(list(objects), W, H, JOINTS)


EXACT_KP = keypoints(PERSON)
KEYPOINT_CASES = {
    "empty_gt": (EXACT_KP, [], 0.0),
    "empty_both": (keypoints(), [], 1.0),
    "empty_answer": (keypoints(), [PERSON], 0.0),
    "exact": (EXACT_KP, [PERSON], 1.0),
    "duplicates": (keypoints(PERSON, PERSON), [PERSON], 2 / 3),  # 2 * 1 / (2 + 1)
    "shifted": (keypoints(NOSE_2PX), [PERSON], (NOSE_OKS + 1) / 2),
    # cut inside the eye's coordinates: the instance keeps its box and nose, the eye counts as infinitely far
    "truncated": (EXACT_KP[: EXACT_KP.index('"left eye"') + 14], [PERSON], 1 / 2),
}


@pytest.mark.parametrize("case", KEYPOINT_CASES)
def test_keypoint_reward(case):
    text, objects, expected = KEYPOINT_CASES[case]
    assert one(keypoint_reward, text, objects, task="keypoints", categories=["person"]) == pytest.approx(expected)


def test_keypoint_answers_cut_short_are_truncated():
    text = KEYPOINT_CASES["truncated"][0]
    assert one(truncation_penalty, text, [PERSON], task="keypoints", categories=["person"]) == -1.0
    assert one(truncation_penalty, EXACT_KP, [PERSON], task="keypoints", categories=["person"]) == 0.0


# --------------------------------------------------------------------------- format and behaviour


@pytest.mark.parametrize("text, expected", [
    ("", 0.0),                                           # nothing parses
    ("I see a cat.", 0.0),
    (EXACT.replace("<600><600>", "<600>"), 0.5),         # an item with 3 coordinates
    (answer(CAT, phrases=["cat", "bird"]), 0.5),         # bird was not asked
    (TRUNCATED.replace("cat", "bird"), 1 / 3),           # unknown phrase and truncated group
    (EXACT + "<|im_end|>", 1.0),
])
def test_format_reward(text, expected):
    assert one(format_reward, text, GT) == pytest.approx(expected)


def test_format_reward_counts_items_of_the_wrong_kind():
    assert one(format_reward, EXACT, GT, task="pointing") == 0.5  # boxes where points were asked


def test_duplicate_penalty_threshold_and_phrases():
    near = [21.05, 20.05, 61.05, 60.05]  # IoU 39 * 40 / (3200 - 1560) = 0.95
    assert one(duplicate_penalty, answer(CAT, near), GT) == -0.5
    assert one(duplicate_penalty, answer(CAT, SHIFTED), GT) == 0.0
    two_phrases = format_answer([{"phrase": "cat", "bbox": CAT}, {"phrase": "dog", "bbox": CAT}], W, H)
    assert one(duplicate_penalty, two_phrases, GT) == 0.0


def test_full_image_penalty():
    assert one(full_image_penalty, answer(WHOLE), GT) == -1.0
    assert one(full_image_penalty, answer(CAT, WHOLE), GT) == -0.5
    assert one(full_image_penalty, answer(WHOLE), []) == -1.0
    assert one(full_image_penalty, answer(WHOLE), [{"phrase": "cat", "bbox": WHOLE}]) == 0.0


def test_truncation_from_completion_ids(test_tokenizer):
    ids = test_tokenizer.encode(EXACT, add_special_tokens=False)
    end = test_tokenizer.convert_tokens_to_ids("<|im_end|>")

    def penalty(completion_ids, limit, tokenizer=test_tokenizer, **columns):
        return truncation_penalty([""], [EXACT], [completion_ids], max_completion_length=limit, tokenizer=tokenizer,
                                  width=[W], height=[H], **columns)[0]

    assert penalty(ids, len(ids)) == -1.0                 # every token used, no end
    assert penalty(ids[:-1] + [end], len(ids)) == 0.0     # ended on the last token allowed
    assert penalty(ids, len(ids) + 1) == 0.0              # stopped before the limit
    assert penalty(ids + [end], len(ids) + 1, None) == -1.0  # without a tokenizer, using every token is enough
    assert penalty(ids, [len(ids)]) == -1.0               # the limit as a column
    assert penalty(ids, None) == 0.0                      # no limit: the parser finds the answer complete


def test_negative_penalty():
    negatives = {"phrases": ["toy cat"], "boxes": [FAR]}
    nudged = [71.05, 70.05, 91.05, 90.05]  # IoU with FAR 19 * 20 / (800 - 380) = 0.90
    on_phrase = format_answer([{"phrase": "cat", "bbox": CAT}, {"phrase": "toy cat", "bbox": SHIFTED}], W, H)
    assert one(negative_penalty, answer(CAT), GT, negatives=negatives) == 0.0
    assert one(negative_penalty, answer(), GT, negatives=negatives) == 0.0
    assert one(negative_penalty, answer(CAT, nudged), GT, negatives=negatives) == -0.5
    assert one(negative_penalty, on_phrase, GT, negatives=negatives) == -0.5
    assert one(negative_penalty, answer(CAT, nudged), GT, negatives={"phrases": ["toy cat"]}) == 0.0
    assert one(negative_penalty, answer(CAT, FAR), GT, negatives=None) is None


# --------------------------------------------------------------------------- reading completions


def test_answer_text_reads_both_forms():
    assert answer_text(EXACT) == EXACT
    assert answer_text([{"role": "assistant", "content": EXACT}]) == EXACT
    parts = [{"type": "text", "text": EXACT[:10]}, {"type": "image"}, {"type": "text", "text": EXACT[10:]}]
    assert answer_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": parts}]) == EXACT
    assert call(box_reward, [[{"role": "assistant", "content": EXACT}]], GT) == pytest.approx([1.0])


def test_text_without_markers_reads_as_with_them(test_tokenizer):
    """TRL decodes with skip_special_tokens=True, which drops the markers; given the tokenizer, the rewards
    decode the ids themselves and keep them. Both read the same answer."""
    ids = test_tokenizer.encode(answer(CAT, CAT) + "<|im_end|>", add_special_tokens=False)
    trl_text = test_tokenizer.decode(ids, skip_special_tokens=True)
    assert "<|box_start|>" not in trl_text
    for reward, expected in ((format_reward, 1.0), (box_reward, 0.5 * 2 / 3 + 0.5), (absent_reward, 1.0)):
        plain = call(reward, [trl_text], GT)
        exact = reward([""], [trl_text], [ids], tokenizer=test_tokenizer, objects=[GT], categories=[["cat", "dog"]],
                       width=[W], height=[H])
        assert plain == exact == pytest.approx([expected])


def test_rewards_need_the_image_size():
    with pytest.raises(ValueError, match="width"):
        box_reward([""], [EXACT], objects=[GT])


# --------------------------------------------------------------------------- confidence


def scored(tokenizer, text, probabilities):
    """Ids of ``text`` and their log-probabilities: the k-th coordinate token gets ``probabilities[k]``."""
    ids = tokenizer.encode(text + "<|im_end|>", add_special_tokens=False)
    coords = set(tokenizer.convert_tokens_to_ids([f"<{b}>" for b in range(1000)]))
    probs = iter(probabilities)
    return ids, [math.log(next(probs)) if t in coords else 0.0 for t in ids]


def test_confidence_rewards_ranking(test_tokenizer):
    reward = ConfidenceReward(test_tokenizer)
    text = answer(CAT, FAR)  # CAT is written first (smaller x0) and matches; FAR does not

    def skill(probabilities, objects=GT):
        ids, logprobs = scored(test_tokenizer, text, probabilities)
        return reward([""], [text], [ids], completion_logprobs=[logprobs], objects=[objects], width=[W], height=[H])[0]

    # geometric means: CAT sqrt(0.81 * 1) = 0.9, FAR 0.1; Brier (0.1^2 + 0.1^2) / 2 = 0.01, skill 1 - 0.01 / 0.25
    assert skill([0.81, 1.0, 0.81, 1.0] + [0.1] * 4) == pytest.approx(0.96)
    # confidently wrong: Brier (0.9^2 + 0.9^2) / 2 = 0.81
    assert skill([0.1] * 4 + [0.9] * 4) == pytest.approx(1 - 0.81 / 0.25)
    # every box scored 0.5: no better than uninformative
    assert skill([0.5] * 8) == pytest.approx(0.0)
    # no ground truth: both boxes unmatched, Brier (0.9^2 + 0.1^2) / 2 = 0.41
    assert skill([0.9] * 4 + [0.1] * 4, objects=[]) == pytest.approx(1 - 0.41 / 0.25)


def test_confidence_is_neutral_without_logprobs_or_items(test_tokenizer):
    reward = ConfidenceReward(test_tokenizer)
    assert call(reward, [EXACT, answer()], GT) == [0.0, 0.0]  # no log-probs: neutral
    ids, logprobs = scored(test_tokenizer, answer(), [])
    got = reward([""], [answer()], [ids], completion_logprobs=[logprobs], objects=[GT], width=[W], height=[H])
    assert got == [None]  # nothing to score


def test_confidence_on_points(test_tokenizer):
    text = points([30.05, 40.05], [50.05, 40.05])  # in the mask, then out of it
    ids, logprobs = scored(test_tokenizer, text, [0.9] * 2 + [0.1] * 2)
    got = ConfidenceReward(test_tokenizer)([""], [text], [ids], completion_logprobs=[logprobs], objects=[MASKED],
                                           task=["pointing"], width=[W], height=[H])
    assert got == pytest.approx([0.96])


# --------------------------------------------------------------------------- composition


def test_build_rewards_binds_options(test_tokenizer):
    funcs, weights = build_rewards({"box": 1.0, "format": 0.2, "truncation": 0.5, "confidence": 0.1},
                                   test_tokenizer, iou_threshold=0.75, max_completion_length=64)
    assert weights == [1.0, 0.2, 0.5, 0.1]
    box, fmt, cut, confidence = funcs
    assert box.func is box_reward and box.keywords == {"iou_threshold": 0.75, "tokenizer": test_tokenizer}
    assert fmt.keywords == {"tokenizer": test_tokenizer}
    assert cut.keywords == {"max_completion_length": 64, "tokenizer": test_tokenizer}
    assert isinstance(confidence, ConfidenceReward) and confidence.iou_threshold == 0.75
    # without a tokenizer the plain functions come back as they are
    assert build_rewards({"box": 1.0, "absent": 0.5}) == ([box_reward, absent_reward], [1.0, 0.5])


def test_build_rewards_rejects_mistakes():
    with pytest.raises(ValueError, match="unknown rewards"):
        build_rewards({"bxo": 1.0})
    with pytest.raises(ValueError, match="iou_wieght"):
        build_rewards({"box": 1.0}, iou_wieght=0.3)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        build_rewards({"confidence": 1.0})
