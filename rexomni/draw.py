"""Drawing results on images: boxes, points, polygons, keypoint skeletons, labels with scores."""

from __future__ import annotations

import colorsys
import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import load_image

# Limb pairs by joint name (the person list of rexomni.prompts; other lists draw their joints only).
PERSON_SKELETON = [
    ("left ankle", "left knee"), ("left knee", "left hip"), ("right ankle", "right knee"), ("right knee", "right hip"),
    ("left hip", "right hip"), ("left shoulder", "left hip"), ("right shoulder", "right hip"),
    ("left shoulder", "right shoulder"), ("left shoulder", "left elbow"), ("right shoulder", "right elbow"),
    ("left elbow", "left wrist"), ("right elbow", "right wrist"), ("left eye", "right eye"), ("nose", "left eye"),
    ("nose", "right eye"), ("left eye", "left ear"), ("right eye", "right ear"), ("left ear", "left shoulder"),
    ("right ear", "right shoulder"),
]


def label_color(label: str) -> tuple[int, int, int]:
    """A stable, saturated colour per label."""
    hue = (zlib.crc32(label.encode("utf-8")) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_result(image: Any, result, *, show_scores: bool = True, line_width: int | None = None,
                point_radius: int | None = None, skeleton=PERSON_SKELETON) -> Image.Image:
    """A copy of ``image`` (anything :func:`rexomni.images.load_image` reads) with ``result`` (a
    :class:`rexomni.result.Result`) drawn: boxes, points, polygons and skeletons, each with its label and score.

    Lines and captions scale with the image; a caption sits outside its box (above, else below),
    so on a small image it never hides the object, and clear of the captions placed before it where
    either side has room. Captions go on after every shape, so no line crosses one.
    """
    canvas = load_image(image).copy()
    width, height = canvas.size
    if line_width is None:
        line_width = max(1, round(max(width, height) / 300))
    if point_radius is None:
        point_radius = max(2, line_width * 2)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(8, min(16, round(min(width, height) / 20))))
    n = len(result.labels)
    boxes = result.boxes if len(result.boxes) == n else None
    captions = []  # (extent the caption must stay clear of, text, colour), drawn last
    for i, label in enumerate(result.labels):
        color = label_color(label)
        score = float(result.scores[i]) if i < len(result.scores) else float("nan")
        caption = f"{label} {score:.2f}" if show_scores and score == score else label
        extent = None  # (x0, y0, x1, y1) the caption must stay clear of
        if result.polygons is not None:
            flat = [tuple(p) for p in np.asarray(result.polygons[i]).tolist()]
            if len(flat) >= 2:
                draw.line(flat + [flat[0]], fill=color, width=line_width)
            extent = boxes[i] if boxes is not None else None
        elif result.points is not None:
            x, y = result.points[i]
            draw.ellipse([x - point_radius, y - point_radius, x + point_radius, y + point_radius], fill=color)
            extent = (x - point_radius, y - point_radius, x + point_radius, y + point_radius)
        elif boxes is not None:
            x0, y0, x1, y1 = boxes[i]
            draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=color, width=line_width)
            extent = (x0, y0, x1, y1)
        if result.keypoints is not None:
            _draw_skeleton(draw, result.keypoints[i], color, line_width, point_radius, skeleton)
        if extent is not None:
            captions.append((extent, caption, color))
    placed: list[tuple[float, float, float, float]] = []
    for extent, caption, color in captions:
        placed.append(_caption(draw, font, extent, caption, color, (width, height), placed))
    return canvas


def _draw_skeleton(draw, joints: dict, color, line_width: int, radius: int, skeleton) -> None:
    for a, b in skeleton:
        pa, pb = joints.get(a), joints.get(b)
        if pa is not None and pb is not None:
            draw.line([tuple(pa), tuple(pb)], fill=color, width=line_width)
    for p in joints.values():
        if p is not None:
            x, y = p
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255), outline=color)


def _caption(draw, font, extent, text: str, color, image_size, placed) -> tuple[float, float, float, float]:
    """``text`` on a filled tag just above ``extent``, or just below it when there is no room above or
    the tag would cover one of the ``placed`` tags while below would not. Returns the tag's rectangle."""
    x0, y0, x1, y1 = (float(v) for v in extent)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 2
    image_w, image_h = image_size
    x = min(max(0.0, x0), max(0.0, image_w - w))
    above, below = y0 - h - 1, min(y1 + 1, image_h - h)
    candidates = [above, below] if above >= 0 else [below]
    y = next((c for c in candidates if not any(_overlap((x, c, x + w, c + h), r) for r in placed)), candidates[0])
    draw.rectangle([x, y, x + w, y + h], fill=color)
    # Dark text on light colours, light text on dark ones.
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((x + 2, y - top + 1), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)
    return x, y, x + w, y + h


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
