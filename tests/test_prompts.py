import json
import random
import re

import pytest

from rexomni import (
    ANIMAL_KEYPOINTS,
    HAND_KEYPOINTS,
    PERSON_KEYPOINTS,
    TASKS,
    TEMPLATES,
    TRAIN_POOLS,
    build_messages,
    build_prompt,
    sample_template,
)
from rexomni.tokens import NEG_BOX_END, NEG_BOX_START, NEG_REF_END, NEG_REF_START


def test_released_wording():
    assert build_prompt("detection", ["person", "dog"]) == (
        "Detect person, dog. Output the bounding box coordinates in [x0, y0, x1, y1] format."
    )
    assert build_prompt("pointing", "cup") == "Point to cup."
    assert build_prompt("ocr_box", "word") == "Detect all word and recognize them."
    kp = build_prompt("keypoint", "person")
    assert kp.startswith("Can you detect each person in the image") and "nose, left eye, right eye" in kp


def test_every_task_has_a_template_and_a_pool():
    assert set(TEMPLATES) == set(TASKS) == set(TRAIN_POOLS)
    for task in ("detection", "pointing"):
        assert len(set(TRAIN_POOLS[task])) >= 30
    for task, pool in TRAIN_POOLS.items():
        assert len(set(pool)) >= 5 and TEMPLATES[task] in pool
        placeholders = set(re.findall(r"{(\w+)}", TEMPLATES[task]))
        for template in pool:
            assert set(re.findall(r"{(\w+)}", template)) == placeholders, template


def test_sampled_templates_are_deterministic():
    a = [sample_template("detection", random.Random(3)) for _ in range(3)]
    assert a == [sample_template("detection", random.Random(3)) for _ in range(3)]
    prompt = build_prompt("detection", ["cat"], template=sample_template("detection", random.Random(1)))
    assert "cat" in prompt and "{" not in prompt


def test_keypoint_lists():
    assert len(PERSON_KEYPOINTS) == len(ANIMAL_KEYPOINTS) == 17 and len(HAND_KEYPOINTS) == 21
    assert len(set(HAND_KEYPOINTS)) == 21


def test_visual_prompt_with_several_groups():
    prompt = build_prompt(
        "visual_prompting",
        visual_prompt={"cat": [[0, 0, 50, 50]], "dog": [[50, 50, 100, 100], [0, 50, 10, 60]]},
        width=100,
        height=100,
    )
    groups = json.loads(re.search(r"({.*})", prompt).group(1))
    assert groups == {"cat": ["<0><0><500><500>"], "dog": ["<500><500><999><999>", "<0><500><100><600>"]}
    listed = build_prompt("visual_prompting", visual_prompt=[[[0, 0, 10, 10]]], width=100, height=100, codec="rexomni")
    assert '{"object_1": ["<0><0><99><99>"]}' in listed


def test_negative_conditioning():
    prompt = build_prompt(
        "detection",
        ["car"],
        negatives=["blue car", "toy car"],
        negative_boxes=[[0, 0, 10, 10], [5, 5, 20, 20]],
        width=100,
        height=100,
    )
    assert prompt.endswith(
        f"{NEG_REF_START}blue car{NEG_REF_END}{NEG_REF_START}toy car{NEG_REF_END}"
        f"{NEG_BOX_START}<0><0><100><100>,<50><50><200><200>{NEG_BOX_END}"
    )
    with pytest.raises(ValueError, match="width and height"):
        build_prompt("detection", ["car"], negative_boxes=[[0, 0, 1, 1]])


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown task 'segment'"):
        build_prompt("segment", ["a"])
    with pytest.raises(ValueError, match="at least one category"):
        build_prompt("detection", [])


def test_messages_shape():
    messages = build_messages("Point to cup.", answer="x")
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"][0] == {"type": "image"}
