"""The synthetic scene engine: PIL scenes with exact labels, the project's embedded data set.

``generate_scene(rng, size, mode)`` returns ``(PIL.Image, sample)`` in memory, the sample in the
schema of docs/data.md. Modes:

- ``shapes``: 2-8 shapes (8 kinds) with colours, sizes and textures on a cluttered background;
  phrases with attributes, referring expressions with spatial relations, hard distractors (same
  shape in another colour, same colour in another shape) and verified-absent phrases.
- ``single``: one to three plain shapes on a plain or noisy background (the learning experiment).
- ``ocr``: rendered words (boxes, polygons, text).
- ``keypoints``: articulated stick figures with the 17 named person joints.
- ``gui``: a window of labelled buttons and fields.

``kinds=OOD_KINDS`` draws shapes never used in training, for out-of-distribution tests;
``held_out=(1, 2)`` adds a few of them to a scene unlabelled (``sample["held_out"]``) as distractors.
Objects never overlap, so every mask is the visible object and every point lies on it.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rexomni.prompts import PERSON_KEYPOINTS

from .masks import deepest_point, mask_bbox, rle_encode

MODES = ("shapes", "single", "ocr", "keypoints", "gui")

TRAIN_KINDS = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring")
OOD_KINDS = ("heart", "crescent", "arrow")  # held out: never drawn unless asked for
COLORS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220), "yellow": (240, 220, 30),
    "orange": (245, 140, 20), "purple": (140, 50, 180), "pink": (250, 120, 190), "brown": (130, 80, 40),
    "black": (15, 15, 15), "white": (245, 245, 245), "cyan": (30, 210, 220),
}
TEXTURES = ("plain", "striped", "dotted", "checkered")
# Object extent (longest side) as a fraction of the image side; gaps between the bins keep
# "small" and "large" unambiguous to the eye.
SIZES = {"small": (0.09, 0.13), "medium": (0.17, 0.22), "large": (0.27, 0.34)}
BACKGROUNDS = ("plain", "noise", "gradient", "stripes", "clutter")
_MODE_BACKGROUNDS = {"single": ("plain", "noise"), "shapes": BACKGROUNDS, "ocr": ("plain", "noise", "gradient"),
                     "keypoints": ("plain", "noise", "gradient", "clutter")}
WORDS = ("OPEN", "EXIT", "STOP", "SALE", "PUSH", "PULL", "CAFE", "HOTEL", "PARK", "BUS", "TAXI", "MENU",
         "HELP", "INFO", "LOBBY", "PIZZA", "BOOKS", "FRESH", "CLOSED", "ENTER", "RADIO", "MUSIC", "LIGHT",
         "WATER", "NORTH", "SOUTH", "SCHOOL", "BANK", "POST", "ZONE", "FIRE", "DANGER", "GATE", "ROOM", "HALL")
GUI_LABELS = ("OK", "Cancel", "Save", "Open", "Close", "Search", "Settings", "Help", "Back", "Next", "Send",
              "Delete", "Edit", "Share", "Login", "Sign up", "Upload", "Download", "Print", "Refresh")
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}

_FONT_CACHE: dict[int, ImageFont.FreeTypeFont] = {}


def _font(size: int) -> ImageFont.FreeTypeFont:
    if size not in _FONT_CACHE:
        _FONT_CACHE[size] = ImageFont.load_default(size=size)
    return _FONT_CACHE[size]


@dataclass
class _Placed:
    """One drawn object: its full-image bbox, local mask (inside bbox) and attributes."""

    box: list[float]
    local: np.ndarray
    attributes: dict


# --------------------------------------------------------------------------- entry point


def generate_scene(seed_or_rng: int | random.Random | None = None, size: int | Sequence[int] = 224,
                   mode: str = "shapes", *, kinds: Sequence[str] = TRAIN_KINDS,
                   colors: Sequence[str] | None = None, sizes: Sequence[str] | None = None,
                   backgrounds: Sequence[str] | None = None, num_objects: tuple[int, int] | None = None,
                   granularity: str | None = None, negative_prob: float = 0.0,
                   distractors: bool | None = None, held_out: int | Sequence[int] = 0,
                   held_out_kinds: Sequence[str] = OOD_KINDS, masks: bool = True,
                   absent_change: Sequence[str] | None = None,
                   unrelated_absent: int | Sequence[int] = 0) -> tuple[Image.Image, dict]:
    """Draw one scene; returns ``(image, sample)``. Same seed, same scene.

    ``granularity`` (shapes/single) names objects by ``kind``, ``color kind`` or ``size color kind``
    (drawn per scene when None); every object of a scene uses the same granularity, so a phrase's
    objects are exactly those matching it. ``negative_prob`` (shapes/single) is the chance of turning
    one hard distractor into a negative (conditioning) phrase, with its boxes half the time: a present
    phrase with a look-alike among the others (the same kind in another colour or the same colour in
    another kind; else any present phrase) or a held-out object's phrase. ``held_out`` (shapes/single,
    a count or a (min, max) range) adds shapes of ``held_out_kinds`` that are no object of the sample:
    they are listed, named at the scene's granularity, in ``sample["held_out"]``, and asked about only
    as negatives (out-of-distribution objects for evaluation, never-asked distractors for training).
    ``sizes`` (shapes/single)
    restricts the size classes of :data:`SIZES` and ``backgrounds`` the background kinds of
    :data:`BACKGROUNDS` (modes that draw one). ``masks=False`` skips the RLE masks (points are
    still computed). ``distractors`` (shapes/single; default: shapes yes, single no) follows half of
    the objects with a hard distractor: the same kind in another colour or the same colour in another kind.
    ``absent_change`` (shapes/single) names the attributes an absent look-alike may differ in (default:
    every one the granularity names): ``["color"]`` asks lists that only colour decides.
    ``unrelated_absent`` (shapes/single, a count or a (min, max) range drawn per scene) adds that many
    absent phrases drawn from the whole vocabulary (the training kinds and colours at the scene's
    granularity) to the look-alikes: a detector is asked long category lists, most of whose phrases
    name nothing like what the image shows; a range from 0 keeps short lists in the mix.
    """
    unknown = [k for k in list(kinds) + list(held_out_kinds) if k not in _SHAPES]
    if unknown:
        raise ValueError(f"unknown shape kinds {unknown}; known: {sorted(_SHAPES)}")
    if absent_change is not None and (not absent_change or not set(absent_change) <= {"kind", "color", "size"}):
        raise ValueError(f"absent_change must name attributes among ['kind', 'color', 'size'], got {absent_change!r}")
    unrelated_absent = _count_range("unrelated_absent", unrelated_absent)
    if sizes is not None and (not sizes or any(s not in SIZES for s in sizes)):
        raise ValueError(f"sizes must name size classes among {list(SIZES)}, got {list(sizes)}")
    sizes = tuple(sizes or SIZES)
    colors = list(colors or COLORS)
    scene = _start_scene(seed_or_rng, size, mode, backgrounds)
    rng, width, height = scene.rng, scene.width, scene.height
    if mode == "single":
        scene.shapes(kinds, colors, num_objects or (1, 3), textures=False, sizes=sizes, distractors=bool(distractors))
        scene.held_out_shapes(held_out_kinds, colors, held_out, sizes, textures=False)
        granularity = granularity or "color kind"
        sample = scene.shape_sample(granularity, referring=False, negative_prob=negative_prob,
                                    absent_change=absent_change, unrelated_absent=unrelated_absent)
    elif mode == "shapes":
        scene.shapes(kinds, colors, num_objects or (2, 8), textures=True, sizes=sizes,
                     distractors=distractors is not False)
        scene.held_out_shapes(held_out_kinds, colors, held_out, sizes, textures=True)
        granularity = granularity or rng.choice(("kind", "color kind", "color kind", "size color kind"))
        sample = scene.shape_sample(granularity, referring=True, negative_prob=negative_prob,
                                    absent_change=absent_change, unrelated_absent=unrelated_absent)
    elif mode == "ocr":
        sample = scene.words(num_objects or (2, 6))
    elif mode == "keypoints":
        sample = scene.figures(num_objects or (1, 3))
    else:
        sample = scene.gui(num_objects or (3, 8))
    if mode in ("single", "shapes"):
        sample["granularity"] = granularity
    # Every drawn object is in the sample (held-out shapes aside): the labels are exhaustive.
    sample.update({"image": None, "width": width, "height": height, "source": f"synth/{mode}",
                   "exhaustive": not scene.held_out})
    for obj, placed in zip(sample["objects"], scene.placed):
        if masks:
            full = np.zeros((height, width), dtype=bool)
            x0, y0 = int(placed.box[0]), int(placed.box[1])
            full[y0:y0 + placed.local.shape[0], x0:x0 + placed.local.shape[1]] = placed.local
            obj["mask"] = rle_encode(full)
    return scene.image, sample


def _start_scene(seed_or_rng, size, mode: str, backgrounds: Sequence[str] | None = None) -> _Scene:
    """A scene with its background drawn: the first draws of every scene, so replaying them with
    the same seed gives the background without the objects (the negative image engine needs it)."""
    rng = seed_or_rng if isinstance(seed_or_rng, random.Random) else random.Random(seed_or_rng)
    width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if mode not in MODES:
        raise ValueError(f"unknown synth mode {mode!r}; expected one of {MODES}")
    if backgrounds is not None and (not backgrounds or any(b not in BACKGROUNDS for b in backgrounds)):
        raise ValueError(f"backgrounds must name kinds among {list(BACKGROUNDS)}, got {list(backgrounds)}")
    scene = _Scene(rng, width, height)
    if mode in _MODE_BACKGROUNDS:
        scene.background(rng.choice(tuple(backgrounds or _MODE_BACKGROUNDS[mode])))
    return scene


def background_of(seed: int, size: int | Sequence[int] = 224, mode: str = "shapes",
                  backgrounds: Sequence[str] | None = None) -> Image.Image:
    """The background of scene ``seed`` without its objects (``backgrounds`` as the scene was made)."""
    return _start_scene(seed, size, mode, backgrounds).image


def draw_shape(kind: str, color: str, texture: str, side: int, rng: random.Random) -> tuple[Image.Image, Image.Image]:
    """One shape on a ``side`` x ``side`` canvas: (RGB canvas, L mask)."""
    mask = Image.new("L", (side, side), 0)
    _draw_kind(ImageDraw.Draw(mask), kind, side)
    rgb = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in COLORS[color])
    canvas = Image.new("RGB", (side, side), rgb)
    _texture(canvas, texture, rgb, rng)
    return canvas, mask


# --------------------------------------------------------------------------- shapes


def _regular(n: int, rotation: float = -math.pi / 2, radius: float = 1.0) -> list[tuple[float, float]]:
    return [(radius * math.cos(rotation + 2 * math.pi * i / n), radius * math.sin(rotation + 2 * math.pi * i / n))
            for i in range(n)]


def _star() -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        r = 1.0 if i % 2 == 0 else 0.45
        a = -math.pi / 2 + math.pi * i / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart() -> list[tuple[float, float]]:
    ts = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    x = 16 * np.sin(ts) ** 3
    y = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
    return list(zip(x / 17, (y + 2.5) / 17))


# Unit polygons in [-1, 1]^2 (None: drawn by a function below).
_SHAPES: dict[str, list | None] = {
    "circle": None, "ring": None, "crescent": None,
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 0.8), (-1, 0.8)],
    "star": _star(),
    "hexagon": _regular(6, 0),
    "diamond": [(0, -1), (0.75, 0), (0, 1), (-0.75, 0)],
    "cross": [(-0.33, -1), (0.33, -1), (0.33, -0.33), (1, -0.33), (1, 0.33), (0.33, 0.33), (0.33, 1), (-0.33, 1),
              (-0.33, 0.33), (-1, 0.33), (-1, -0.33), (-0.33, -0.33)],
    "heart": _heart(),
    "arrow": [(-1, -0.3), (0.2, -0.3), (0.2, -0.8), (1, 0), (0.2, 0.8), (0.2, 0.3), (-1, 0.3)],
}


def _draw_kind(draw: ImageDraw.ImageDraw, kind: str, side: int) -> None:
    """Fill the shape ``kind`` (value 255) on a ``side`` x ``side`` canvas."""
    s = side - 1
    if kind == "circle":
        draw.ellipse([0, 0, s, s], fill=255)
    elif kind == "ring":
        draw.ellipse([0, 0, s, s], fill=255)
        k = side * 0.28
        draw.ellipse([k, k, s - k, s - k], fill=0)
    elif kind == "crescent":
        draw.ellipse([0, 0, s, s], fill=255)
        draw.ellipse([side * 0.35, -side * 0.1, s + side * 0.35, s - side * 0.1], fill=0)
    else:
        half = s / 2
        draw.polygon([(half + x * half, half + y * half) for x, y in _SHAPES[kind]], fill=255)


def _texture(canvas: Image.Image, texture: str, color: tuple[int, int, int], rng: random.Random) -> None:
    if texture == "plain":
        return
    shade = tuple(int(c * 0.45) for c in color) if sum(color) > 200 else tuple(min(255, c + 110) for c in color)
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    step = max(4, min(w, h) // rng.randint(3, 5))
    if texture == "striped":
        for x in range(-h, w, step):
            draw.line([(x, 0), (x + h, h)], fill=shade, width=max(1, step // 3))
    elif texture == "dotted":
        r = max(1, step // 4)
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=shade)
    else:  # checkered
        for y in range(0, h, step):
            for x in range((y // step) % 2 * step, w, 2 * step):
                draw.rectangle([x, y, x + step - 1, y + step - 1], fill=shade)


# --------------------------------------------------------------------------- a scene under construction


class _Scene:
    def __init__(self, rng: random.Random, width: int, height: int):
        self.rng, self.width, self.height = rng, width, height
        self.nprng = np.random.default_rng(rng.getrandbits(32))
        self.image: Image.Image = Image.new("RGB", (width, height))
        self.placed: list[_Placed] = []
        self.held_out: list[_Placed] = []  # drawn, but no object of the sample
        self.mean_color = np.zeros(3)

    # ---- backgrounds
    def background(self, kind: str) -> None:
        rng, w, h = self.rng, self.width, self.height
        base = np.array([rng.randint(70, 190)] * 3) + np.array([rng.randint(-25, 25) for _ in range(3)])
        self.mean_color = base.astype(np.float64)
        if kind == "plain":
            self.image = Image.new("RGB", (w, h), tuple(int(c) for c in base))
            return
        if kind in ("noise", "clutter"):  # float32 noise: the background is the costliest part of a scene
            sigma = rng.uniform(8, 30) if kind == "noise" else 10.0
            arr = self.nprng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(sigma) + base.astype(np.float32)
        elif kind == "gradient":
            other = base + np.array([rng.randint(-60, 60) for _ in range(3)])
            horizontal = rng.random() < 0.5
            t = np.linspace(0, 1, w if horizontal else h, dtype=np.float32)
            t = t[None, :, None] if horizontal else t[:, None, None]
            arr = np.broadcast_to(base * (1 - t) + other * t, (h, w, 3))
        else:  # stripes
            period = rng.randint(6, 20)
            horizontal = rng.random() < 0.5
            band = (np.arange(w if horizontal else h) // period) % 2
            band = band[None, :, None] if horizontal else band[:, None, None]
            arr = np.broadcast_to(base + band * rng.randint(10, 30), (h, w, 3))
        self.image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        if kind == "clutter":  # thin marks that are no object
            draw = ImageDraw.Draw(self.image)
            for _ in range(rng.randint(15, 40)):
                tone = tuple(min(255, max(0, int(c) + rng.randint(-50, 50))) for c in base)
                x, y = rng.uniform(0, w), rng.uniform(0, h)
                draw.line([(x, y), (x + rng.uniform(-30, 30), y + rng.uniform(-30, 30))], fill=tone, width=1)

    # ---- placement
    def _place(self, bw: int, bh: int, tries: int = 30) -> tuple[int, int] | None:
        """A free spot (top-left) for a bw x bh box, 2 px away from every placed object."""
        for _ in range(tries):
            x = self.rng.randint(0, max(0, self.width - bw))
            y = self.rng.randint(0, max(0, self.height - bh))
            if all(x + bw + 2 <= p.box[0] or p.box[2] + 2 <= x or y + bh + 2 <= p.box[1] or p.box[3] + 2 <= y
                   for p in self.placed + self.held_out):
                return x, y
        return None

    def _paste(self, canvas: Image.Image, mask: Image.Image, xy: tuple[int, int], attributes: dict,
               into: list[_Placed] | None = None) -> None:
        """Paste a drawn object and record its exact box and mask (the box is the mask's tight box) in
        ``into`` (default: the sample's objects)."""
        self.image.paste(canvas, xy, mask)
        local = np.asarray(mask) > 0
        tight = mask_bbox(local)
        if tight is None:
            return
        lx0, ly0, lx1, ly1 = (int(v) for v in tight)
        box = [float(xy[0] + lx0), float(xy[1] + ly0), float(xy[0] + lx1), float(xy[1] + ly1)]
        (self.placed if into is None else into).append(_Placed(box, local[ly0:ly1, lx0:lx1], attributes))

    def _contrasting(self, colors: Sequence[str]) -> list[str]:
        ok = [c for c in colors if np.abs(np.array(COLORS[c]) - self.mean_color).sum() > 150]
        return ok or list(colors)

    def _shape(self, kind: str, color: str, size: str, texture: str, into: list[_Placed] | None = None) -> bool:
        lo, hi = SIZES[size]
        side = max(6, int(self.rng.uniform(lo, hi) * min(self.width, self.height)))
        xy = self._place(side, side)
        if xy is None:
            return False
        canvas, mask = draw_shape(kind, color, texture, side, self.rng)
        self._paste(canvas, mask, xy, {"kind": kind, "color": color, "size": size, "texture": texture}, into)
        return True

    def shapes(self, kinds, colors, count, textures: bool, sizes, distractors: bool = False) -> None:
        rng = self.rng
        colors = self._contrasting(colors)
        n = rng.randint(*count)
        todo = []
        while len(todo) < n:
            spec = [rng.choice(kinds), rng.choice(colors), rng.choice(sizes),
                    rng.choice(TEXTURES) if textures and rng.random() < 0.4 else "plain"]
            todo.append(spec)
            if distractors and len(todo) < n and rng.random() < 0.5:
                # A hard distractor: the same shape in another colour, or the same colour in another shape.
                other = list(spec)
                if rng.random() < 0.5 and len(colors) > 1:
                    other[1] = rng.choice([c for c in colors if c != spec[1]])
                elif len(kinds) > 1:
                    other[0] = rng.choice([k for k in kinds if k != spec[0]])
                todo.append(other)
        for spec in todo:
            self._shape(*spec)
        if not self.placed:  # the image was too crowded for even one: force a small one
            self._shape(kinds[0], colors[0], "small", "plain")

    def held_out_shapes(self, kinds, colors, count: int | Sequence[int], sizes, textures: bool) -> None:
        """``count`` (or a (min, max) range) shapes of ``kinds`` in free spots, kept out of the objects."""
        rng = self.rng
        low, high = _count_range("held_out", count)
        for _ in range(rng.randint(low, high) if high else 0):
            texture = rng.choice(TEXTURES) if textures and rng.random() < 0.4 else "plain"
            self._shape(rng.choice(kinds), rng.choice(self._contrasting(colors)), rng.choice(sizes), texture,
                        into=self.held_out)

    # ---- naming shapes
    @staticmethod
    def _name(attrs: dict, granularity: str) -> str:
        return shape_phrase(attrs, granularity)

    def shape_sample(self, granularity: str, referring: bool, negative_prob: float = 0.0,
                     absent_change: Sequence[str] | None = None,
                     unrelated_absent: tuple[int, int] = (0, 0)) -> dict:
        rng = self.rng
        objects = []
        for p in self.placed:
            local = p.local
            point = deepest_point(local)
            objects.append({"phrase": self._name(p.attributes, granularity), "bbox": p.box,
                            "point": [p.box[0] + point[0], p.box[1] + point[1]], "attributes": dict(p.attributes)})
        present = sorted({o["phrase"] for o in objects})
        held = [{"phrase": self._name(p.attributes, granularity), "bbox": p.box, "attributes": dict(p.attributes)}
                for p in self.held_out]
        held_phrases = {h["phrase"] for h in held}
        absent = [c for c in self._absent(granularity, present, absent_change) if c not in held_phrases]
        low, high = unrelated_absent
        if high:
            count = low if low == high else rng.randint(low, high)  # a fixed count keeps run 51's scenes
            pool = sorted(set(vocabulary(granularity)) - set(present) - set(absent) - held_phrases)
            absent += rng.sample(pool, min(count, len(pool)))
        sample: dict = {"objects": objects, "categories": sorted(set(present) | set(absent))}
        if held:
            sample["held_out"] = held
        if referring:
            sample["referring"] = self._referring(granularity)
        if negative_prob and (len(present) > 1 or held) and rng.random() < negative_prob:
            several = len(present) > 1  # a present phrase may be the negative only if another is left to find
            pool = ((self._lookalike_phrases(granularity) if several else [])
                    + [h["phrase"] for h in held if h["phrase"] not in present])
            pool = pool or (present if several else [])
            if pool:
                negative = rng.choice(pool)
                sample["negatives"] = {"phrases": [negative]}
                if rng.random() < 0.5:
                    sample["negatives"]["boxes"] = [o["bbox"] for o in objects + held if o["phrase"] == negative]
        return sample

    def _lookalike_phrases(self, granularity: str) -> list[str]:
        """Phrases of objects that have a hard distractor with another phrase: an object differing from
        it in kind alone or in colour alone."""
        out = set()
        for a in self.placed:
            for b in self.placed:
                differ = [k for k in ("kind", "color") if a.attributes[k] != b.attributes[k]]
                if len(differ) == 1 and self._name(a.attributes, granularity) != self._name(b.attributes, granularity):
                    out.add(self._name(a.attributes, granularity))
        return sorted(out)

    def _absent(self, granularity: str, present: list[str], change: Sequence[str] | None = None) -> list[str]:
        """Hard absent phrases: each present phrase with one attribute (of ``change``, default any the
        granularity names) changed, when that is absent."""
        keys = [k for k in ("kind", "color", "size") if k in granularity and (change is None or k in change)]
        if not keys:
            return []
        out = []
        for p in self.placed[:6]:
            attrs = dict(p.attributes)
            key = self.rng.choice(keys)
            pool = {"kind": TRAIN_KINDS, "color": tuple(COLORS), "size": tuple(SIZES)}[key]
            attrs[key] = self.rng.choice([v for v in pool if v != attrs[key]])
            name = self._name(attrs, granularity)
            if name not in present:
                out.append(name)
        return out

    def _referring(self, granularity: str) -> list[dict]:
        """Unique descriptions: the shortest attribute phrase that singles an object out, else a
        relation to a uniquely named anchor ("the red circle left of the blue square"). ``category``
        keeps the object's own phrase, so a negative phrase can rule its expressions out."""
        placed = self.placed
        out = []
        for i, p in enumerate(placed):
            desc = self._unique_desc(i)
            if desc is None:
                desc = self._relational(i)
            if desc is not None:
                out.append({"phrase": desc, "bbox": p.box, "category": self._name(p.attributes, granularity),
                            "attributes": dict(p.attributes)})
        return out

    def _unique_desc(self, i: int) -> str | None:
        a = self.placed[i].attributes
        for keys in (("kind",), ("color", "kind"), ("size", "color", "kind")):
            same = [p for p in self.placed if all(p.attributes[k] == a[k] for k in keys)]
            if len(same) == 1:
                return "the " + " ".join(a[k] for k in keys)
        return None

    def _relational(self, i: int) -> str | None:
        target = self.placed[i]
        a = target.attributes
        keys = ("color", "kind")
        group = [p for p in self.placed if all(p.attributes[k] == a[k] for k in keys)]
        name = " ".join(a[k] for k in keys)
        for j, anchor in enumerate(self.placed):
            anchor_desc = self._unique_desc(j)
            if j == i or anchor_desc is None:
                continue
            for relation, (axis, sign) in RELATIONS.items():
                holds = [p for p in group if _related(p.box, anchor.box, axis, sign)]
                if holds == [target]:
                    return f"the {name} {relation} {anchor_desc}"
        return None

    # ---- words
    def words(self, count) -> dict:
        rng = self.rng
        objects = []
        colors = self._contrasting(list(COLORS))
        for _ in range(rng.randint(*count)):
            text = rng.choice(WORDS)
            font = _font(rng.randint(max(8, self.height // 20), max(10, self.height // 9)))
            left, top, right, bottom = font.getbbox(text)
            bw, bh = right - left + 2, bottom - top + 2
            xy = self._place(bw, bh)
            if xy is None:
                continue
            mask = Image.new("L", (bw, bh), 0)
            ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=font)
            canvas = Image.new("RGB", (bw, bh), COLORS[rng.choice(colors)])
            n_before = len(self.placed)
            self._paste(canvas, mask, xy, {"text": text})
            if len(self.placed) > n_before:
                x0, y0, x1, y1 = self.placed[-1].box
                objects.append({"phrase": "word", "text": text, "bbox": [x0, y0, x1, y1],
                                "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]})
        return {"objects": objects, "categories": ["word"]}

    # ---- stick figures
    def figures(self, count) -> dict:
        rng = self.rng
        objects = []
        for _ in range(rng.randint(*count)):
            h = int(rng.uniform(0.35, 0.6) * self.height)
            joints = _stick_figure(rng, h)
            xs = [p[0] for p in joints.values()]
            ys = [p[1] for p in joints.values()]
            pad = max(2, h // 14)
            bw, bh = int(max(xs) - min(xs)) + 2 * pad + 1, int(max(ys) - min(ys)) + 2 * pad + 1
            xy = self._place(bw, bh)
            if xy is None:
                continue
            shift = (pad - min(xs), pad - min(ys))
            local = {k: (x + shift[0], y + shift[1]) for k, (x, y) in joints.items()}
            mask = Image.new("L", (bw, bh), 0)
            _draw_figure(ImageDraw.Draw(mask), local, h)
            color = COLORS[rng.choice(self._contrasting(["black", "white", "blue", "red", "brown"]))]
            n_before = len(self.placed)
            self._paste(Image.new("RGB", (bw, bh), color), mask, xy, {"kind": "figure"})
            if len(self.placed) > n_before:
                keypoints = {k: [xy[0] + x, xy[1] + y] for k, (x, y) in local.items()}
                objects.append({"phrase": "person", "bbox": self.placed[-1].box, "keypoints": keypoints})
        return {"objects": objects, "categories": ["person"]}

    # ---- a GUI window
    def gui(self, count) -> dict:
        rng, w, h = self.rng, self.width, self.height
        shade = rng.randint(200, 245)
        self.image = Image.new("RGB", (w, h), (shade, shade, shade))
        draw = ImageDraw.Draw(self.image)
        title_bar = (rng.randint(20, 80), rng.randint(60, 120), rng.randint(120, 200))
        draw.rectangle([0, 0, w, max(8, h // 12)], fill=title_bar)
        self.mean_color = np.array([shade] * 3, dtype=np.float64)
        objects = []
        labels = rng.sample(GUI_LABELS, k=min(len(GUI_LABELS), rng.randint(*count)))
        font = _font(max(8, h // 18))
        for label in labels:
            kind = rng.choice(("button", "button", "field"))
            left, top, right, bottom = font.getbbox(label)
            bw, bh = right - left + 12, bottom - top + 10
            xy = self._place(bw, bh)
            if xy is None or xy[1] < h // 12 + 2:
                continue
            mask = Image.new("L", (bw, bh), 255)
            fill = (255, 255, 255)
            if kind == "button":
                fill = (rng.randint(40, 200), rng.randint(40, 200), rng.randint(40, 200))
            canvas = Image.new("RGB", (bw, bh), fill)
            d = ImageDraw.Draw(canvas)
            d.rectangle([0, 0, bw - 1, bh - 1], outline=(60, 60, 60))
            text_color = (255, 255, 255) if kind == "button" and sum(fill) < 360 else (20, 20, 20)
            d.text((6 - left, 5 - top), label, fill=text_color, font=font)
            n_before = len(self.placed)
            self._paste(canvas, mask, xy, {"kind": kind, "label": label})
            if len(self.placed) > n_before:
                objects.append({"phrase": f"{label} {kind}", "text": label, "bbox": self.placed[-1].box})
        return {"objects": objects, "categories": sorted(o["phrase"] for o in objects)}


GRANULARITIES = {"kind": ("kind",), "color kind": ("color", "kind"), "size color kind": ("size", "color", "kind")}


def shape_phrase(attributes: dict, granularity: str) -> str:
    """The phrase of a shape at a granularity: "circle", "red circle" or "small red circle"."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; expected one of {list(GRANULARITIES)}")
    return " ".join(attributes[k] for k in GRANULARITIES[granularity])


def _count_range(name: str, value) -> tuple[int, int]:
    """A count, or a (min, max) range of counts, as a (low, high) pair; anything else is refused."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 0 for v in pair) or pair[0] > pair[1]:
        raise ValueError(f"{name} must be a count (an int >= 0) or a [min, max] range of counts, got {value!r}")
    return pair


def vocabulary(granularity: str) -> list[str]:
    """Every phrase of the training kinds at a granularity ("circle", ..., "large cyan ring")."""
    values = {"kind": TRAIN_KINDS, "color": tuple(COLORS), "size": tuple(SIZES)}
    keys = GRANULARITIES[granularity]
    return [" ".join(combo) for combo in itertools.product(*(values[k] for k in keys))]


def _related(box: list[float], anchor: list[float], axis: int, sign: int) -> bool:
    """``box`` lies wholly on the ``sign`` side of ``anchor`` along ``axis`` (0: x, 1: y)."""
    if sign < 0:
        return box[2 + axis] <= anchor[axis]
    return box[axis] >= anchor[2 + axis]


# --------------------------------------------------------------------------- stick figures

_LIMBS = [("left shoulder", "right shoulder"), ("left hip", "right hip"), ("left shoulder", "left elbow"),
          ("left elbow", "left wrist"), ("right shoulder", "right elbow"), ("right elbow", "right wrist"),
          ("left hip", "left knee"), ("left knee", "left ankle"), ("right hip", "right knee"),
          ("right knee", "right ankle"), ("neck", "pelvis")]


def _stick_figure(rng: random.Random, h: int) -> dict[str, tuple[float, float]]:
    """Joint positions of a figure about ``h`` pixels tall, facing the viewer (its left on our right)."""
    u = h / 8.0
    lean = rng.uniform(-0.25, 0.25)
    pelvis = (0.0, 4.2 * u)
    neck = (pelvis[0] + math.sin(lean) * 2.4 * u, pelvis[1] - math.cos(lean) * 2.4 * u)
    head = (neck[0], neck[1] - 0.9 * u)
    j: dict[str, tuple[float, float]] = {"neck": neck, "pelvis": pelvis}
    j["nose"] = (head[0], head[1] + 0.1 * u)
    j["left eye"], j["right eye"] = (head[0] + 0.25 * u, head[1] - 0.15 * u), (head[0] - 0.25 * u, head[1] - 0.15 * u)
    j["left ear"], j["right ear"] = (head[0] + 0.55 * u, head[1]), (head[0] - 0.55 * u, head[1])
    for side, s in (("left", 1), ("right", -1)):
        shoulder = (neck[0] + s * 0.9 * u, neck[1] + 0.2 * u)
        hip = (pelvis[0] + s * 0.6 * u, pelvis[1])
        a1 = math.radians(rng.uniform(-40, 120))  # arm swing from hanging down
        a2 = a1 + math.radians(rng.uniform(0, 90))
        elbow = (shoulder[0] + s * math.sin(a1) * 1.4 * u, shoulder[1] + math.cos(a1) * 1.4 * u)
        wrist = (elbow[0] + s * math.sin(a2) * 1.3 * u, elbow[1] + math.cos(a2) * 1.3 * u)
        l1 = math.radians(rng.uniform(-10, 35))
        l2 = l1 - math.radians(rng.uniform(0, 40))
        knee = (hip[0] + s * math.sin(l1) * 1.8 * u, hip[1] + math.cos(l1) * 1.8 * u)
        ankle = (knee[0] + s * math.sin(l2) * 1.8 * u, knee[1] + math.cos(l2) * 1.8 * u)
        j.update({f"{side} shoulder": shoulder, f"{side} hip": hip, f"{side} elbow": elbow,
                  f"{side} wrist": wrist, f"{side} knee": knee, f"{side} ankle": ankle})
    return {k: j[k] for k in PERSON_KEYPOINTS} | {"_head": head, "_neck": neck, "_pelvis": pelvis}


def _draw_figure(draw: ImageDraw.ImageDraw, joints: dict, h: int) -> None:
    width = max(1, h // 30)
    pts = dict(joints)
    pts["neck"], pts["pelvis"] = pts.pop("_neck"), pts.pop("_pelvis")
    head = pts.pop("_head")
    for a, b in _LIMBS:
        draw.line([pts[a], pts[b]], fill=255, width=width)
    r = h / 8.0 * 0.7
    draw.ellipse([head[0] - r, head[1] - r, head[0] + r, head[1] + r], fill=255)
    joints.pop("_head"), joints.pop("_neck"), joints.pop("_pelvis")


# --------------------------------------------------------------------------- writing a data set


def write_synth_dataset(out_dir: str, n: int, seed: int = 0, size: int = 224, modes: Sequence[str] = ("shapes",),
                        image_format: str = "png", progress: bool = True, **options) -> str:
    """Write ``n`` scenes (modes taken in turn) as ``out_dir/images/*`` and ``out_dir/samples.jsonl``.

    Scene ``i`` uses seed ``seed * 1_000_003 + i``, so any scene can be regenerated alone.
    Returns the JSONL path.
    """
    import json

    from tqdm import tqdm

    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    path = os.path.join(out_dir, "samples.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i in tqdm(range(n), desc="synth", unit="scene", disable=not progress):
            mode = modes[i % len(modes)]
            image, sample = generate_scene(seed * 1_000_003 + i, size, mode, **options)
            rel = f"images/{i:07d}.{image_format}"
            image.save(os.path.join(out_dir, rel))
            sample["image"] = rel
            sample["seed"] = seed * 1_000_003 + i
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")
    return path
