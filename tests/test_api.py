"""The detector API on the random tiny checkpoint: batching, mm_token_type_ids, tasks, results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rexomni.api import canonical_task
from rexomni.grammar import parse_output
from rexomni.result import Result
from rexomni.tokens import NEG_BOX_START, NEG_REF_END, NEG_REF_START


def _images(sizes=((112, 112), (40, 90), (100, 30)), seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_single_image_gives_one_result_and_a_list_gives_a_list(tiny_rexomni):
    image = _images()[0]
    one = tiny_rexomni.detect(image, ["dog", "cat"], max_new_tokens=24)
    assert isinstance(one, Result)
    many = tiny_rexomni.detect([image, image], ["dog", "cat"], max_new_tokens=24)
    assert isinstance(many, list) and len(many) == 2
    assert many[0].raw_text == one.raw_text


def test_detect_result_fields_are_consistent(tiny_rexomni):
    result = tiny_rexomni.detect(_images()[1], ["dog", "red car"], max_new_tokens=40)
    n = len(result.labels)
    assert n >= 1
    assert result.boxes.shape == (n, 4) and result.scores.shape == (n,)
    assert set(result.labels) <= {"dog", "red car"}
    assert np.all((result.scores > 0) & (result.scores <= 1))
    assert np.all(result.boxes[:, [0, 2]] <= 90) and np.all(result.boxes[:, [1, 3]] <= 40) and np.all(result.boxes >= 0)
    assert (result.width, result.height) == (90, 40)
    assert result.num_prompt_tokens > 16 and 0 < result.num_generated_tokens <= 40
    assert set(result.timing) == {"preprocess_s", "generate_s", "postprocess_s"} and result.seconds > 0
    # The boxes are the parse of the raw text.
    parsed = parse_output(result.raw_text, 90, 40, "center")
    assert [p for p, _ in parsed.items()] == result.labels
    d = json.loads(json.dumps(result.to_dict()))
    assert d["labels"] == result.labels and len(d["boxes"]) == n
    coco = result.to_coco(image_id=7, category_ids={"dog": 1, "red car": 3})
    assert all(c["image_id"] == 7 and c["category_id"] in (1, 3) for c in coco) and len(coco) == n
    x0, y0, x1, y1 = result.boxes[0]
    assert coco[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    pipe = result.to_pipeline()
    assert set(pipe[0]) == {"score", "label", "box"} and set(pipe[0]["box"]) == {"xmin", "ymin", "xmax", "ymax"}


def test_batch_with_left_padding_matches_one_image_at_a_time(tiny_rexomni):
    images = _images()
    categories = [["dog"], ["red car", "person", "traffic light"], ["cat"]]
    batch = tiny_rexomni.detect(images, categories, max_new_tokens=30)
    lengths = {r.num_prompt_tokens for r in batch}
    assert len(lengths) > 1  # the prompts differ in length, so the batch is padded
    for image, cats, batched in zip(images, categories, batch):
        alone = tiny_rexomni.detect(image, cats, max_new_tokens=30)
        assert alone.raw_text == batched.raw_text
        np.testing.assert_allclose(alone.scores, batched.scores, rtol=1e-4)


def test_generate_always_gets_mm_token_type_ids(tiny_rexomni, monkeypatch):
    seen = []
    original = tiny_rexomni.model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("mm_token_type_ids"))
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_rexomni.model, "generate", spy)
    tiny_rexomni.detect(_images()[:2], ["dog"], max_new_tokens=8)
    assert seen and seen[0] is not None
    assert seen[0].shape[0] == 2 and int(seen[0].sum()) > 0


def test_mm_token_type_ids_trap_is_real_and_the_hand_built_form_matches(tiny_rexomni):
    """Without mm_token_type_ids Qwen2.5-VL silently changes its logits; (ids == image id) restores them."""
    m = tiny_rexomni
    requests = m.prepare(_images()[:2], "detection", ["dog"])
    inputs = m.processor(text=[m.chat_text(r["prompt"]) for r in requests], images=[r["image"] for r in requests],
                         padding=True, return_tensors="pt")
    with torch.inference_mode():
        reference = m.model(**inputs).logits
        no_types = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
        without = m.model(**no_types).logits
        hand = m.model(**no_types, mm_token_type_ids=(inputs["input_ids"] == m.processor.image_token_id).long()).logits
    assert torch.equal(hand, reference)
    assert not torch.allclose(without, reference, atol=1e-4)


def test_negatives_and_negative_boxes_enter_the_prompt(tiny_rexomni):
    image = _images()[0]
    [request] = tiny_rexomni.prepare(image, "detection", ["dog"], negatives=["statue"], negative_boxes=[[0, 0, 56, 56]])
    prompt = request["prompt"]
    assert f"{NEG_REF_START}statue{NEG_REF_END}" in prompt
    assert f"{NEG_BOX_START}<0><0><500><500>" in prompt  # center codec on the 112-px image
    plain = tiny_rexomni.detect(image, ["dog"], max_new_tokens=8)
    negative = tiny_rexomni.detect(image, ["dog"], negatives=["statue"], negative_boxes=[[0, 0, 56, 56]],
                                   max_new_tokens=8)
    [plain_request] = tiny_rexomni.prepare(image, "detection", ["dog"])
    extra = tiny_rexomni.tokenizer.encode(prompt[len(plain_request["prompt"]):], add_special_tokens=False)
    assert negative.num_prompt_tokens == plain.num_prompt_tokens + len(extra)


def test_per_image_arguments_and_batch_box_errors(tiny_rexomni):
    images = _images()[:2]
    requests = tiny_rexomni.prepare(images, "detection", [["dog"], ["cat", "cup"]], negatives=[["a"], ["b"]])
    assert [r["phrases"] for r in requests] == [["dog"], ["cat", "cup"]]
    assert "<|neg_ref_start|>b" in requests[1]["prompt"]
    with pytest.raises(ValueError, match="per image"):
        tiny_rexomni.prepare(images, "detection", ["dog"], negative_boxes=[[0, 0, 5, 5], [1, 1, 6, 6]])


def test_every_task_returns_its_geometry(tiny_rexomni):
    image = _images()[0]
    points = tiny_rexomni.point(image, ["cat"], max_new_tokens=20)
    assert points.points is not None and points.points.shape == (len(points.labels), 2) and len(points.labels) >= 1
    polygons = tiny_rexomni.ocr(image, polygons=True, max_new_tokens=80)
    assert polygons.polygons is not None and len(polygons.polygons) == len(polygons.labels) >= 1
    assert all(p.shape[1] == 2 and len(p) >= 3 for p in polygons.polygons)
    assert polygons.boxes.shape == (len(polygons.labels), 4)
    words = tiny_rexomni.ocr(image, level="word", max_new_tokens=30)
    assert words.problems == [] and words.task == "ocr_box"
    visual = tiny_rexomni.visual_prompt(image, [[10, 10, 40, 40]], max_new_tokens=30)
    assert set(visual.labels) <= {"object_1"} and visual.problems == []
    gui = tiny_rexomni.gui(image, "login button", max_new_tokens=30)
    assert set(gui.labels) <= {"login button"} and gui.task == "gui_grounding"
    tap = tiny_rexomni.gui(image, "login button", pointing=True, max_new_tokens=30)
    assert tap.points is not None
    keypoints = tiny_rexomni.keypoints(image, "person", max_new_tokens=10)
    assert keypoints.task == "keypoint" and keypoints.keypoints is not None
    general = tiny_rexomni.predict(image, task="point", categories=["cat"], max_new_tokens=20)
    assert general.raw_text == points.raw_text


def test_unknown_task_is_refused():
    assert canonical_task("detect") == "detection"
    with pytest.raises(ValueError, match="unknown task"):
        canonical_task("segment")


def test_scores_can_be_switched_off(tiny_rexomni):
    result = tiny_rexomni.detect(_images()[0], ["dog"], max_new_tokens=16, scores=False)
    assert len(result.labels) >= 1 and np.all(np.isnan(result.scores))


def test_teacher_forced_scores_equal_generation_scores(tiny_rexomni):
    image = _images()[1]
    generated = tiny_rexomni.detect(image, ["dog", "cat"], max_new_tokens=40)
    forced = tiny_rexomni.score(image, generated.raw_text, categories=["dog", "cat"])
    assert forced.labels == generated.labels
    np.testing.assert_allclose(forced.scores, generated.scores, rtol=1e-4)


@pytest.mark.parametrize("size", [(3, 900), (900, 3)])
def test_very_thin_images_are_answered_in_their_own_coordinates(tiny_rexomni, size):
    """Qwen2.5-VL's resize refuses aspect ratios above 200; the image is stretched to fit, and the
    answer reads in the original image's pixels."""
    image = np.full((size[1], size[0], 3), 200, np.uint8)
    result = tiny_rexomni.detect(image, ["red circle"], max_new_tokens=16)
    assert (result.width, result.height) == size
    assert (result.boxes[:, [0, 2]] <= size[0]).all() and (result.boxes[:, [1, 3]] <= size[1]).all()
    answer = "<|object_ref_start|>red circle<|object_ref_end|><|box_start|><0><500><999><999><|box_end|>"
    scored = tiny_rexomni.score(image, answer, categories=["red circle"])
    assert scored.boxes[0] == pytest.approx([0.0005 * size[0], 0.5005 * size[1], 0.9995 * size[0], 0.9995 * size[1]],
                                            rel=1e-3)


def test_a_cuda_device_without_cuda_is_a_clear_error(tiny_checkpoint):
    from rexomni.api import RexOmni

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        RexOmni.from_pretrained(tiny_checkpoint, device="cuda")
    assert RexOmni.from_pretrained(tiny_checkpoint).device == "cpu", "auto picks the CPU here"
