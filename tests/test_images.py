"""Images in: every input kind, EXIF, modes, bad inputs named in errors, URLs from a local server."""

from __future__ import annotations

import http.server
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from rexomni.images import ImageLoadError, load_image


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _gradient(w=40, h=30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    return Image.fromarray(np.stack([x, x[::-1], np.full_like(x, 9)], axis=2))


def test_path_pil_numpy_and_bytes_give_the_same_rgb(tmp_path):
    image = _gradient()
    path = tmp_path / "a.png"
    image.save(path)
    expected = np.asarray(image)
    for source in (str(path), path, image, np.asarray(image), _png_bytes(image)):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and loaded.size == (40, 30)
        np.testing.assert_array_equal(np.asarray(loaded), expected)


def test_exif_orientation_is_applied(tmp_path):
    image = _gradient(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert load_image(str(path)).size == (30, 40)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "1", "I;16", "I", "F"])
def test_modes_become_rgb(mode):
    base = _gradient()
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        assert image.mode.startswith("I;16")
    else:
        image = base.convert(mode)
    loaded = load_image(image)
    assert loaded.mode == "RGB" and loaded.size == (40, 30)
    if mode in ("I;16", "L", "I", "F"):  # grey stays grey, scaled to 8 bits
        gray = np.asarray(loaded)[:, :, 0].astype(int)
        assert abs(gray.max() - np.asarray(base.convert("L")).max()) <= 2


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [255, 255, 255]


def test_numpy_variants():
    gray = np.full((5, 6), 128, np.uint8)
    assert load_image(gray).size == (6, 5)
    floats = np.full((5, 6, 3), 0.5, np.float32)
    assert np.asarray(load_image(floats))[0, 0].tolist() == [128, 128, 128]
    deep = np.full((5, 6, 3), 65535, np.uint16)
    assert np.asarray(load_image(deep))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ImageLoadError, match=r"<array \(5, 6, 2\)"):
        load_image(np.zeros((5, 6, 2), np.uint8))
    with pytest.raises(ImageLoadError, match="zero size"):
        load_image(np.zeros((0, 6, 3), np.uint8))


def test_bad_files_name_the_input(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageLoadError, match="missing.jpg.*no such file"):
        load_image(str(missing))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not an image")
    with pytest.raises(ImageLoadError, match="corrupt.png.*cannot decode"):
        load_image(str(corrupt))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_png_bytes(_gradient(200, 200))[:300])
    with pytest.raises(ImageLoadError, match="truncated.png"):
        load_image(str(truncated))
    with pytest.raises(ImageLoadError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ImageLoadError, match="expected a path"):
        load_image(12345)


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels but carries almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\x00" * 10))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(100_000, 100_000))
    with pytest.raises(ImageLoadError, match="bomb.png.*(too many pixels|exceeds the bound)"):
        load_image(str(path))
    with pytest.raises(ImageLoadError, match="exceeds the bound of 100 pixels"):
        load_image(_gradient(), max_pixels=100)


class _Handler(http.server.BaseHTTPRequestHandler):
    payloads: dict = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/slow.png":
            time.sleep(1.5)
        body = self.payloads.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_server():
    png = _png_bytes(_gradient())
    _Handler.payloads = {"/ok.png": png, "/slow.png": png, "/big.png": png + b"\x00" * 5000}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_urls_are_fetched_with_timeout_and_size_bound(image_server):
    assert load_image(f"{image_server}/ok.png").size == (40, 30)
    with pytest.raises(ImageLoadError, match="missing.png.*404"):
        load_image(f"{image_server}/missing.png")
    with pytest.raises(ImageLoadError, match="slow.png.*cannot fetch"):
        load_image(f"{image_server}/slow.png", timeout=0.3)
    with pytest.raises(ImageLoadError, match="big.png.*exceeds the bound of 1000"):
        load_image(f"{image_server}/big.png", max_bytes=1000)


def test_huge_image_is_resized_but_coordinates_refer_to_the_original(tiny_rexomni):
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (800, 1000, 3), dtype=np.uint8))
    [request] = tiny_rexomni.prepare(image, "detection", ["dog"])
    grid = tiny_rexomni.processor(text=[tiny_rexomni.chat_text(request["prompt"])], images=[request["image"]],
                                  return_tensors="pt")["image_grid_thw"][0].tolist()
    assert grid[1] * grid[2] * 14 * 14 <= tiny_rexomni.settings.max_pixels
    result = tiny_rexomni.detect(image, ["dog"], negative_boxes=[[500, 400, 900, 700]], max_new_tokens=16)
    assert (result.width, result.height) == (1000, 800)
    assert len(result.labels) >= 1
    # The random model writes bins near the middle of the range: in pixels of the original image.
    assert result.boxes.max() > 112
