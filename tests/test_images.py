"""Image decoding: every Pillow mode and common format becomes RGB of the right size and colour
(first frame of animations and multi-page files, EXIF orientation applied), and every bad input
(empty, garbage, truncated, oversized -- refused from the header alone -- or too small) raises
InvalidImageError with a message a person can act on, naming a file but never its folder."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganorigin import InvalidImageError, load_image
from ganorigin.images import MIN_IMAGE_SIDE

W, H = 48, 40


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (W, H), 1)
    image.putpalette([0, 0, 0, 200, 30, 60] + [0] * 762)
    image.info["transparency"] = 0
    return image


MODES = {
    # mode: (image, format to store it in, expected RGB of every pixel)
    "1": (Image.new("1", (W, H), 1), "PNG", (255, 255, 255)),
    "L": (Image.new("L", (W, H), 100), "PNG", (100, 100, 100)),
    "LA": (Image.new("LA", (W, H), (100, 7)), "PNG", (100, 100, 100)),
    "P": (_palette_with_transparency(), "PNG", (200, 30, 60)),
    "RGBA": (Image.new("RGBA", (W, H), (10, 20, 30, 0)), "PNG", (10, 20, 30)),
    "CMYK": (Image.new("CMYK", (W, H), (0, 0, 0, 0)), "TIFF", (255, 255, 255)),
    "I;16": (Image.fromarray(np.full((H, W), 65535, np.uint16)), "PNG", (255, 255, 255)),
    "I": (Image.new("I", (W, H), 32896), "TIFF", (128, 128, 128)),
    "F": (Image.new("F", (W, H), 0.5), "TIFF", (128, 128, 128)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_becomes_rgb(mode):
    image, fmt, expected = MODES[mode]
    assert image.mode == mode
    data = _encode(image, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith(mode[0])  # the file really holds that kind
    for source in (data, image):
        decoded = load_image(source)
        assert decoded.mode == "RGB" and decoded.size == (W, H)
        colours = {tuple(int(c) for c in px) for px in np.asarray(decoded).reshape(-1, 3)}
        assert colours == {expected}, mode


@pytest.mark.parametrize("fmt, params", [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True}),
                                         ("GIF", {}), ("BMP", {}), ("TIFF", {})])
def test_formats(fmt, params):
    image = Image.new("RGB", (W, H), (250, 0, 0))
    decoded = load_image(_encode(image, fmt, **params))
    assert decoded.mode == "RGB" and decoded.size == (W, H)
    r, g, b = np.asarray(decoded).reshape(-1, 3).mean(axis=0)
    assert r > 240 and g < 10 and b < 10


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "WEBP"])
def test_animations_and_multi_page_files_give_the_first_frame(fmt):
    red, blue = Image.new("RGB", (W, H), (255, 0, 0)), Image.new("RGB", (W, H), (0, 0, 255))
    data = _encode(red, fmt, save_all=True, append_images=[blue], **({"lossless": True} if fmt == "WEBP" else {}))
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    pixel = load_image(data).getpixel((W // 2, H // 2))
    assert pixel[0] > 240 and pixel[2] < 15


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 8, 8))  # top-left marker
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    decoded = load_image(data)
    assert decoded.size == (32, 64)
    assert decoded.getpixel((28, 3))[0] > 200  # the marker moved to the top-right corner
    assert decoded.getpixel((3, 3))[0] < 50


def test_path_bytes_pil_and_array_give_the_same_pixels(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(array).save(path)
    for source in (path, str(path), path.read_bytes(), Image.open(path), array, io.BytesIO(path.read_bytes())):
        np.testing.assert_array_equal(np.asarray(load_image(source)), array)


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring ``width`` x ``height``, then a few bytes of IDAT."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_too_many_megapixels_is_refused_from_the_header():
    data = _png_header_only(100_000, 100_000)
    assert len(data) < 200
    with pytest.raises(InvalidImageError, match=r"megapixel") as info:
        load_image(data)
    assert "Downscale" in str(info.value) and "(10,000 megapixels)" in str(info.value), "the size it declares"
    assert "DOS" not in str(info.value) and "178956970" not in str(info.value), "Pillow's own words reached the user"


def _valid(fmt: str) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    return _encode(Image.fromarray(pixels), fmt)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is not an image at all" * 10, "not an image we can read"),
        (bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8)), "not an image we can read"),
        (_valid("PNG")[: len(_valid("PNG")) // 2], "truncated or corrupt"),
        (_valid("JPEG")[: len(_valid("JPEG")) // 2], "truncated or corrupt"),
        (_encode(Image.new("RGB", (MIN_IMAGE_SIDE - 1, 100)), "PNG"), f"at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"),
    ],
    ids=["zero-bytes", "text", "random-bytes", "truncated-png", "truncated-jpeg", "too-small"],
)
def test_bad_inputs_raise_invalid_image_error(data, message):
    with pytest.raises(InvalidImageError, match=message) as info:
        load_image(data)
    assert "image file is" not in str(info.value), "Pillow's own words reached the user"


def test_file_errors_name_the_file_not_its_folder(tmp_path):
    """On a server, a message with the folder would reveal its paths."""
    unreadable = Path("/proc/self/mem")  # a regular file whose read at offset 0 fails (EIO)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opened, it would block until a writer came
    cases = {tmp_path / "missing.png": "No image file named 'missing.png'",
             tmp_path: f"'{tmp_path.name}' is not a regular file", fifo: "'pipe.png' is not a regular file",
             unreadable: "The image file 'mem' could not be read"}
    for path, message in cases.items():
        if not path.parent.is_dir():
            continue  # /proc is Linux only
        with pytest.raises(InvalidImageError, match=message) as error:
            load_image(path)
        assert str(path.parent) not in str(error.value)


def test_other_bad_inputs():
    with pytest.raises(InvalidImageError, match="Cannot read an image from an object of type int"):
        load_image(42)
    for address in ("https://example.org/face.jpg", "HTTP://example.org/face.jpg"):  # never opened as a file
        with pytest.raises(InvalidImageError, match="A web address is not a file: fetch the image first"):
            load_image(address)
    with pytest.raises(InvalidImageError, match="at least"):
        load_image(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InvalidImageError, match="at least"):
        load_image(Image.new("RGB", (8, 300)))
    with pytest.raises(InvalidImageError, match="NaN"):
        load_image(np.full((32, 32), np.nan, np.float32))
    with pytest.raises(InvalidImageError, match="shape"):
        load_image(np.zeros((32, 32, 2), np.uint8))


def test_a_lazy_pil_image_is_read_in_the_gate_into_a_new_image(tmp_path):
    """What ``Image.open`` returns has not read its pixels: the gate reads them and hands back a new
    image, so nothing later depends on the caller's file (closed here) or races to read it."""
    path = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(path)
    lazy = Image.open(path)
    loaded = load_image(lazy)
    lazy.close()
    assert loaded is not lazy
    assert np.array_equal(np.asarray(loaded), np.asarray(load_image(path.read_bytes())))
