import json
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rexomni import format_answer, format_keypoints, parse_output
from rexomni.tokens import BOX_END, BOX_START, OBJECT_REF_END, OBJECT_REF_START

MARKERS = [OBJECT_REF_START, OBJECT_REF_END, BOX_START, BOX_END]
RELEASED = (
    "<|object_ref_start|>person<|object_ref_end|><|box_start|><12><412><339><568>,<92><55><179><378>"
    "<|box_end|>, <|object_ref_start|>dog<|object_ref_end|><|box_start|>None<|box_end|><|im_end|>"
)
SLOW_DECODE = " <|object_ref_start|> text line <|object_ref_end|> <|box_start|> <44> <3> <120> <15> <|box_end|>"


def boxes(parsed, phrase):
    return [item.coords for item in parsed.phrases[phrase]]


def test_reads_the_released_output():
    p = parse_output(RELEASED, 640, 480, codec="rexomni")
    assert p.problems == []
    assert list(p.phrases) == ["person", "dog"]
    assert p.phrases["dog"] == []
    assert [i.bins for i in p.phrases["person"]] == [[12, 412, 339, 568], [92, 55, 179, 378]]
    assert [RELEASED[slice(*i.span)] for i in p.phrases["person"]] == ["<12><412><339><568>", "<92><55><179><378>"]
    assert boxes(p, "person")[0] == pytest.approx([12 / 999 * 640, 412 / 999 * 480, 339 / 999 * 640, 568 / 999 * 480])


def test_reads_slow_tokenizer_spacing():
    p = parse_output(SLOW_DECODE, 1000, 1000, codec="rexomni")
    assert p.problems == []
    assert [i.bins for i in p.phrases["text line"]] == [[44, 3, 120, 15]]
    assert SLOW_DECODE[slice(*p.phrases["text line"][0].span)] == "<44> <3> <120> <15>"


def test_same_parse_with_special_tokens_skipped():
    skipped = RELEASED
    for marker in (OBJECT_REF_START, OBJECT_REF_END, BOX_START, BOX_END, "<|im_end|>"):
        skipped = skipped.replace(marker, "")
    full, bare = parse_output(RELEASED, 640, 480), parse_output(skipped, 640, 480)
    assert {k: [i.coords for i in v] for k, v in bare.phrases.items()} == {
        k: [i.coords for i in v] for k, v in full.phrases.items()
    }


def test_truncated_last_group_is_read():
    text = RELEASED.split(", <|object_ref_start|>dog")[0].replace("<|box_end|>", "")
    p = parse_output(text + ",<5><6><7>", 100, 100)
    assert [i.bins for i in p.phrases["person"]] == [[12, 412, 339, 568], [92, 55, 179, 378]]
    assert any("truncated" in s for s in p.problems)


def test_odd_counts_swapped_corners_big_numbers_and_stray_text():
    text = (
        f"hello {OBJECT_REF_START}a{OBJECT_REF_END}{BOX_START}<1><2><3>,<50><60><10><20>,<5><5><1500><9>{BOX_END}"
        f" junk {OBJECT_REF_START}b{OBJECT_REF_END}{BOX_START}<1><2> x <3><4>{BOX_END}"
    )
    p = parse_output(text, 100, 100)
    a = p.phrases["a"]
    assert [i.kind for i in a] == ["box", "box"]
    assert a[0].coords == pytest.approx([1.05, 2.05, 5.05, 6.05])  # reordered corners
    assert max(a[1].coords) < 100
    joined = " | ".join(p.problems)
    for expected in (
        "3 coordinates",
        "reordered",
        "clamped",
        "stray text 'hello'",
        "stray text 'junk'",
        "stray text 'x'",
    ):
        assert expected in joined
    assert [i.kind for i in p.phrases["b"]] == ["box"]


def test_phrase_containing_angle_bracket_and_comma():
    text = f"{OBJECT_REF_START}a <b>, c{OBJECT_REF_END}{BOX_START}<1><2><3><4>{BOX_END}"
    p = parse_output(text, 10, 10)
    assert list(p.phrases) == ["a <b>, c"] and p.problems == []


def test_points_and_polygons():
    text = (
        f"{OBJECT_REF_START}cup{OBJECT_REF_END}{BOX_START}<10><20>,<30><40>{BOX_END}, "
        f"{OBJECT_REF_START}OPEN{OBJECT_REF_END}{BOX_START}<0><0><100><0><100><50><0><50>{BOX_END}"
    )
    p = parse_output(text, 1000, 1000)
    assert [i.kind for i in p.phrases["cup"]] == ["point", "point"]
    poly = p.phrases["OPEN"][0]
    assert poly.kind == "polygon" and len(poly.coords) == 4 and poly.coords[2] == pytest.approx([100.5, 50.5])


def test_keypoint_answer_and_its_truncation():
    text = (
        '```json\n{"person1": {"bbox": " <1> <36> <987> <984> ", "keypoints": {"nose": " <540> <351> ", '
        '"right eye": "unvisible"}}, "person2": {"bbox": " <5> <6> <7> <8> ", "keypoints": {"nose": " <1> <2> "}}}\n```'
    )
    p = parse_output(text, 1000, 1000, codec="rexomni")
    assert p.problems == []
    first, second = p.phrases["person"]
    assert first.kind == "keypoints" and first.bins == [1, 36, 987, 984]
    assert first.keypoints["nose"] == pytest.approx([540 / 999 * 1000, 351 / 999 * 1000])
    assert first.keypoints["right eye"] is None
    cut = text.index('"nose": " <1>') + 10  # inside the second instance's keypoints
    truncated = parse_output(text[:cut], 1000, 1000, codec="rexomni")
    assert "incomplete" in truncated.problems[0]
    assert [i.bins for i in truncated.phrases["person"]] == [[1, 36, 987, 984], [5, 6, 7, 8]]
    assert truncated.phrases["person"][0].keypoints == first.keypoints


def test_keypoints_round_trip_through_the_serializer():
    obj = {"phrase": "person", "bbox": [10, 20, 300, 400], "keypoints": {"nose": [100, 50], "left eye": [0, 0, 0]}}
    text = format_keypoints([obj], 640, 480, ["nose", "left eye"])
    json.loads(text.strip("`").removeprefix("json"))
    p = parse_output(text, 640, 480)
    item = p.phrases["person"][0]
    assert item.coords == pytest.approx([10, 20, 300, 400], abs=0.33)
    assert item.keypoints["nose"] == pytest.approx([100, 50], abs=0.33) and item.keypoints["left eye"] is None


def test_empty_and_garbage():
    assert parse_output("", 10, 10).problems == ["empty answer"]
    garbage = "".join(random.Random(0).choices(list("<>|,0123456789 None_abc") + MARKERS, k=1_000_000))
    p = parse_output(garbage, 10, 10)
    assert len(p.problems) <= 21 and max(len(problem) for problem in p.problems) < 120
    assert all(0 <= c <= 10 for _, item in p.items() for c in np.ravel(item.coords))


def test_non_string_and_bad_size_do_not_raise():
    assert "not a string" in parse_output(None, 10, 10).problems[0]
    assert "cannot parse" in parse_output(RELEASED, 0, 10).problems[0]


def test_serializer_orders_and_answers_none():
    objects = [
        {"phrase": "cat", "bbox": [50, 10, 60, 20]},
        {"phrase": "cat", "bbox": [10, 30, 20, 40]},
        {"phrase": "cat", "bbox": [10, 5, 20, 15]},
        {"phrase": "dog", "point": [5, 5]},
    ]
    text = format_answer(objects, 100, 100, phrases=["dog", "bird", "cat"])
    assert text.startswith(f"{OBJECT_REF_START}dog{OBJECT_REF_END}{BOX_START}<50><50>{BOX_END}, ")
    assert f"{OBJECT_REF_START}bird{OBJECT_REF_END}{BOX_START}None{BOX_END}" in text
    p = parse_output(text, 100, 100)
    assert [i.bins[:2] for i in p.phrases["cat"]] == [[100, 50], [100, 300], [500, 100]]
    with pytest.raises(ValueError, match="not among the asked"):
        format_answer(objects, 100, 100, phrases=["cat"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.lists(
        st.sampled_from(
            [
                OBJECT_REF_START,
                OBJECT_REF_END,
                BOX_START,
                BOX_END,
                "<|im_end|>",
                "```json",
                '"bbox"',
                '"keypoints"',
                "{",
                "}",
                '"',
                ":",
                "<12>",
                "<1500>",
                "None",
                ", ",
            ]
        )
        | st.text(alphabet="<>|,0123456789 N", max_size=4)
        | st.text(max_size=4),
        max_size=80,
    ).map("".join),
    w=st.integers(1, 4000),
    h=st.integers(1, 4000),
    codec=st.sampled_from(["center", "rexomni"]),
)
def test_fuzz_arbitrary_text_never_raises(text, w, h, codec):
    _check_in_image(parse_output(text, w, h, codec), w, h)


def _answer_tokens(rng):
    objects = [
        {"phrase": rng.choice(["a", "b c", "d"]), "bbox": sorted(rng.uniform(0, 500, 2)) * 1}
        for _ in range(rng.integers(1, 6))
    ]
    for o in objects:
        x0, x1 = sorted(rng.uniform(0, 500, 2))
        y0, y1 = sorted(rng.uniform(0, 300, 2))
        o["bbox"] = [x0, y0, x1, y1]
    import re

    return re.findall(r"<\|[a-z_]+\|>|<\d+>|None|, |,|[^<,]+", format_answer(objects, 500, 300))


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1), ops=st.lists(st.sampled_from(["drop", "double", "space", "truncate"]), max_size=6)
)
def test_fuzz_mutated_answers_never_raise(seed, ops):
    rng = np.random.default_rng(seed)
    tokens = _answer_tokens(rng)
    for op in ops:
        if not tokens:
            break
        i = int(rng.integers(len(tokens)))
        if op == "drop":
            tokens.pop(i)
        elif op == "double":
            tokens.insert(i, tokens[i])
        elif op == "space":
            tokens.insert(i, " ")
        else:
            tokens = tokens[:i]
    _check_in_image(parse_output("".join(tokens), 500, 300), 500, 300)


def _check_in_image(parsed, w, h):
    for _, item in parsed.items():
        xy = np.asarray(item.coords, dtype=float).reshape(-1, 2)
        assert np.all(xy >= 0) and np.all(xy[:, 0] <= w) and np.all(xy[:, 1] <= h)
        for point in (item.keypoints or {}).values():
            assert point is None or (0 <= point[0] <= w and 0 <= point[1] <= h)
