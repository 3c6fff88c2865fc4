"""The synthetic scene engine: labels must be exact (boxes, masks, points, colours, relations)."""

import random

import numpy as np
import pytest
from rexomni.data_engines.masks import mask_bbox, rle_decode
from rexomni.data_engines.synth import (
    COLORS,
    MODES,
    OOD_KINDS,
    RELATIONS,
    SIZES,
    TRAIN_KINDS,
    background_of,
    generate_scene,
    vocabulary,
)


def test_same_seed_same_scene_other_seed_other_scene():
    a_img, a = generate_scene(7)
    b_img, b = generate_scene(random.Random(7))
    c_img, _ = generate_scene(8)
    assert a == b and a_img.tobytes() == b_img.tobytes()
    assert a_img.tobytes() != c_img.tobytes()


@pytest.mark.parametrize("mode", MODES)
def test_boxes_masks_points_are_exact(mode):
    for seed in range(8):
        image, sample = generate_scene(seed, (200, 160), mode)
        assert image.size == (200, 160) and (sample["width"], sample["height"]) == (200, 160)
        assert sample["objects"], f"{mode} scene {seed} is empty"
        for obj in sample["objects"]:
            mask = rle_decode(obj["mask"])
            assert mask.shape == (160, 200)
            assert mask_bbox(mask) == obj["bbox"]  # the box is the tight box of the visible pixels
            if "point" in obj:
                x, y = obj["point"]
                assert mask[int(y), int(x)], f"point {obj['point']} of {obj['phrase']} is off its mask"
        masks = [rle_decode(o["mask"]) for o in sample["objects"]]
        assert not np.any(np.sum(masks, axis=0) > 1), "objects overlap"


def test_at_least_six_kinds_and_held_out_kinds_stay_out():
    assert len(TRAIN_KINDS) >= 6 and not set(OOD_KINDS) & set(TRAIN_KINDS)
    seen = set()
    for seed in range(60):
        seen |= {o["attributes"]["kind"] for o in generate_scene(seed, 128)[1]["objects"]}
    assert seen == set(TRAIN_KINDS)
    ood = {o["attributes"]["kind"] for s in range(20) for o in generate_scene(s, 128, kinds=OOD_KINDS)[1]["objects"]}
    assert ood == set(OOD_KINDS)


def test_colour_names_match_the_pixels():
    for seed in range(20):
        image, sample = generate_scene(seed, 160, "single", granularity="color kind")
        pixels = np.asarray(image)
        for obj in sample["objects"]:
            x, y = (int(v) for v in obj["point"])
            named = np.array(COLORS[obj["attributes"]["color"]])
            assert np.abs(pixels[y, x].astype(int) - named).max() <= 12  # the colour jitter


def test_phrases_follow_one_granularity_and_absent_phrases_are_absent():
    for seed in range(20):
        _, sample = generate_scene(seed, 160, granularity="size color kind")
        for obj in sample["objects"]:
            a = obj["attributes"]
            assert obj["phrase"] == f"{a['size']} {a['color']} {a['kind']}"
        present = {o["phrase"] for o in sample["objects"]}
        assert present <= set(sample["categories"])
        assert len(set(sample["categories"]) - present) >= 1


def test_absent_change_keeps_the_other_attributes_of_a_present_shape():
    """``absent_change=["color"]``: every absent phrase is a present shape's kind in a colour not in the scene."""
    seen = 0
    for seed in range(20):
        _, sample = generate_scene(seed, 160, "single", granularity="color kind", num_objects=(1, 4),
                                   distractors=True, absent_change=["color"])
        present = {o["phrase"] for o in sample["objects"]}
        kinds = {o["attributes"]["kind"] for o in sample["objects"]}
        for phrase in set(sample["categories"]) - present:
            color, kind = phrase.split(" ", 1)
            assert kind in kinds and color in COLORS
            seen += 1
    assert seen >= 20
    with pytest.raises(ValueError, match="absent_change"):
        generate_scene(0, 160, "single", absent_change=["shade"])


def test_unrelated_absent_adds_vocabulary_phrases_absent_from_the_scene():
    """``unrelated_absent=4`` keeps the scene and its look-alikes and adds four phrases of the vocabulary
    that name nothing in it (nor a held-out shape); a [min, max] range is drawn per scene; anything else
    is refused."""
    for seed in range(10):
        kwargs = dict(granularity="color kind", num_objects=(1, 4), distractors=True, held_out=1)
        image, plain = generate_scene(seed, 160, "single", **kwargs)
        image_more, more = generate_scene(seed, 160, "single", unrelated_absent=4, **kwargs)
        assert image.tobytes() == image_more.tobytes() and more["objects"] == plain["objects"]
        drawn = {o["phrase"] for o in more["objects"]} | {h["phrase"] for h in more.get("held_out", [])}
        added = set(more["categories"]) - set(plain["categories"])
        assert len(added) == 4 and not added & drawn and added <= set(vocabulary("color kind"))
    assert len(vocabulary("size color kind")) == len(SIZES) * len(COLORS) * len(TRAIN_KINDS)
    counts = {len(generate_scene(seed, 160, "single", unrelated_absent=[0, 2], granularity="color kind")[1]
                  ["categories"]) - len(generate_scene(seed, 160, "single", granularity="color kind")[1]["categories"])
              for seed in range(30)}
    assert counts == {0, 1, 2}  # a range is drawn per scene
    for bad in (-1, [3, 1], [1, 2, 3], "4"):
        with pytest.raises(ValueError, match="unrelated_absent"):
            generate_scene(0, 160, "single", unrelated_absent=bad)


def _box_of_description(sample, desc):
    words = desc.removeprefix("the ").split()
    hits = [o for o in sample["objects"]
            if all(w in (o["attributes"]["size"], o["attributes"]["color"], o["attributes"]["kind"]) for w in words)]
    return hits


def test_referring_expressions_are_unique_and_relations_hold():
    relational = 0
    for seed in range(40):
        _, sample = generate_scene(seed, 224)
        for ref in sample["referring"]:
            relation = next((r for r in RELATIONS if f" {r} " in ref["phrase"]), None)
            if relation is None:
                hits = _box_of_description(sample, ref["phrase"])
                assert [h["bbox"] for h in hits] == [ref["bbox"]], ref["phrase"]
                continue
            relational += 1
            target_desc, anchor_desc = ref["phrase"].split(f" {relation} ")
            anchors = _box_of_description(sample, anchor_desc)
            assert len(anchors) == 1
            axis, sign = RELATIONS[relation]
            candidates = [o["bbox"] for o in _box_of_description(sample, target_desc)]
            a = anchors[0]["bbox"]
            holds = [b for b in candidates if (b[2 + axis] <= a[axis] if sign < 0 else b[axis] >= a[2 + axis])]
            assert holds == [ref["bbox"]], ref["phrase"]
    assert relational > 0


def test_hard_distractors_appear():
    pairs = 0
    for seed in range(30):
        objs = [o["attributes"] for o in generate_scene(seed, 224)[1]["objects"]]
        pairs += any(a is not b and (a["kind"] == b["kind"]) != (a["color"] == b["color"]) for a in objs for b in objs)
    assert pairs >= 20


def test_words_and_figures_carry_their_labels():
    _, ocr = generate_scene(1, 224, "ocr")
    for obj in ocr["objects"]:
        x0, y0, x1, y1 = obj["bbox"]
        assert obj["text"].isupper() and obj["polygon"] == [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    _, figures = generate_scene(1, 224, "keypoints")
    for obj in figures["objects"]:
        assert len(obj["keypoints"]) == 17
        x0, y0, x1, y1 = obj["bbox"]
        for x, y in obj["keypoints"].values():
            assert x0 - 1 <= x <= x1 + 1 and y0 - 1 <= y <= y1 + 1


def test_negative_phrases_name_present_distractors():
    found = 0
    for seed in range(20):
        _, sample = generate_scene(seed, 160, negative_prob=1.0)
        if "negatives" in sample:
            found += 1
            (neg,) = sample["negatives"]["phrases"]
            assert neg in {o["phrase"] for o in sample["objects"]}
    assert found > 10


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="mode"):
        generate_scene(0, mode="video")
    with pytest.raises(ValueError, match="kinds"):
        generate_scene(0, kinds=["dodecahedron"])
    with pytest.raises(ValueError, match="sizes"):
        generate_scene(0, sizes=["huge"])
    with pytest.raises(ValueError, match="sizes"):
        generate_scene(0, sizes=[])
    with pytest.raises(ValueError, match="backgrounds"):
        generate_scene(0, backgrounds=["sky"])


@pytest.mark.parametrize("mode", ["single", "shapes"])
def test_sizes_restrict_the_size_classes(mode):
    drawn = {o["attributes"]["size"] for s in range(30)
             for o in generate_scene(s, 112, mode, sizes=["large"], masks=False)[1]["objects"]}
    assert drawn == {"large"}


def test_backgrounds_restrict_the_background_kind():
    for seed in range(10):
        image, _ = generate_scene(seed, 64, "single", backgrounds=["plain"], masks=False)
        background = np.asarray(background_of(seed, 64, "single", backgrounds=["plain"]))
        assert len(np.unique(background.reshape(-1, 3), axis=0)) == 1, "a plain background is one colour"
        assert (np.asarray(image) != background).any(), "the objects are drawn on it"
