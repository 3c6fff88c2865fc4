"""Images in: a path, PIL image, numpy array, bytes or http(s) URL -> an RGB PIL image.

EXIF orientation is applied (coordinates then refer to the image as it is seen), every mode is
converted to 8-bit RGB, and a bad input gives an :class:`ImageLoadError` that names it: a missing,
corrupt or truncated file, an empty image, an image past ``max_pixels`` (decompression bombs), a
URL that fails, times out or sends more than ``max_bytes``.
"""

from __future__ import annotations

import io
import math
import os
import urllib.error
import urllib.request
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# A bound on decoded pixels (about 11.6k x 11.6k), checked from the header before decoding. It sits
# under PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS), which still applies above it.
DEFAULT_MAX_PIXELS = 128 * 1024 * 1024
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0
# Qwen2.5-VL's resize refuses an image whose long side is more than 200 times its short side.
MAX_ASPECT_RATIO = 200


class ImageLoadError(ValueError):
    """An image could not be read; the message names the input."""


def fit_aspect_ratio(image: Image.Image, max_ratio: int = MAX_ASPECT_RATIO) -> Image.Image:
    """Stretch the short side of a very thin image until long / short <= ``max_ratio``.

    Coordinates are written relative to the image's width and height, so an answer about the
    stretched image reads unchanged on the original (the processor upsamples such a side to 28
    pixels anyway). Other images are returned as they are.
    """
    width, height = image.size
    if max(width, height) <= max_ratio * min(width, height):
        return image
    short = math.ceil(max(width, height) / max_ratio)
    size = (width, short) if width > height else (short, height)
    return image.resize(size, Image.Resampling.BICUBIC)


def describe(source: Any) -> str:
    """A short name of an input for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return repr(str(source))
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    if isinstance(source, Image.Image):
        return f"<PIL {source.mode} {source.size[0]}x{source.size[1]}>"
    return f"<{type(source).__name__}>"


def load_image(source: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, timeout: float = DEFAULT_TIMEOUT,
               max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """Any supported input -> an RGB PIL image with EXIF orientation applied."""
    name = describe(source)
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source, name)
    elif isinstance(source, (bytes, bytearray)):
        image = _open(io.BytesIO(bytes(source)), name, max_pixels)
    elif isinstance(source, (str, os.PathLike)):
        text = str(source)
        if text.startswith(("http://", "https://")):
            image = _open(io.BytesIO(fetch(text, timeout=timeout, max_bytes=max_bytes)), name, max_pixels)
        elif not os.path.isfile(text):
            raise ImageLoadError(f"image {name}: no such file")
        else:
            image = _open(text, name, max_pixels)
    else:
        raise ImageLoadError(f"image {name}: expected a path, URL, PIL image, numpy array or bytes")
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageLoadError(f"image {name}: zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageLoadError(f"image {name}: {width}x{height} exceeds the bound of {max_pixels} pixels")
    try:
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as e:  # truncated data surfaces when pixels are read
        raise ImageLoadError(f"image {name}: cannot decode ({e})") from None


def _open(fp, name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL warns from half its hard limit; our own bound decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageLoadError(f"image {name}: {width}x{height} exceeds the bound of {max_pixels} pixels")
            image.load()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"image {name}: too many pixels ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"image {name}: cannot decode ({e})") from None
    return image


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    """HxW or HxWxC (C in 1, 3, 4) arrays; floats are taken as [0, 1], 16-bit integers scaled down."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(f"image {name}: expected HxW or HxWx(1|3|4), got shape {array.shape}")
    if array.size == 0:
        raise ImageLoadError(f"image {name}: zero size {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        array = (np.nan_to_num(array).clip(0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = array.clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white; 16/32-bit grey is rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = (array / top).clip(0, 1) * 255.0
        return Image.fromarray(array.round().astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fetch(url: str, *, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """GET ``url`` with a timeout, refusing bodies larger than ``max_bytes``."""
    request = urllib.request.Request(url, headers={"User-Agent": "rexomni"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ImageLoadError(f"image {url!r}: {declared} bytes exceeds the bound of {max_bytes}")
            data = response.read(max_bytes + 1)
    except ImageLoadError:
        raise
    except urllib.error.HTTPError as e:
        raise ImageLoadError(f"image {url!r}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:  # includes timeouts
        raise ImageLoadError(f"image {url!r}: cannot fetch ({getattr(e, 'reason', e)})") from None
    if len(data) > max_bytes:
        raise ImageLoadError(f"image {url!r}: more than {max_bytes} bytes")
    return data
