"""Binary masks in the sample schema: COCO's compressed run-length encoding, polygons, and the
geometry the task builders need (the tight box, the point deepest inside).

A mask is stored as ``{"size": [h, w], "counts": "..."}``, the string form pycocotools writes, so
files written here are read by pycocotools and the other way round. The encoder is a few lines of
numpy and has no compiled dependency, which keeps the synthetic engine fast and light.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw


def rle_encode(mask: np.ndarray) -> dict:
    """A 2-D boolean array -> ``{"size": [h, w], "counts": str}`` (COCO compressed RLE)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {mask.shape}")
    h, w = mask.shape
    flat = mask.reshape(-1, order="F").astype(bool)  # COCO runs go down the columns
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)  # runs always start with the background
    return {"size": [int(h), int(w)], "counts": _counts_to_string(counts)}


def _counts_to_string(counts: list[int]) -> str:
    # Each run is stored as the difference to the run two before it (from the third run on), in
    # 5-bit groups with a continuation bit, offset into printable ASCII.
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def _string_to_counts(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list of counts) -> boolean array (h, w)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not an RLE mask (need 'size' [h, w] and 'counts'): {str(rle)[:80]}") from e
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = _string_to_counts(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w or (counts < 0).any():
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected h*w = {h * w}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((h, w), order="F")


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Polygons (each flat ``[x0, y0, x1, y1, ...]`` or ``[[x, y], ...]``) -> boolean mask."""
    canvas = Image.new("1", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        flat = np.asarray(poly, dtype=np.float64).reshape(-1)
        if flat.size >= 6:
            draw.polygon([tuple(p) for p in flat.reshape(-1, 2)], fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def mask_bbox(mask: np.ndarray) -> list[float] | None:
    """The tight pixel box ``[x0, y0, x1, y1]`` of a mask (x1, y1 exclusive), or None when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if not len(xs):
        return None
    return [float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)]


def object_mask(obj: dict, height: int, width: int) -> np.ndarray | None:
    """The mask of a sample-schema object, from ``mask`` or else ``polygon``; None without either."""
    if obj.get("mask") is not None:
        return rle_decode(obj["mask"])
    if obj.get("polygon") is not None:
        return polygons_to_mask([obj["polygon"]], height, width)
    return None


def deepest_point(mask: np.ndarray) -> list[float] | None:
    """The pixel centre farthest from the mask's boundary (always inside the mask), or None if empty.

    Ties go to the first pixel in row order, so the point is deterministic.
    """
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        return None
    # Pad so that the image border counts as outside: a mask touching the border is still centred.
    distance = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return [float(x) + 0.5, float(y) + 0.5]
