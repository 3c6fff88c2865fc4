"""The negative image engine: an image equal to the original outside one box, showing a negative
(contradicting) description inside it. Paired with the original description, the box becomes a
hard negative: the model must not find the original object there.

- Synthetic scenes (``negative_scene``): the box is cleared back to the scene's own background and
  the shape is drawn again with one attribute changed (kind, colour, texture, or a smaller size), so
  the new labels are exact. ``packed_negative`` makes a training sample of it in either of the paper's
  two packings: the negative image as a sample of its own, or side by side with its original.
- Real images (``negative_images``): an inpainting pipeline of diffusers (a local folder; the
  ``diffusers`` package is an optional extra) paints the negative description into the box, with
  the two filters of "Generating Enhanced Negatives for Training Language-Based Object Detectors":
  ``box_filter`` skips a box that covers more than 75% of another box (editing it would change the
  other object too), and ``ClipFilter`` keeps a painted region only if its CLIP similarity to the
  negative text reaches a threshold (a transformers CLIPModel from a local folder);
  ``pack_real_negative`` packs a painting in the same two ways, labelled honestly. Inpainting is far
  too slow for a training loader, so ``write_negative_images`` (``rexomni data negative-images``) runs
  it offline and writes the packed samples as an ordinary data set that a mixture reads.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .masks import deepest_point, mask_bbox, rle_encode
from .negatives_text import FOIL_KINDS, RuleFoiler
from .synth import (
    COLORS,
    GRANULARITIES,
    SIZES,
    TEXTURES,
    TRAIN_KINDS,
    background_of,
    draw_shape,
    generate_scene,
    shape_phrase,
)

COVER_THRESHOLD = 0.75  # the paper's box filter
EDITABLE = ("kind", "color", "texture", "size")


# --------------------------------------------------------------------------- synthetic scenes


def negative_scene(seed: int, size: int | Sequence[int] = 224, mode: str = "shapes", index: int | None = None,
                   change: dict | None = None, rng: random.Random | int | None = None,
                   **scene_options) -> tuple[Image.Image, dict, dict]:
    """Scene ``seed`` with object ``index`` re-drawn with other attributes.

    ``change`` (e.g. ``{"color": "blue"}``) picks the new attributes; by default one of kind,
    colour, texture or size is changed at random (a size only shrinks, so the shape stays in its
    box). Returns ``(negative image, negative sample, edit)``; ``edit`` has the ``box``, the
    ``original`` and ``negative`` phrases and attributes. Outside ``edit["box"]`` the image equals
    the original scene's pixel for pixel.
    """
    if mode not in ("shapes", "single"):
        raise ValueError(f"negative scenes need shape scenes ('shapes' or 'single'), got mode {mode!r}")
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    image, sample = generate_scene(seed, size, mode, **scene_options)
    objects = sample["objects"]
    index = rng.randrange(len(objects)) if index is None else index
    target = objects[index]
    old = target["attributes"]
    granularity = sample.get("granularity", "color kind")
    new = dict(old, **(change or _random_change(old, rng, GRANULARITIES[granularity])))
    unknown = {k: v for k, v in new.items() if k in EDITABLE and v not in _VOCAB[k]}
    if unknown:
        raise ValueError(f"unknown attribute values {unknown}")
    if new == old:
        raise ValueError(f"the change {change} leaves object {index} as it was")

    x0, y0, x1, y1 = (int(v) for v in target["bbox"])
    out = image.copy()
    background = background_of(seed, size, mode, scene_options.get("backgrounds"))
    out.paste(background.crop((x0, y0, x1, y1)), (x0, y0))
    box_side = max(x1 - x0, y1 - y0)
    side = box_side
    if SIZES[new["size"]][0] < SIZES[old["size"]][0]:
        side = int(box_side * _shrink(old["size"], new["size"]))
    canvas, mask = draw_shape(new["kind"], new["color"], new["texture"], max(side, 4), rng)
    # Centre the new shape in the old box and keep it inside: nothing outside the box may change.
    crop = (max(0, (side - (x1 - x0)) // 2), max(0, (side - (y1 - y0)) // 2))
    crop_box = (crop[0], crop[1], crop[0] + min(side, x1 - x0), crop[1] + min(side, y1 - y0))
    canvas, mask = canvas.crop(crop_box), mask.crop(crop_box)
    ox, oy = x0 + (x1 - x0 - canvas.width) // 2, y0 + (y1 - y0 - canvas.height) // 2
    out.paste(canvas, (ox, oy), mask)

    local = np.asarray(mask) > 0
    full = np.zeros((sample["height"], sample["width"]), dtype=bool)
    full[oy:oy + local.shape[0], ox:ox + local.shape[1]] = local
    new_object = {"phrase": shape_phrase(new, granularity), "bbox": mask_bbox(full),
                  "point": deepest_point(full), "attributes": new, "mask": rle_encode(full)}
    neg_sample = dict(sample, objects=objects[:index] + [new_object] + objects[index + 1:])
    neg_sample.pop("referring", None)  # the expressions described the original scene
    phrases = {o["phrase"] for o in neg_sample["objects"]}
    neg_sample["categories"] = sorted(phrases | (set(sample.get("categories", [])) - {target["phrase"]}) |
                                      ({target["phrase"]} if target["phrase"] not in phrases else set()))
    edit = {"index": index, "box": [x0, y0, x1, y1], "original": target["phrase"], "negative": new_object["phrase"],
            "original_attributes": old, "negative_attributes": new}
    return out, neg_sample, edit


PACKINGS = ("separate", "concat")


def packed_negative(seed: int, packing: str, size: int | Sequence[int] = 224, mode: str = "shapes",
                    rng: random.Random | int | None = None, **scene_options) -> tuple[Image.Image, dict]:
    """A training sample from the negative of scene ``seed`` (:func:`negative_scene`), packed as

    - ``separate``: the negative image alone; where the original phrase no longer fits anything it is a
      verified-absent category, to be answered None;
    - ``concat``: the original (left) and the negative (right) side by side in one image, labelled in
      full: the original phrase is found on the left and not in the changed box on the right.

    The scene's own negatives are left out (the edit may have changed what they named); a side-by-side
    sample has no masks or referring expressions (they described one half).
    """
    if packing not in PACKINGS:
        raise ValueError(f"unknown packing {packing!r}; expected one of {PACKINGS}")
    neg_image, neg_sample, _ = negative_scene(seed, size, mode, rng=rng, **scene_options)
    neg_sample.pop("negatives", None)
    if packing == "separate":
        return neg_image, dict(neg_sample, source=f"{neg_sample['source']}+negative")
    image, sample = generate_scene(seed, size, mode, **scene_options)
    return side_by_side(image, sample, neg_image, neg_sample)


def side_by_side(left: Image.Image, left_sample: dict, right: Image.Image,
                 right_sample: dict) -> tuple[Image.Image, dict]:
    """Two scenes of the same height as one image and one sample (objects, held-out shapes and
    categories of both; the right one's coordinates shifted)."""
    if left.height != right.height:
        raise ValueError(f"side by side needs equal heights, got {left.height} and {right.height}")
    image = Image.new("RGB", (left.width + right.width, left.height))
    image.paste(left, (0, 0))
    image.paste(right, (left.width, 0))

    def shifted(items: list[dict], dx: float) -> list[dict]:
        out = []
        for o in items:
            o = {k: v for k, v in o.items() if k != "mask"}  # an RLE of one half's frame
            if o.get("bbox") is not None:
                x0, y0, x1, y1 = o["bbox"]
                o["bbox"] = [x0 + dx, y0, x1 + dx, y1]
            if o.get("point") is not None:
                o["point"] = [o["point"][0] + dx, o["point"][1]]
            if o.get("polygon") is not None:
                o["polygon"] = [[x + dx, y] for x, y in o["polygon"]]
            if o.get("keypoints"):
                o["keypoints"] = {name: [x + dx, y] for name, (x, y) in o["keypoints"].items()}
            out.append(o)
        return out

    sample = {k: v for k, v in left_sample.items() if k not in ("referring", "negatives")}
    sample.update(width=image.width, objects=shifted(left_sample["objects"], 0) + shifted(right_sample["objects"],
                                                                                            left.width),
                  categories=sorted(set(left_sample.get("categories", [])) | set(right_sample.get("categories", []))),
                  source=f"{left_sample['source']}+negative-concat")
    held = shifted(left_sample.get("held_out", []), 0) + shifted(right_sample.get("held_out", []), left.width)
    if held:
        sample["held_out"] = held
    return image, sample


_VOCAB = {"kind": TRAIN_KINDS, "color": tuple(COLORS), "texture": TEXTURES, "size": tuple(SIZES)}


def _shrink(old: str, new: str) -> float:
    return float(np.mean(SIZES[new]) / np.mean(SIZES[old]))


def _random_change(attributes: dict, rng: random.Random, named: Sequence[str]) -> dict:
    """Change one attribute that the scene's phrases name, so the original phrase no longer fits."""
    keys = [k for k in named if k != "size" or attributes["size"] != "small"] or ["kind"]
    key = rng.choice(keys)
    pool = _VOCAB[key]
    if key == "size":  # only smaller: the new shape must fit the old box
        order = list(SIZES)
        pool = order[: order.index(attributes["size"])]
    return {key: rng.choice([v for v in pool if v != attributes[key]])}


# --------------------------------------------------------------------------- filters


def box_filter(boxes: Sequence[Sequence[float]], threshold: float = COVER_THRESHOLD) -> list[bool]:
    """Which boxes may be edited: a box is skipped when it covers more than ``threshold`` of another
    box's area (painting it would paint over that object too)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(b):
        return []
    ix0 = np.maximum(b[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(b[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(b[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(b[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    areas = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    covered = inter / np.maximum(areas[None, :], 1e-9)  # [i, j]: the share of box j inside box i
    np.fill_diagonal(covered, 0.0)
    return [bool(row.max() <= threshold) for row in covered]


class ClipFilter:
    """CLIP similarity between a painted region and the negative text (a local CLIPModel folder)."""

    def __init__(self, path: str, threshold: float = 0.25, device: str = "cpu"):
        import torch
        from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

        if not os.path.isdir(path):
            raise FileNotFoundError(f"CLIP model folder {path!r} does not exist (hub names are not fetched)")
        self.torch, self.path, self.threshold, self.device = torch, path, threshold, device
        self.model = CLIPModel.from_pretrained(path).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.image_processor = CLIPImageProcessorPil.from_pretrained(path)

    def similarity(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each image with its text (pairwise, same lengths)."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        torch = self.torch
        pixels = self.image_processor([im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            image_out = self.model.get_image_features(pixel_values=pixels.to(self.device))
            text_out = self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()})
        image_emb = _embedding(image_out)
        text_emb = _embedding(text_out)
        image_emb = image_emb / image_emb.norm(dim=-1, keepdim=True)
        text_emb = text_emb / text_emb.norm(dim=-1, keepdim=True)
        return (image_emb * text_emb).sum(-1).cpu().numpy()

    def keep(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[bool]:
        return [bool(s >= self.threshold) for s in self.similarity(images, texts)]


def _embedding(output):
    # transformers 5 may return a model output object instead of a tensor
    return output if hasattr(output, "norm") else output.pooler_output


# --------------------------------------------------------------------------- inpainting


class InpaintingBackend:
    """A diffusers inpainting pipeline from a local folder (``pip install diffusers``).

    Any pipeline that ``AutoPipelineForInpainting`` loads works (Stable Diffusion inpainting,
    SDXL inpainting, ...). The image is painted at ``resolution`` and the box region is cut back
    into the original, so nothing outside the box changes.
    """

    def __init__(self, path: str, device: str = "cpu", steps: int = 30, guidance_scale: float = 7.5,
                 resolution: int = 512):
        try:
            from diffusers import AutoPipelineForInpainting
        except ImportError as e:
            raise ImportError("the inpainting backend needs diffusers: pip install diffusers") from e
        if not os.path.isdir(path):
            raise FileNotFoundError(f"inpainting model folder {path!r} does not exist (hub names are not fetched)")
        self.pipe = AutoPipelineForInpainting.from_pretrained(path).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.path, self.device, self.steps = path, device, steps
        self.guidance_scale, self.resolution = guidance_scale, resolution

    def inpaint(self, image: Image.Image, box: Sequence[float], text: str, seed: int = 0) -> Image.Image:
        """``image`` with ``text`` painted into ``box``; pixels outside the box are the original's."""
        import torch

        image = image.convert("RGB")
        w, h = image.size
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        mask = Image.new("L", (w, h), 0)
        mask.paste(255, (x0, y0, x1, y1))
        r = self.resolution
        generator = torch.Generator(device="cpu").manual_seed(seed)
        painted = self.pipe(prompt=text, image=image.resize((r, r)), mask_image=mask.resize((r, r)),
                            num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                            height=r, width=r, generator=generator).images[0]
        out = image.copy()
        out.paste(painted.resize((w, h)).crop((x0, y0, x1, y1)), (x0, y0))
        return out


@dataclass
class NegativeImage:
    image: Image.Image
    box: list[float]
    original: str       # the description that no longer holds in the box
    negative: str       # the foil painted there: what was asked for, not a label (only CLIP-filtered)
    clip_score: float | None
    index: int          # the edited object's position in the sample's objects


# A place cannot be painted inside a box ("a dog on the right" painted over the left dog still shows a
# dog on the left), so spatial foils are not painted.
PAINTABLE_FOIL_KINDS = tuple(k for k in FOIL_KINDS if k != "spatial")


def negative_images(image: Image.Image, sample: dict, backend: InpaintingBackend, foiler: RuleFoiler | None = None,
                    clip_filter: ClipFilter | None = None, rng: random.Random | int | None = None,
                    max_images: int = 1, skipped: Counter | None = None) -> list[NegativeImage]:
    """Up to ``max_images`` negative images of a real sample: pick objects that pass the box filter,
    write a rule foil of each one's phrase, paint it into its box, keep what passes the CLIP filter.

    A foil that is the phrase of an annotated object is not painted: that phrase's answer would miss
    the painted one. ``skipped``, when given, counts what was left out: ``box_filter`` (boxes),
    ``no_foil`` (objects whose phrase has no paintable foil) and ``clip_filter`` (paintings).
    """
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    foiler = foiler or RuleFoiler()
    skipped = Counter() if skipped is None else skipped
    boxed = [(i, o) for i, o in enumerate(sample["objects"]) if o.get("bbox") is not None]
    editable = [item for item, ok in zip(boxed, box_filter([o["bbox"] for _, o in boxed])) if ok]
    skipped["box_filter"] += len(boxed) - len(editable)
    present = {o["phrase"] for o in sample["objects"]}
    # A phrase whose instances are not all labelled (LVIS) cannot be said to be gone once one is painted over.
    unlabelled = set(sample.get("not_exhaustive_categories", []))
    rng.shuffle(editable)
    out = []
    for index, obj in editable:
        if obj["phrase"] in unlabelled:
            continue
        foils = [f.text for f in foiler.foils(obj["phrase"], kinds=PAINTABLE_FOIL_KINDS) if f.text not in present]
        if not foils:
            skipped["no_foil"] += 1
            continue
        foil = rng.choice(foils)
        painted = backend.inpaint(image, obj["bbox"], foil, seed=rng.getrandbits(31))
        score = None
        if clip_filter is not None:
            region = painted.crop(tuple(int(round(v)) for v in obj["bbox"]))
            score = float(clip_filter.similarity([region], [foil])[0])
            if score < clip_filter.threshold:
                skipped["clip_filter"] += 1
                continue
        out.append(NegativeImage(painted, list(obj["bbox"]), obj["phrase"], foil, score, index))
        if len(out) >= max_images:
            break
    return out


# --------------------------------------------------------------------------- packing real negatives
#
# Unlike a re-drawn synthetic shape, a photo's painted box is labelled by nobody: the foil is what the
# painter was asked for and what CLIP found close enough, so it is never asked nor answered. What is
# known is the original's labels: the edited object is gone from its box, every other object (other
# instances of the same phrase included) is where it was.
#
# The edited box does not go into the sample's ``negatives``. Negatives are prompt conditioning ("do not
# find these"), and the task builders never ask a negative phrase nor answer its objects
# (data_engines/tasks.py). With the original phrase as a negative, an example could not ask the question
# the negative image exists for (the original phrase, answered without the edited box), would drop the
# phrase's remaining instances from the answer, and would show the model the edited box in the prompt.
# The edit is recorded in ``negative_edit`` instead.

# Not carried over: referring expressions and negatives may describe the edited object, and with an
# unlabelled painting in it the image is not exhaustive (no detect_all).
_NOT_CARRIED = ("referring", "negatives", "exhaustive")
_PIXEL_LABELS = ("mask", "polygon", "point", "keypoints")


def real_negative_sample(sample: dict, negative: NegativeImage) -> dict:
    """The labels of ``negative.image``: the original's objects without the edited one, the original
    phrase kept as a category (answered with its other instances, or None where none is left), the foil
    never a category, and ``negative_edit``: the box, the original phrase, the foil, the CLIP score and
    the original image."""
    objects = [_without_painted_pixels(o, negative.box) for i, o in enumerate(sample["objects"]) if i != negative.index]
    categories = (set(sample.get("categories", [])) | {negative.original}) - {negative.negative}
    out = {k: v for k, v in sample.items() if k not in _NOT_CARRIED}
    out.update(objects=objects, categories=sorted(categories), source=f"{sample.get('source', 'real')}+negative",
               negative_edit={"box": list(negative.box), "original": negative.original, "foil": negative.negative,
                              "clip_score": negative.clip_score, "original_image": sample.get("image")})
    return out


def _without_painted_pixels(obj: dict, box: Sequence[float]) -> dict:
    """``obj`` without its pixel-level labels when its box meets the painted box: the paint may have
    covered part of it. Its box stays, as an occluded object's box does."""
    b = obj.get("bbox")
    if b is None or b[2] <= box[0] or box[2] <= b[0] or b[3] <= box[1] or box[3] <= b[1]:
        return obj
    return {k: v for k, v in obj.items() if k not in _PIXEL_LABELS}


def pack_real_negative(image: Image.Image, sample: dict, negative: NegativeImage,
                       packing: str) -> tuple[Image.Image, dict]:
    """A training sample of a real negative image (from ``image`` and its ``sample``), packed as

    - ``separate``: the negative image alone, labelled by :func:`real_negative_sample`;
    - ``concat``: the original (left) and the negative (right) side by side: the original phrase is
      found on the left and wherever it remains on the right, not in the edited box.
    """
    if packing not in PACKINGS:
        raise ValueError(f"unknown packing {packing!r}; expected one of {PACKINGS}")
    right = real_negative_sample(sample, negative)
    if packing == "separate":
        return negative.image, right
    left = {k: v for k, v in sample.items() if k not in _NOT_CARRIED}
    packed_image, packed = side_by_side(image.convert("RGB"), left, negative.image, right)
    x0, y0, x1, y1 = negative.box
    packed["categories"] = [c for c in packed["categories"] if c != negative.negative]
    packed["negative_edit"] = dict(right["negative_edit"], box=[x0 + image.width, y0, x1 + image.width, y1])
    return packed_image, packed


# --------------------------------------------------------------------------- writing a data set


@dataclass
class NegativeImageReport:
    """What :func:`write_negative_images` did; a resumed run goes on counting."""

    images: int = 0       # input images done
    negatives: int = 0    # negative images kept
    samples: int = 0      # samples written (one per negative and packing)
    box_filter: int = 0   # boxes the box filter ruled out
    no_foil: int = 0      # objects whose phrase has no paintable foil
    clip_filter: int = 0  # paintings the CLIP filter rejected
    unreadable: int = 0   # images that could not be decoded

    def __str__(self) -> str:
        return (f"wrote {self.samples} samples from {self.negatives} negative images of {self.images} images; "
                f"skipped {self.box_filter} boxes (box filter), {self.clip_filter} paintings (CLIP filter), "
                f"{self.no_foil} objects without a foil, {self.unreadable} unreadable images")


PROGRESS_FILE = "progress.json"


def write_negative_images(samples: Sequence[dict], out_dir: str, backend: InpaintingBackend,
                          clip_filter: ClipFilter | None = None, packing: str = "both", per_image: int = 1,
                          limit: int | None = None, seed: int = 0, resume: bool = False, source: str | None = None,
                          progress: bool = True) -> NegativeImageReport:
    """Paint negatives into real ``samples`` (images on disk) and write them as a data set that a
    mixture reads like any other: ``out_dir/images/*.png`` and ``out_dir/samples.jsonl``.

    Image ``i`` of the first ``limit`` gets up to ``per_image`` negatives (:func:`negative_images`, seed
    ``f"{seed}:{i}"``), each written in ``packing`` (``separate``, ``concat``, or ``both``: two samples).
    PNG keeps the negative equal to the original outside the box. An unreadable image is skipped and
    counted. ``out_dir`` must be empty unless ``resume``: ``progress.json`` records after every image how
    many are done and how long ``samples.jsonl`` was, so a resumed run (same settings, ``source`` naming
    the input) continues where the last one stopped and ends as one run without a stop would.
    """
    if packing not in (*PACKINGS, "both"):
        raise ValueError(f"unknown packing {packing!r}; expected one of {PACKINGS} or both")
    if per_image < 1:
        raise ValueError(f"per_image must be at least 1, got {per_image}")
    settings = {"source": source, "inpaint_model": os.path.abspath(backend.path), "steps": backend.steps,
                "guidance_scale": backend.guidance_scale, "resolution": backend.resolution,
                "clip_model": clip_filter and os.path.abspath(clip_filter.path),
                "clip_threshold": clip_filter and clip_filter.threshold,
                "packing": packing, "per_image": per_image, "seed": seed}
    state = _start_run(out_dir, settings, resume)
    report = NegativeImageReport(**state["report"])
    packings = PACKINGS if packing == "both" else (packing,)
    total = len(samples) if limit is None else min(limit, len(samples))
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    _save_progress(out_dir, dict(state, settings=settings))  # from now on the folder can be resumed
    jsonl = os.path.join(out_dir, "samples.jsonl")
    if os.path.exists(jsonl):
        os.truncate(jsonl, state["bytes"])  # the lines of an image the last run did not finish
    from tqdm import tqdm

    with open(jsonl, "ab") as f:
        for i in tqdm(range(state["done"], total), desc="negative images", unit="image", initial=state["done"],
                      total=total, disable=not progress):
            lines = _negatives_of(i, samples[i], out_dir, backend, clip_filter, packings, per_image, seed, report)
            f.write("".join(lines).encode("utf-8"))
            f.flush()
            report.images += 1
            _save_progress(out_dir, {"settings": settings, "done": i + 1, "bytes": f.tell(), "report": asdict(report)})
    return report


def _negatives_of(i: int, sample: dict, out_dir: str, backend: InpaintingBackend, clip_filter: ClipFilter | None,
                  packings: Sequence[str], per_image: int, seed: int, report: NegativeImageReport) -> list[str]:
    """Paint, pack and save the negatives of input image ``i``; returns their JSONL lines."""
    try:
        with Image.open(sample["image"]) as im:
            image = im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        report.unreadable += 1
        return []
    skipped = Counter()
    negatives = negative_images(image, sample, backend, clip_filter=clip_filter, rng=random.Random(f"{seed}:{i}"),
                                max_images=per_image, skipped=skipped)
    for reason, n in skipped.items():
        setattr(report, reason, getattr(report, reason) + n)
    lines = []
    for k, negative in enumerate(negatives):
        for packing in packings:
            packed_image, packed = pack_real_negative(image, sample, negative, packing)
            name = f"images/{i:07d}_{k}_{packing}.png"
            packed_image.save(os.path.join(out_dir, name))
            lines.append(json.dumps(dict(packed, image=name), ensure_ascii=False) + "\n")
    report.negatives += len(negatives)
    report.samples += len(lines)
    return lines


def _start_run(out_dir: str, settings: dict, resume: bool) -> dict:
    """The state to start from: nothing done for an empty folder, else (``resume``) the last run's."""
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return {"done": 0, "bytes": 0, "report": {}}
    path = os.path.join(out_dir, PROGRESS_FILE)
    if not resume:
        raise ValueError(f"output folder {out_dir!r} is not empty: resume its run (--resume) or choose an empty one")
    if not os.path.isfile(path):
        raise ValueError(f"output folder {out_dir!r} is not empty and has no {PROGRESS_FILE} of a run to resume")
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    changed = sorted(k for k in settings.keys() | state["settings"].keys()
                     if settings.get(k) != state["settings"].get(k))
    if changed:
        raise ValueError(f"cannot resume the run in {out_dir!r} with other settings: {changed} differ")
    return state


def _save_progress(out_dir: str, state: dict) -> None:
    path = os.path.join(out_dir, PROGRESS_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
    os.replace(path + ".tmp", path)  # a stop mid-write leaves the previous state whole
