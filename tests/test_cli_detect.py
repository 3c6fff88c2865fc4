"""`rexomni detect`, `rexomni model init` and the drawing helper."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from rexomni.cli import main
from rexomni.draw import draw_result, label_color
from rexomni.result import Result


def _write_images(folder, n=3):
    rng = np.random.RandomState(0)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"img{i}.png")
        Image.fromarray(rng.randint(0, 255, (40 + 10 * i, 60, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_model_init_writes_a_loadable_checkpoint(tmp_path, capsys):
    from rexomni.api import RexOmni

    folder = str(tmp_path / "tiny")
    assert main(["model", "init", "--preset", "tiny", "--out", folder]) == 0
    assert "M parameters" in capsys.readouterr().out
    model = RexOmni.from_pretrained(folder)
    assert model.settings.coord_codec == "center"
    result = model.detect(np.zeros((30, 30, 3), np.uint8), ["dog"], max_new_tokens=12)
    assert result.problems == []
    with pytest.raises(SystemExit):  # refuses to overwrite a non-empty folder
        main(["model", "init", "--preset", "tiny", "--out", folder])


def test_detect_writes_jsonl_drawings_and_skips_bad_images(tiny_checkpoint, tmp_path, capsys):
    paths = _write_images(str(tmp_path))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "results.jsonl"
    draw_dir = tmp_path / "drawn"
    code = main(["detect", *paths, str(broken), "--categories", "dog, cat", "--negatives", "statue",
                 "--model", tiny_checkpoint, "--out", str(out), "--draw", str(draw_dir), "--batch-size", "2",
                 "--max-new-tokens", "30"])
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["image"] for line in lines] == paths
    for line in lines:
        assert set(line["labels"]) <= {"dog", "cat"} and len(line["boxes"]) == len(line["labels"])
        assert line["problems"] == []
    assert sorted(os.listdir(draw_dir)) == ["img0.png", "img1.png", "img2.png"]
    err = capsys.readouterr().err
    assert "broken.png" in err and "3 images done, 1 skipped" in err


def test_detect_reads_a_directory_and_needs_categories(tiny_checkpoint, tmp_path):
    _write_images(str(tmp_path), n=2)
    out = tmp_path / "r.jsonl"
    assert main(["detect", str(tmp_path), "--categories", "cup", "--model", tiny_checkpoint, "--out", str(out),
                 "--max-new-tokens", "16"]) == 0
    assert len(out.read_text().splitlines()) == 2
    # --presence-threshold 0: every asked phrase written is answered None
    assert main(["detect", str(tmp_path), "--categories", "cup", "--model", tiny_checkpoint, "--out", str(out),
                 "--max-new-tokens", "16", "--presence-threshold", "0"]) == 0
    assert all(json.loads(line)["labels"] == [] and "None" in json.loads(line)["raw_text"]
               for line in out.read_text().splitlines())
    with pytest.raises(SystemExit):
        main(["detect", str(tmp_path), "--categories", " , ", "--model", tiny_checkpoint])


def test_draw_result_marks_boxes_points_polygons_and_skeletons():
    image = np.zeros((100, 120, 3), np.uint8)
    boxes = Result(task="detection", width=120, height=100, labels=["dog"], scores=np.array([0.9], np.float32),
                   boxes=np.array([[10, 20, 60, 80]], np.float32))
    drawn = np.asarray(draw_result(image, boxes))
    color = label_color("dog")
    assert tuple(drawn[50, 10]) == color  # left edge of the box
    assert drawn[50, 35].sum() == 0  # inside stays untouched
    points = Result(task="pointing", width=120, height=100, labels=["cat"], scores=np.array([0.5], np.float32),
                    points=np.array([[90, 50]], np.float32))
    assert tuple(np.asarray(draw_result(image, points))[50, 90]) == label_color("cat")
    polygon = Result(task="ocr_polygon", width=120, height=100, labels=["OPEN"], scores=np.array([0.7], np.float32),
                     boxes=np.array([[20, 20, 80, 60]], np.float32),
                     polygons=[np.array([[20, 20], [80, 20], [80, 60], [20, 60]], np.float32)])
    assert tuple(np.asarray(draw_result(image, polygon))[40, 80]) == label_color("OPEN")
    joints = {"left shoulder": [30.0, 30.0], "left elbow": [30.0, 70.0], "nose": None}
    person = Result(task="keypoint", width=120, height=100, labels=["person"], scores=np.array([0.8], np.float32),
                    boxes=np.array([[5, 5, 110, 95]], np.float32), keypoints=[joints])
    drawn = np.asarray(draw_result(image, person))
    assert tuple(drawn[50, 30]) == label_color("person")  # the limb between shoulder and elbow


def test_model_init_takes_a_tokenizer_folder(tmp_path):
    from transformers import AutoTokenizer

    from rexomni.offline_tokenizer import build_base_tokenizer

    build_base_tokenizer().save_pretrained(str(tmp_path / "tok"))
    folder = str(tmp_path / "model")
    assert main(["model", "init", "--preset", "tiny", "--out", folder, "--tokenizer", str(tmp_path / "tok")]) == 0
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert "<999>" in tokenizer.get_vocab() and "<|neg_ref_start|>" in tokenizer.get_vocab()


@pytest.mark.parametrize("box", [[40, 40, 80, 80], [30, 0, 70, 30], [0, 90, 112, 112]])
def test_captions_on_a_small_image_never_cover_the_box(box):
    """On a 112-px image the label sits above the box, or below it when the box touches the top."""
    image = np.zeros((112, 112, 3), np.uint8)
    result = Result(task="detection", width=112, height=112, labels=["red circle"], scores=np.array([0.93], np.float32),
                    boxes=np.array([box], np.float32))
    drawn = np.asarray(draw_result(image, result)).astype(int)
    x0, y0, x1, y1 = box
    assert drawn[y0 + 2:y1 - 1, x0 + 2:x1 - 1].sum() == 0, "the inside of the box stays visible"
    outside = drawn.copy()
    outside[y0:y1 + 1, x0:x1 + 1] = 0
    assert outside.sum() > 0, "the caption is drawn next to the box"


def test_captions_of_neighbouring_boxes_do_not_cover_each_other():
    """Two boxes side by side: the second caption goes below its box rather than over the first caption."""
    labels, boxes = ["red circle", "blue square"], [[20, 40, 50, 80], [56, 40, 90, 80]]
    assert label_color(labels[0]) != label_color(labels[1])

    def pixels_of(label, kept):
        result = Result(task="detection", width=112, height=112, labels=[labels[i] for i in kept],
                        scores=np.array([0.9] * len(kept), np.float32),
                        boxes=np.array([boxes[i] for i in kept], np.float32))
        drawn = np.asarray(draw_result(np.zeros((112, 112, 3), np.uint8), result))
        return int((drawn == label_color(label)).all(-1).sum())

    assert pixels_of("red circle", [0, 1]) == pixels_of("red circle", [0]) > 0
    assert pixels_of("blue square", [0, 1]) == pixels_of("blue square", [1]) > 0


def test_result_filter_keeps_items_at_or_above_the_threshold():
    result = Result(task="detection", width=100, height=100, labels=["a", "b", "c"],
                    scores=np.array([0.9, 0.2, np.nan], np.float32),
                    boxes=np.arange(12, dtype=np.float32).reshape(3, 4))
    kept = result.filter(0.5)
    assert kept.labels == ["a", "c"] and kept.boxes.tolist() == [[0, 1, 2, 3], [8, 9, 10, 11]]
    assert len(result) == 3, "the original is unchanged"
    points = Result(task="pointing", width=10, height=10, labels=["p", "q"], scores=np.array([0.1, 0.8], np.float32),
                    points=np.array([[1, 1], [2, 2]], np.float32))
    assert points.filter(0.5).points.tolist() == [[2, 2]]


def test_detect_output_scores_with_eval_predictions(tiny_checkpoint, tmp_path, monkeypatch):
    """A newcomer's round trip with relative paths: synth scenes -> `rexomni detect` -> `rexomni eval --predictions`."""
    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "--n", "3", "--out", "scenes", "--mode", "single", "--size", "112"]) == 0
    assert main(["detect", "scenes/images", "--categories", "red circle,blue square", "--model", tiny_checkpoint,
                 "--out", "detections.jsonl", "--max-new-tokens", "16"]) == 0
    assert main(["eval", "--predictions", "detections.jsonl", "--annotations", "scenes/samples.jsonl",
                 "--out", "metrics.json"]) == 0
    with open("metrics.json") as f:
        metrics = json.load(f)
    metrics = metrics.get("metrics", metrics)
    assert metrics["samples"] == 3 and metrics["samples_without_prediction"] == 0


def test_data_convert_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["data", "convert", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "nope.json" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_missing_model_folder_or_unreachable_hub_id_is_one_line(tmp_path, capsys, monkeypatch):
    image = _write_images(str(tmp_path), n=1)[0]
    os.makedirs(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    assert main(["detect", image, "--categories", "cup", "--model", "runs/typo"]) == 2
    assert "runs/typo: no such checkpoint folder" in capsys.readouterr().err
    # Tests run without network: a hub id fails at once (no minute of retries) with one line.
    assert main(["detect", image, "--categories", "cup", "--model", "someorg/no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Give the path of a local checkpoint folder" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("parts", [["language"], ["language", "vision"]])
def test_model_grow_doubles_the_layers_and_answers_exactly_as_before(tmp_path, capsys, parts):
    """The grown copy of the shipped model writes the same answers with the same token scores (the inserted
    layers add zero to the residual stream), from a config and weights of twice the depth of each part."""
    from safetensors.torch import load_file

    from rexomni.api import RexOmni

    scenes = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    folder = str(tmp_path / "grown")
    assert main(["model", "grow", "rexomni-synth", "--out", folder, "--parts", *parts]) == 0
    assert f"twice its {' and '.join(parts)} layers" in capsys.readouterr().out
    before, after = RexOmni.from_pretrained(device="cpu"), RexOmni.from_pretrained(folder, device="cpu")
    depth = before.model.config.text_config.num_hidden_layers
    assert after.model.config.text_config.num_hidden_layers == 2 * depth
    weights = load_file(os.path.join(folder, "model.safetensors"))
    assert not weights["model.layers.1.mlp.down_proj.weight"].any()
    assert weights["model.layers.2.mlp.down_proj.weight"].any()
    vision_before, vision_after = before.model.config.vision_config, after.model.config.vision_config
    if "vision" in parts:
        assert vision_after.depth == 2 * vision_before.depth
        assert not weights["visual.blocks.1.attn.proj.weight"].any()
        # each copy attends as its original: block 1 had full attention, so blocks 2 and 3 have it
        assert vision_after.fullatt_block_indexes == [2 * i + j for i in vision_before.fullatt_block_indexes
                                                      for j in (0, 1)]
    else:
        assert vision_after.depth == vision_before.depth
    images = [os.path.join(scenes, f"scene{i}.png") for i in (1, 2)]
    a, b = (m.detect(images, ["red circle", "blue square"]) for m in (before, after))
    assert [r.raw_text for r in a] == [r.raw_text for r in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.scores, y.scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(x.boxes, y.boxes)
