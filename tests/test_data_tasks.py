"""Task builders: answers must parse back (with rexomni.grammar) into exactly the targets."""

import random

import numpy as np
import pytest
from rexomni.data_engines.masks import rle_encode
from rexomni.data_engines.synth import generate_scene
from rexomni.data_engines.tasks import BUILDERS, TASKS, TaskNotApplicable, build_example, look_alikes, point_of

from rexomni.codec import get_codec
from rexomni.grammar import parse_output
from rexomni.tokens import NEG_BOX_START, NEG_REF_START

MODE_TASKS = {"shapes": ["grounding", "referring", "pointing", "visual_prompting", "detect_all"],
              "keypoints": ["keypoints"], "ocr": ["ocr_box", "ocr_polygon"], "gui": ["gui_grounding", "gui_pointing"]}
TOL = 224 / 1000  # one bin


def test_every_task_is_built_and_parses_cleanly():
    assert sorted(t for ts in MODE_TASKS.values() for t in ts) == sorted(TASKS)
    for mode, tasks in MODE_TASKS.items():
        for seed in range(10):
            _, sample = generate_scene(seed, 224, mode, negative_prob=0.5)
            for task in tasks:
                for codec in ("center", "rexomni"):
                    ex = build_example(sample, task, random.Random(seed), codec=codec)
                    parsed = parse_output(ex["answer"], 224, 224, codec)
                    assert parsed.problems == [], (task, ex["answer"])
                    assert ex["prompt"] and ex["task"] == task and ex["width"] == 224


def test_same_seed_same_example():
    _, sample = generate_scene(3, 224)
    a = build_example(sample, "grounding", random.Random(5))
    assert a == build_example(sample, "grounding", 5) == BUILDERS["grounding"](sample, 5)
    assert any(build_example(sample, "grounding", s)["prompt"] != a["prompt"] for s in range(6, 12))


def test_grounding_answers_asked_phrases_in_order_with_none_for_absent():
    absent_seen = 0
    for seed in range(20):
        _, sample = generate_scene(seed, 224)
        ex = build_example(sample, "grounding", seed)
        parsed = parse_output(ex["answer"], 224, 224)
        assert list(parsed.phrases) == ex["phrases"]
        for phrase in ex["phrases"]:
            truth = sorted(o["bbox"] for o in sample["objects"] if o["phrase"] == phrase)
            got = sorted(item.coords for item in parsed.phrases[phrase])
            assert len(got) == len(truth)
            assert np.allclose(got, truth, atol=TOL)
            absent_seen += not truth
    assert absent_seen > 0


@pytest.mark.parametrize("task", ["grounding", "pointing"])
def test_absent_only_asks_requests_whose_every_phrase_is_answered_none(task):
    """By default one phrase of every request is present; ``absent_only`` is the share where none is."""
    def all_absent(options, seeds=range(60)):
        count = 0
        for seed in seeds:
            _, sample = generate_scene(seed, 224, "single", num_objects=(1, 4), distractors=True)
            ex = build_example(sample, task, seed, options=options)
            count += not ex["targets"]
        return count

    assert all_absent({}) == 0
    assert 5 <= all_absent({"absent_only": 0.3}) <= 35
    assert all_absent({"absent_only": 1.0}) >= 55  # every scene with a verified-absent phrase
    with pytest.raises(ValueError, match="absent_only"):
        build_example(generate_scene(0, 224)[1], task, 0, options={"absent_only": 2})


@pytest.mark.parametrize("task", ["grounding", "pointing"])
def test_present_only_asks_requests_without_absent_phrases(task):
    """By default most requests of a scene with look-alikes ask some of them; ``present_only`` is the
    share that asks none, and every phrase it asks is answered."""
    def none_absent(options, seeds=range(60)):
        count = 0
        for seed in seeds:
            _, sample = generate_scene(seed, 224, "single", num_objects=(1, 4), distractors=True)
            ex = build_example(sample, task, seed, options=options)
            answered = {t["phrase"] for t in ex["targets"]}
            count += answered == set(ex["phrases"])
        return count

    default = none_absent({})
    assert default <= 30
    assert default + 10 <= none_absent({"present_only": 0.5}) < 60
    assert none_absent({"present_only": 1.0}) == 60
    with pytest.raises(ValueError, match="present_only"):
        build_example(generate_scene(0, 224)[1], task, 0, options={"present_only": -0.1})


@pytest.mark.parametrize("task", ["grounding", "pointing"])
def test_answer_order_position_writes_present_groups_left_to_right_then_the_absent_ones(task):
    """The same request and targets either way; only the order of the groups changes."""
    reordered = 0
    for seed in range(20):
        _, sample = generate_scene(seed, 224, "single", num_objects=(2, 4), distractors=True)
        asked = build_example(sample, task, seed)
        ex = build_example(sample, task, seed, options={"answer_order": "position"})
        assert (ex["prompt"], ex["phrases"], ex["targets"]) == (asked["prompt"], asked["phrases"], asked["targets"])
        groups = parse_output(ex["answer"], 224, 224).phrases
        coords = {p: [item.coords for item in items] for p, items in groups.items()}
        assert coords == {p: [item.coords for item in items]  # dicts: equal whatever the order
                          for p, items in parse_output(asked["answer"], 224, 224).phrases.items()}
        present = [p for p in groups if groups[p]]
        assert list(groups) == present + [p for p in ex["phrases"] if not groups[p]]
        firsts = [min(item.coords[:2] for item in groups[p]) for p in present]
        assert firsts == sorted(firsts)
        reordered += list(groups) != asked["phrases"]
    assert reordered >= 5
    with pytest.raises(ValueError, match="answer_order"):
        build_example(generate_scene(0, 224)[1], task, 0, options={"answer_order": "random"})


def test_look_alikes_are_phrases_that_differ_from_another_in_one_word():
    assert look_alikes(["blue circle", "pink circle", "red square", "big red star"]) == ["blue circle", "pink circle"]
    assert look_alikes(["red square", "red star"]) == ["red square", "red star"]
    assert look_alikes(["circle", "red circle"]) == []


def test_referring_look_alike_asks_phrases_with_a_look_alike_in_the_image():
    """Drawn at random, about half the referring phrases of these scenes have a look-alike; with ``look_alike:
    1`` every one does where the scene has any."""
    def with_look_alike(options):
        count, scenes = 0, 0
        for seed in range(80):
            _, sample = generate_scene(seed, 224, "single", num_objects=(2, 4), distractors=True)
            confusable = look_alikes(sorted({o["phrase"] for o in sample["objects"]}))
            if confusable:
                scenes += 1
                count += build_example(sample, "referring", seed, options=options)["phrases"][0] in confusable
        return count, scenes

    drawn, scenes = with_look_alike({})
    assert scenes >= 30 and drawn < scenes * 0.85
    assert with_look_alike({"look_alike": 1.0}) == (scenes, scenes)
    with pytest.raises(ValueError, match="look_alike"):
        build_example(generate_scene(0, 224)[1], "referring", 0, options={"look_alike": -0.1})


def test_negatives_are_conditioned_on_and_never_answered():
    built = 0
    for seed in range(30):
        _, sample = generate_scene(seed, 224, negative_prob=1.0)
        if "negatives" not in sample:
            continue
        (negative,) = sample["negatives"]["phrases"]
        for task in ("grounding", "pointing", "referring", "visual_prompting"):
            try:
                ex = build_example(sample, task, seed)
            except TaskNotApplicable:
                continue
            built += 1
            assert f"{NEG_REF_START}{negative}" in ex["prompt"]
            assert (NEG_BOX_START in ex["prompt"]) == bool(sample["negatives"].get("boxes"))
            assert negative not in ex["phrases"]
            assert all(t.get("category", t["phrase"]) != negative for t in ex["targets"])
    assert built > 20


def test_pointing_uses_the_deepest_mask_point_else_the_box_centre():
    mask = np.zeros((100, 100), bool)
    mask[10:90, 10:30] = True   # an L shape: its box centre (30, 50) lies outside the mask
    mask[70:90, 10:90] = True
    obj = {"phrase": "ell", "bbox": [10, 10, 90, 90], "mask": rle_encode(mask)}
    x, y = point_of(obj, 100, 100)
    assert mask[int(y), int(x)]
    assert point_of({"phrase": "box", "bbox": [10, 20, 30, 60]}, 100, 100) == [20, 40]
    sample = {"image": "x.png", "width": 100, "height": 100, "objects": [obj]}
    ex = build_example(sample, "pointing", 0)
    (item,) = parse_output(ex["answer"], 100, 100).phrases["ell"]
    assert mask[int(item.coords[1]), int(item.coords[0])]


def test_visual_prompt_answers_every_instance():
    _, sample = generate_scene(0, 224, "single", granularity="kind", num_objects=(3, 3), kinds=["circle"])
    ex = build_example(sample, "visual_prompting", 1)
    assert '"object_1": ["<' in ex["prompt"]
    items = parse_output(ex["answer"], 224, 224).phrases["object_1"]
    assert len(items) == len(sample["objects"]) == 3


def test_keypoints_and_ocr_parse_back():
    _, figures = generate_scene(2, 224, "keypoints")
    ex = build_example(figures, "keypoints", 0, paraphrase=False)
    assert ex["prompt"].startswith("Can you detect each person")
    items = parse_output(ex["answer"], 224, 224).phrases["person"]
    assert len(items) == len(figures["objects"])
    nose = sorted(o["keypoints"]["nose"] for o in figures["objects"])
    assert np.allclose(sorted(i.keypoints["nose"] for i in items), nose, atol=TOL)

    _, words = generate_scene(2, 224, "ocr")
    ex = build_example(words, "ocr_polygon", 0)
    parsed = parse_output(ex["answer"], 224, 224)
    assert set(parsed.phrases) == {o["text"] for o in words["objects"]}
    assert all(item.kind == "polygon" for _, item in parsed.items())


def test_codec_is_honoured():
    _, sample = generate_scene(4, 224, "single", num_objects=(1, 1))
    (obj,) = sample["objects"]
    for codec in ("center", "rexomni"):
        ex = build_example(sample, "grounding", 0, codec=codec)
        bins = get_codec(codec).encode(np.array(obj["bbox"]), 224, 224).tolist()
        assert "".join(f"<{b}>" for b in bins) in ex["answer"]


def test_inapplicable_and_unknown_tasks():
    _, shapes = generate_scene(0, 128)
    for task in ("keypoints", "ocr_box"):
        with pytest.raises(TaskNotApplicable):
            build_example(shapes, task, 0)
    with pytest.raises(ValueError, match="unknown task"):
        build_example(shapes, "captioning", 0)
    empty = {"image": "x.png", "width": 10, "height": 10, "objects": []}
    with pytest.raises(TaskNotApplicable):
        build_example(empty, "grounding", 0)


def test_a_phrase_without_boxes_is_never_answered_none():
    sample = {"image": "x.png", "width": 100, "height": 100, "categories": ["cat", "dog", "bird"],
              "objects": [{"phrase": "cat", "bbox": [1, 1, 20, 20]}, {"phrase": "dog", "point": [50, 50]}]}
    for seed in range(20):
        ex = build_example(sample, "grounding", seed)
        assert "dog" not in ex["phrases"]
        parsed = parse_output(ex["answer"], 100, 100)
        assert parsed.phrases.get("cat", [None]) != []


def test_grounding_asks_the_whole_category_list_in_about_half_the_examples():
    """A detector is used with its full category list: about half the grounding examples ask every present
    phrase and every verified-absent one (eight here: look-alikes and unrelated phrases); the rest a random
    subset of each."""
    absent = ["fox", "owl", "emu", "elk", "yak", "ant", "bee", "eel"]
    sample = {"width": 100, "height": 100, "categories": ["cat", "dog", *absent],
              "objects": [{"phrase": p, "bbox": [10 * i, 10, 10 * i + 8, 20]} for i, p in enumerate(["cat", "dog"])]}
    asked = [build_example(sample, "grounding", random.Random(seed))["phrases"] for seed in range(400)]
    full = sum(sorted(a) == sorted(sample["categories"]) for a in asked) / len(asked)
    assert 0.45 < full < 0.7  # the full list is also a possible random subset
    assert all({"cat", "dog"} & set(a) for a in asked)  # at least one present phrase in every example
    assert any(len(a) == 1 for a in asked)
