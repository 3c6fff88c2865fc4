"""Coordinate codecs: pixels in the ORIGINAL image <-> integer bins written as `<0>`..`<999>`.

Two codecs exist and a checkpoint names its own (`coord_codec` in its rexomni settings); nothing
guesses it.

- ``center`` (models trained here): ``bin = min(floor(x / W * n), n - 1)`` after clamping x to
  [0, W]; decoded at the bin centre ``(bin + 0.5) * W / n``. Round trip error <= W / (2n).
- ``rexomni`` (the released IDEA-Research/Rex-Omni weights): ``bin = int(clamp(x / W, 0, 1) * (n - 1))``;
  decoded ``bin / (n - 1) * W``. Round trip error < W / (n - 1).

Arrays of any shape whose last axis interleaves x and y (boxes ``(N, 4)``, points ``(N, 2)``,
polygons ``(K, 2)`` or ``(N, 2K)``) are coded at once, as numpy arrays or torch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CODECS = ("center", "rexomni")


def _is_torch(a: Any) -> bool:
    return type(a).__module__.startswith("torch")


def _xy_scale(like: Any, width: float, height: float) -> Any:
    """[W, H, W, H, ...] matching the last axis of ``like`` (numpy or torch)."""
    n = like.shape[-1]
    if n % 2:
        raise ValueError(f"coordinates must interleave x and y, got a last axis of size {n}")
    if _is_torch(like):
        import torch

        return torch.tensor([width, height], dtype=torch.float64, device=like.device).repeat(n // 2)
    return np.tile(np.array([width, height], dtype=np.float64), n // 2)


@dataclass(frozen=True)
class CoordCodec:
    """Quantises pixel coordinates into ``num_bins`` bins per axis and back."""

    name: str = "center"
    num_bins: int = 1000

    def __post_init__(self):
        if self.name not in CODECS:
            raise ValueError(f"unknown coordinate codec {self.name!r}; expected one of {CODECS}")
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {self.num_bins}")

    def encode(self, coords: Any, width: float, height: float) -> Any:
        """Pixels -> integer bins (int64), same shape and array type as ``coords``."""
        _check_size(width, height)
        is_torch = _is_torch(coords)
        coords = coords.double() if is_torch else np.asarray(coords, dtype=np.float64)
        rel = coords / _xy_scale(coords, width, height)
        n = self.num_bins
        steps = n if self.name == "center" else n - 1
        if is_torch:
            return (rel.nan_to_num(0.0).clip(0.0, 1.0) * steps).floor().clip(0, n - 1).long()
        return np.floor(np.nan_to_num(rel).clip(0.0, 1.0) * steps).clip(0, n - 1).astype(np.int64)

    def decode(self, bins: Any, width: float, height: float) -> Any:
        """Integer bins -> pixels (float64), clamped to the image."""
        _check_size(width, height)
        is_torch = _is_torch(bins)
        b = bins.double() if is_torch else np.asarray(bins, dtype=np.float64)
        b = b.clip(0, self.num_bins - 1)
        scale = _xy_scale(b, width, height)
        if self.name == "center":
            return (b + 0.5) * scale / self.num_bins
        return b / (self.num_bins - 1) * scale

    def decode_list(self, bins: list[int], width: float, height: float) -> list[float]:
        """:meth:`decode` for one short flat list, in plain Python: the parser's hot path."""
        top, center = self.num_bins - 1, self.name == "center"
        sizes = (width, height)
        out = []
        for i, b in enumerate(bins):
            b = min(max(int(b), 0), top)
            out.append((b + 0.5) * sizes[i % 2] / self.num_bins if center else b / top * sizes[i % 2])
        return out

    @property
    def max_error(self) -> float:
        """Worst round-trip error as a fraction of the image side."""
        return 0.5 / self.num_bins if self.name == "center" else 1.0 / (self.num_bins - 1)


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got width={width} height={height}")


def get_codec(codec: str | CoordCodec = "center", num_bins: int = 1000) -> CoordCodec:
    """A codec from its name, or the codec itself."""
    return codec if isinstance(codec, CoordCodec) else CoordCodec(codec, num_bins)
