"""The negative image engine: exact synthetic negatives, the two filters for real, and the
inpainting plumbing with a tiny random diffusers pipeline and a tiny random CLIP."""

import random

import numpy as np
import pytest
from PIL import Image
from rexomni.data_engines.masks import mask_bbox, rle_decode
from rexomni.data_engines.negatives_image import (
    ClipFilter,
    InpaintingBackend,
    box_filter,
    negative_images,
    negative_scene,
)
from rexomni.data_engines.synth import generate_scene


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


def test_missing_model_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ClipFilter(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nope"):
        InpaintingBackend(str(tmp_path / "nope"))
