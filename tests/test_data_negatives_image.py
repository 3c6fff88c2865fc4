"""The negative image engine: exact synthetic negatives, the two filters for real, the inpainting
plumbing with a tiny random diffusers pipeline and a tiny random CLIP, and `rexomni data
negative-images`, whose output a mixture reads."""

import contextlib
import io
import json
import random

import numpy as np
import pytest
from PIL import Image
from rexomni.data_engines.cli import _parser
from rexomni.data_engines.masks import mask_bbox, rle_decode
from rexomni.data_engines.mixture import Mixture
from rexomni.data_engines.negatives_image import (
    ClipFilter,
    InpaintingBackend,
    NegativeImage,
    box_filter,
    negative_images,
    negative_scene,
    pack_real_negative,
)
from rexomni.data_engines.synth import generate_scene
from rexomni.data_engines.tasks import build_example
from rexomni.grpo.data import PromptRows
from rexomni.grpo.rewards import negative_penalty

from rexomni.cli import main
from rexomni.grammar import format_answer


def _outside_equal(a, b, box):
    a, b = np.asarray(a).copy(), np.asarray(b).copy()
    x0, y0, x1, y1 = (int(v) for v in box)
    a[y0:y1, x0:x1] = 0
    b[y0:y1, x0:x1] = 0
    return (a == b).all()


def test_synthetic_negative_changes_only_the_box_and_labels_it_exactly():
    for seed in range(12):
        original, sample = generate_scene(seed, 160)
        image, neg, edit = negative_scene(seed, 160, rng=seed)
        assert _outside_equal(original, image, edit["box"])
        assert not np.array_equal(np.asarray(original), np.asarray(image))
        assert edit["original"] != edit["negative"]
        changed = neg["objects"][edit["index"]]
        assert changed["attributes"] == edit["negative_attributes"] and changed["phrase"] == edit["negative"]
        for obj in [changed]:
            mask = rle_decode(obj["mask"])
            assert mask_bbox(mask) == obj["bbox"] and mask[int(obj["point"][1]), int(obj["point"][0])]
            x0, y0, x1, y1 = edit["box"]
            assert x0 <= obj["bbox"][0] and obj["bbox"][2] <= x1 and y0 <= obj["bbox"][1] and obj["bbox"][3] <= y1
        assert "referring" not in neg


def test_synthetic_negative_with_a_given_change():
    _, sample = generate_scene(5, 160, "single", num_objects=(1, 1), granularity="color kind")
    old = sample["objects"][0]["attributes"]
    color = "blue" if old["color"] != "blue" else "red"
    image, neg, edit = negative_scene(5, 160, "single", index=0, change={"color": color}, num_objects=(1, 1),
                                      granularity="color kind")
    assert neg["objects"][0]["phrase"] == f"{color} {old['kind']}"
    x, y = (int(v) for v in neg["objects"][0]["point"])
    named = {"blue": (30, 70, 220), "red": (220, 30, 30)}[color]
    assert np.abs(np.asarray(image)[y, x].astype(int) - named).max() <= 12
    with pytest.raises(ValueError, match="unknown attribute"):
        negative_scene(5, 160, "single", index=0, change={"color": "plaid"}, num_objects=(1, 1))


def test_box_filter():
    boxes = [[0, 0, 100, 100],    # covers all of box 1: skipped
             [10, 10, 30, 30],    # inside box 0, covers only 4% of it: kept
             [90, 90, 200, 200],  # overlaps box 0 a little: kept
             [300, 300, 310, 310]]
    assert box_filter(boxes) == [False, True, True, True]
    # box 0 holds all of box 1; box 1 covers 80% of box 0 (skipped), or 70% (kept)
    assert box_filter([[0, 0, 10, 10], [2, 0, 10, 10]]) == [False, False]
    assert box_filter([[0, 0, 10, 10], [3, 0, 10, 10]]) == [False, True]
    assert box_filter([]) == []


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tok")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["a red car", "a blue truck", "two dogs", "a cat"] * 10,
                            trainers.BpeTrainer(vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=77)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


@pytest.fixture(scope="module")
def tiny_clip(tiny_tokenizer_dir):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    folder, tokenizer = tiny_tokenizer_dir
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def test_clip_filter_scores_and_thresholds(tiny_clip):
    import torch

    images = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255), (0, 200, 0))]
    texts = ["a red car", "a blue truck", "two dogs"]
    scores = ClipFilter(tiny_clip).similarity(images, texts)
    assert scores.shape == (3,) and np.all(np.abs(scores) <= 1.0 + 1e-6)
    # the same numbers by hand from the model's embeddings
    f = ClipFilter(tiny_clip)
    pixels = f.image_processor(images, return_tensors="pt")["pixel_values"]
    tokens = f.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        a = f.model.get_image_features(pixel_values=pixels)
        b = f.model.get_text_features(**tokens)
    a = a if hasattr(a, "norm") else a.pooler_output
    b = b if hasattr(b, "norm") else b.pooler_output
    manual = torch.nn.functional.cosine_similarity(a, b).numpy()
    assert np.allclose(scores, manual, atol=1e-5)
    middle = float(np.sort(scores)[1])
    f.threshold = middle
    assert f.keep(images, texts) == [bool(s >= middle) for s in scores]
    assert sum(f.keep(images, texts)) == 2
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        f.similarity(images, texts[:2])


@pytest.fixture(scope="module")
def tiny_inpainting(tiny_tokenizer_dir, tmp_path_factory):
    import diffusers  # the optional inpainting extra; the test suite installs it
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    _, tokenizer = tiny_tokenizer_dir
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=9, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32)
    vae = diffusers.AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                  latent_channels=4)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                                num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=77,
                                                bos_token_id=0, eos_token_id=2, pad_token_id=1))
    pipe = diffusers.StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=diffusers.DDIMScheduler(steps_offset=1), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("inpaint")
    pipe.save_pretrained(folder)
    return str(folder)


def test_inpainting_backend_paints_only_inside_the_box(tiny_inpainting):
    backend = InpaintingBackend(tiny_inpainting, steps=2, resolution=32, guidance_scale=1.0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    out = backend.inpaint(image, [10, 8, 40, 30], "a blue truck", seed=0)
    assert out.size == image.size
    assert _outside_equal(image, out, [10, 8, 40, 30])
    assert not np.array_equal(np.asarray(out)[8:30, 10:40], np.asarray(image)[8:30, 10:40])


def test_negative_images_apply_both_filters(tiny_inpainting, tiny_clip):
    backend = InpaintingBackend(tiny_inpainting, steps=2, resolution=32, guidance_scale=1.0)
    image = Image.new("RGB", (64, 48), (120, 120, 120))
    sample = {"width": 64, "height": 48, "objects": [
        {"phrase": "a red car", "bbox": [0, 0, 64, 48]},       # covers the dog entirely: box filter skips it
        {"phrase": "a small dog", "bbox": [10, 10, 30, 30]}]}
    clip = ClipFilter(tiny_clip, threshold=-1.0)
    (neg,) = negative_images(image, sample, backend, clip_filter=clip, rng=random.Random(0))
    assert neg.original == "a small dog" and neg.negative != "a small dog" and neg.clip_score is not None
    assert _outside_equal(image, neg.image, neg.box)
    clip.threshold = 1.01  # nothing can pass
    assert negative_images(image, sample, backend, clip_filter=clip, rng=random.Random(0)) == []
    # not every small dog is labelled: painting one over says nothing about the phrase
    unlabelled = dict(sample, not_exhaustive_categories=["a small dog"])
    assert negative_images(image, unlabelled, backend, rng=random.Random(0)) == []


def test_missing_model_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ClipFilter(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nope"):
        InpaintingBackend(str(tmp_path / "nope"))


# --------------------------------------------------------------------------- real photos, packed and written


def test_real_negative_labels_in_both_packings():
    image = Image.new("RGB", (100, 60), (90, 120, 150))
    painted = image.copy()
    painted.paste((200, 40, 40), (10, 10, 30, 40))
    sample = {"image": "a.jpg", "width": 100, "height": 60, "source": "coco", "exhaustive": True,
              "categories": ["cat", "dog", "kite", "person"], "negatives": {"phrases": ["wolf"]},
              "referring": [{"phrase": "the left dog", "bbox": [10, 10, 30, 40]}],
              "objects": [{"phrase": "dog", "bbox": [10, 10, 30, 40], "point": [20, 25]},
                          {"phrase": "dog", "bbox": [60, 10, 90, 50], "point": [75, 30],
                           "polygon": [[60, 10], [90, 50], [60, 50]]},
                          {"phrase": "person", "bbox": [25, 0, 55, 60], "point": [40, 30],
                           "keypoints": {"nose": [40, 5]}}]}
    edit = NegativeImage(painted, [10, 10, 30, 40], "dog", "cat", 0.3, 0)

    separate_image, separate = pack_real_negative(image, sample, edit, "separate")
    assert separate_image is painted
    # The other dog stays ground truth with all its labels; the person, partly under the paint, keeps only its box.
    assert separate["objects"] == [sample["objects"][1], {"phrase": "person", "bbox": [25, 0, 55, 60]}]
    assert separate["categories"] == ["dog", "kite", "person"]  # the painted foil is never asked
    assert not {"exhaustive", "referring", "negatives"} & set(separate)
    assert separate["negative_edit"] == {"box": [10, 10, 30, 40], "original": "dog", "foil": "cat", "clip_score": 0.3,
                                         "original_image": "a.jpg"}
    example = build_example(dict(separate, categories=["dog"]), "grounding", random.Random(0))
    assert [t["bbox"] for t in example["targets"] if t["phrase"] == "dog"] == [[60, 10, 90, 50]]

    concat_image, concat = pack_real_negative(image, sample, edit, "concat")
    assert concat_image.size == (200, 60) and concat["width"] == 200
    assert np.array_equal(np.asarray(concat_image)[:, :100], np.asarray(image))
    assert np.array_equal(np.asarray(concat_image)[:, 100:], np.asarray(painted))
    dogs = [o["bbox"] for o in concat["objects"] if o["phrase"] == "dog"]
    assert dogs == [[10, 10, 30, 40], [60, 10, 90, 50], [160, 10, 190, 50]]
    right_dog = [o for o in concat["objects"] if o["bbox"] == [160, 10, 190, 50]][0]
    assert right_dog["polygon"] == [[160, 10], [190, 50], [160, 50]] and right_dog["point"] == [175, 30]
    assert [o.get("keypoints") for o in concat["objects"] if o["phrase"] == "person"] == [{"nose": [40, 5]}, None]
    assert concat["negative_edit"]["box"] == [110, 10, 130, 40] and "cat" not in concat["categories"]
    assert not {"exhaustive", "referring", "negatives"} & set(concat)


def _photo(seed, size=(64, 48)):
    """A photo-like image: a lit gradient, sensor noise and a few blobs."""
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    pixels = 60 + 120 * x * np.array([1.0, 0.8, 0.5]) + 60 * y + rng.normal(0, 12, (h, w, 3))
    for _ in range(3):
        cx, cy, r = rng.integers(8, w - 8), rng.integers(8, h - 8), rng.integers(4, 10)
        blob = (np.arange(w)[None, :] - cx) ** 2 + (np.arange(h)[:, None] - cy) ** 2 < r * r
        pixels[blob] = rng.integers(0, 255, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two photos (two dogs and a person over one of them; one red car) and a corrupt file."""
    folder = tmp_path_factory.mktemp("photos")
    _photo(1).save(folder / "dogs.jpg", quality=90)
    _photo(2).save(folder / "car.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    records = [
        {"image": "dogs.jpg", "width": 64, "height": 48, "objects": [
            {"phrase": "dog", "bbox": [4, 20, 20, 40]}, {"phrase": "dog", "bbox": [40, 18, 58, 38]},
            {"phrase": "person", "bbox": [0, 0, 26, 46]}]},  # holds all of the first dog: the box filter skips it
        {"image": "broken.jpg", "width": 64, "height": 48, "objects": [{"phrase": "dog", "bbox": [1, 1, 9, 9]}]},
        {"image": "car.png", "width": 64, "height": 48, "categories": ["red car", "bus"], "exhaustive": True,
         "objects": [{"phrase": "red car", "bbox": [10, 12, 50, 36]}]},
    ]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["data", "negative-images", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


def _command(photos, tiny_inpainting, tiny_clip, out, *extra):
    return ([photos / "samples.jsonl", "--out", out, "--inpaint-model", tiny_inpainting, "--clip-model", tiny_clip,
             "--clip-threshold", -1, "--steps", 2, "--resolution", 32, "--guidance-scale", 1] + list(extra))


@pytest.fixture(scope="module")
def written(photos, tiny_inpainting, tiny_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("negatives") / "run"
    code, printed, err = _run(_command(photos, tiny_inpainting, tiny_clip, out))
    assert code == 0, err
    return out, printed


def _read(folder):
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_negative_images_command_writes_both_packings(photos, written):
    out, printed = written
    assert "wrote 4 samples from 2 negative images of 2 images" in printed
    assert "1 boxes (box filter)" in printed and "0 paintings (CLIP filter)" in printed
    assert "1 unreadable images" in printed and "image: corrupt image" in printed
    samples = _read(out)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(s["image"][len("images/"):] for s in samples)
    originals = {"dogs.jpg": photos / "dogs.jpg", "car.png": photos / "car.png"}
    for s in samples:
        edit = s["negative_edit"]
        name = edit["original_image"].rsplit("/", 1)[-1]
        original = np.asarray(Image.open(originals[name]).convert("RGB"))
        image = np.asarray(Image.open(out / s["image"]))
        assert edit["foil"] != edit["original"] and isinstance(edit["clip_score"], float)
        assert edit["foil"] not in s["categories"] and edit["foil"] not in {o["phrase"] for o in s["objects"]}
        assert edit["original"] in s["categories"] and "exhaustive" not in s
        if s["width"] == 64:  # separate
            x0, y0, x1, y1 = (int(v) for v in edit["box"])
            assert _outside_equal(original, image, edit["box"])
            assert not np.array_equal(original[y0:y1, x0:x1], image[y0:y1, x0:x1])
            remaining = [o["bbox"] for o in s["objects"] if o["phrase"] == edit["original"]]
            assert edit["box"] not in remaining
            assert len(remaining) == {"dog": 1, "red car": 0}[edit["original"]]  # the other dog stays
            assert {"phrase": "person", "bbox": [0, 0, 26, 46]} in s["objects"] or name == "car.png"
        else:  # concat: the original on the left, its negative on the right
            assert s["width"] == 128 and image.shape == (48, 128, 3)
            assert np.array_equal(image[:, :64], original)
            (twin,) = [t for t in samples if t["width"] == 64 and t["negative_edit"]["original_image"].endswith(name)]
            assert np.array_equal(image[:, 64:], np.asarray(Image.open(out / twin["image"])))
            x0, y0, x1, y1 = twin["negative_edit"]["box"]
            assert edit["box"] == [x0 + 64, y0, x1 + 64, y1]
            boxes = [o["bbox"] for o in s["objects"] if o["phrase"] == edit["original"]]
            (record,) = [r for r in _read(photos) if r["image"] == name]
            left = [o["bbox"] for o in record["objects"] if o["phrase"] == edit["original"]]
            right = [[b[0] + 64, b[1], b[2] + 64, b[3]] for b in
                     (o["bbox"] for o in twin["objects"] if o["phrase"] == edit["original"])]
            assert boxes == left + right and edit["box"] not in boxes


def test_written_negatives_are_a_mixture_source(written):
    out, _ = written
    by_image = {str(out / s["image"]): s for s in _read(out)}
    mixture = Mixture({"seed": 0, "sources": [{"name": "painted", "path": str(out / "samples.jsonl"),
                                               "tasks": {"grounding": 1}}]})
    examples = mixture.take(40)
    assert {e["width"] for e in examples} == {64, 128}  # both packings are drawn
    asked_edited = 0
    for example in examples:
        sample = by_image[example["image"]]
        edit = sample["negative_edit"]
        assert edit["foil"] not in example["phrases"]
        for phrase in example["phrases"]:
            expected = sorted(o["bbox"] for o in sample["objects"] if o["phrase"] == phrase)
            assert sorted(t["bbox"] for t in example["targets"] if t["phrase"] == phrase) == expected
            if phrase == edit["original"]:
                asked_edited += 1
                assert edit["box"] not in expected
                if not expected:
                    assert f"{phrase}<|object_ref_end|><|box_start|>None" in example["answer"]
    assert asked_edited > 10


def test_grpo_punishes_a_box_on_the_painted_region(written):
    """GRPO's compliance reward reads the painted box as one the answer must not box, when the row asks the
    phrase that was painted over."""
    out, _ = written
    mixture = Mixture({"seed": 0, "sources": [{"name": "painted", "path": str(out / "samples.jsonl"),
                                               "tasks": {"grounding": 1}}]})
    rows = PromptRows(mixture, 16)
    checked = 0
    for i in range(len(rows)):
        row = rows[i]
        if not row["negatives"]["boxes"]:
            continue
        columns = {k: [row[k]] for k in ("objects", "categories", "negatives", "width", "height", "coord_codec",
                                         "task")}
        asked = row["categories"][0]
        painted = format_answer([{"phrase": asked, "bbox": row["negatives"]["boxes"][0]}], row["width"],
                                row["height"], phrases=[asked])
        right = format_answer(row["objects"], row["width"], row["height"], phrases=row["categories"])
        assert negative_penalty([row["prompt"]], [painted], **columns) == [-1.0]
        assert negative_penalty([row["prompt"]], [right], **columns) == [0.0]
        checked += 1
    assert checked >= 4


def test_negative_images_resume_where_a_run_stopped(photos, written, tiny_inpainting, tiny_clip, tmp_path):
    full, _ = written
    out = tmp_path / "run"
    code, printed, _ = _run(_command(photos, tiny_inpainting, tiny_clip, out, "--limit", 1))
    assert code == 0 and "of 1 images" in printed
    with open(out / "samples.jsonl", "a") as f:
        f.write('{"image": "images/0000002_0_sep')  # the half-written line of a run that was stopped
    code, _, err = _run(_command(photos, tiny_inpainting, tiny_clip, out))
    assert code == 2 and "is not empty" in err and "--resume" in err
    code, _, err = _run(_command(photos, tiny_inpainting, tiny_clip, out, "--resume", "--seed", 1))
    assert code == 2 and "['seed'] differ" in err
    code, printed, _ = _run(_command(photos, tiny_inpainting, tiny_clip, out, "--resume"))
    assert code == 0 and "wrote 4 samples from 2 negative images of 2 images" in printed
    assert (out / "samples.jsonl").read_text() == (full / "samples.jsonl").read_text()
    for name in sorted(p.name for p in (full / "images").iterdir()):
        assert (out / "images" / name).read_bytes() == (full / "images" / name).read_bytes()


def test_negative_images_counts_clip_rejections(photos, tiny_inpainting, tiny_clip, tmp_path):
    code, printed, _ = _run(_command(photos, tiny_inpainting, tiny_clip, tmp_path / "run", "--clip-threshold", 1.01,
                                     "--packing", "separate"))
    assert code == 0 and "wrote 0 samples" in printed and "3 paintings (CLIP filter)" in printed  # 2 dogs, 1 car


def test_negative_images_command_errors_and_help(photos, tmp_path, capsys):
    for model in (tmp_path / "nope", "runwayml/stable-diffusion-inpainting"):
        code, printed, err = _run([photos / "samples.jsonl", "--out", tmp_path / "out", "--inpaint-model", model])
        assert code == 2 and not printed
        assert err.count("\n") == 1 and str(model) in err and "hub names are not fetched" in err
    with pytest.raises(SystemExit) as exit_:
        main(["data", "negative-images", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    (subparsers,) = [a for a in _parser()._actions if a.choices and "negative-images" in a.choices]
    options = subparsers.choices["negative-images"]._actions
    assert len(options) > 15 and all(a.help for a in options)
    for action in options:
        assert action.dest == "help" or (action.option_strings or [action.dest])[0] in text
