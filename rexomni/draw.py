"""Drawing results on images: boxes, points, polygons, keypoint skeletons, labels with scores."""

from __future__ import annotations

import colorsys
import zlib
from typing import Any

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
    """A copy of ``image`` (anything :func:`rexomni.images.load_image` reads) with ``result`` drawn.

    ``result`` is a :class:`rexomni.api.Result` (or its ``to_dict()``).
    """
    canvas = load_image(image).copy()
    r = result.to_dict() if hasattr(result, "to_dict") else result
    width, height = canvas.size
    if line_width is None:
        line_width = max(1, round(max(width, height) / 300))
    if point_radius is None:
        point_radius = max(2, line_width * 2)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    labels, scores = r.get("labels", []), r.get("scores", [])
    boxes = r.get("boxes") or []
    points = r.get("points") or []
    polygons = r.get("polygons") or []
    keypoints = r.get("keypoints") or []
    for i, label in enumerate(labels):
        color = label_color(label)
        score = scores[i] if i < len(scores) else float("nan")
        caption = f"{label} {score:.2f}" if show_scores and score == score else label
        anchor = None
        if i < len(polygons):
            flat = [tuple(p) for p in polygons[i]]
            if len(flat) >= 2:
                draw.line(flat + [flat[0]], fill=color, width=line_width)
            anchor = flat[0] if flat else None
        elif i < len(boxes) and not points:
            x0, y0, x1, y1 = boxes[i]
            draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=color, width=line_width)
            anchor = (x0, y0)
        if i < len(points):
            x, y = points[i]
            draw.ellipse([x - point_radius, y - point_radius, x + point_radius, y + point_radius], fill=color)
            anchor = (x + point_radius, y)
        if i < len(keypoints):
            _draw_skeleton(draw, keypoints[i], color, line_width, point_radius, skeleton)
        if anchor is not None:
            _caption(draw, font, anchor, caption, color)
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


def _caption(draw, font, anchor, text: str, color) -> None:
    x, y = anchor
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    h = bottom - top
    y = y - h - 2 if y - h - 2 >= 0 else y
    draw.rectangle([x, y, x + right - left + 4, y + h + 2], fill=color)
    # Dark text on light colours, light text on dark ones.
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((x + 2, y - top + 1), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)
