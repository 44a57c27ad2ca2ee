"""The degradation gate's measurements (issue 17): the JPEG quality read from the quantisation tables
is the quality Pillow saved at (every quality, both chroma subsamplings, from a path, bytes or a PIL
image) and agrees with the dev set's recorded estimates; the table parser never fails on broken
bytes; up-scaling is found on real dev images enlarged x2 and x3 (x3 exactly) and not on the
originals; and the shorter side is reported."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from conftest import DEV_DATA
from ganorigin.degradation import assess, jpeg_quality, quantization_tables, upscale_factor


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photo from the dev set when present, else a smooth synthetic image with fine noise."""
    real = sorted((DEV_DATA / "real").glob("*.png")) if DEV_DATA.is_dir() else []
    if real:
        return Image.open(real[0]).convert("RGB")
    yy, xx = np.mgrid[0:384, 0:512] / 384
    base = np.stack([np.sin(6 * xx), np.cos(4 * yy), xx * yy], axis=-1) * 100 + 120
    noise = np.random.default_rng(0).normal(0, 12, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **options)
    return out.getvalue()


@pytest.mark.parametrize("subsampling", [0, 2])
@pytest.mark.parametrize("quality", [1, 5, 10, 20, 25, 30, 40, 49, 50, 51, 60, 70, 75, 80, 85, 90, 95, 98, 100])
def test_jpeg_quality_is_the_quality_pillow_saved_at(photo, quality, subsampling, tmp_path):
    data = _jpeg(photo, quality=quality, subsampling=subsampling)
    path = tmp_path / "saved.jpg"
    path.write_bytes(data)
    decoded = Image.open(io.BytesIO(data))
    for source in (data, path, str(path), decoded):  # bytes, paths and a PIL image (its `quantization`)
        measured = assess(source, photo).jpeg_quality
        assert abs(measured - quality) <= 5 and measured == quality, (type(source).__name__, measured)


def test_grayscale_jpeg_has_one_table_and_a_quality(photo):
    data = _jpeg(photo.convert("L"), quality=42)
    tables = quantization_tables(data)
    assert list(tables) == [0]
    assert jpeg_quality(tables) == 42


def test_other_formats_and_decoded_arrays_have_no_jpeg_quality(photo):
    png = io.BytesIO()
    photo.save(png, "PNG")
    assert assess(png.getvalue(), photo).jpeg_quality is None
    assert assess(np.asarray(photo), photo).jpeg_quality is None
    assert assess(photo, photo).jpeg_quality is None  # a PIL image that never was a JPEG


def test_dev_jpegs_agree_with_their_recorded_quality(dev_manifest):
    """The dev manifest's ``jpeg_quality_est`` was measured independently of this code."""
    rows = [r for r in dev_manifest if r["format"] == "JPEG" and r["jpeg_quality_est"]]
    assert len(rows) >= 50
    close = [abs(jpeg_quality(quantization_tables((DEV_DATA / r["path"]).read_bytes())) - int(r["jpeg_quality_est"])) <= 5
             for r in rows]
    assert sum(close) / len(close) >= 0.95, f"{sum(close)} of {len(close)} within 5"


def test_broken_jpeg_headers_never_raise(photo):
    data = _jpeg(photo, quality=77)
    header = data[: data.index(b"\xff\xda")]  # everything before the first scan
    assert jpeg_quality(quantization_tables(header)) == 77
    rng = random.Random(0)
    for _ in range(3000):
        mutated = bytearray(header)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        cut = bytes(mutated[: rng.randint(0, len(mutated))])
        quality = jpeg_quality(quantization_tables(cut))
        assert quality is None or 1 <= quality <= 100
    for junk in (b"", b"\xff\xd8", b"\xff\xd8\xff\xdb\x00\x43\x05" + bytes(64), b"not a jpeg at all", bytes(10_000)):
        assert jpeg_quality(quantization_tables(junk)) is None


def test_up_scaling_is_found_on_dev_images_and_not_on_the_originals(dev_sample):
    """Real dev images (GAN and camera, PNG and JPEG, 256 to 2500 px) and their bicubic x2 and x3 enlargements."""
    originals, doubled, tripled = [], [], []
    for path in dev_sample:
        image = Image.open(path).convert("RGB")
        originals.append(upscale_factor(image))
        doubled.append(upscale_factor(image.resize((image.width * 2, image.height * 2), Image.BICUBIC)))
        tripled.append(upscale_factor(image.resize((image.width * 3, image.height * 3), Image.BICUBIC)))
    assert originals == [None] * len(dev_sample)
    assert tripled == [3.0] * len(dev_sample)  # the resampling period, exactly
    found = [factor for factor in doubled if factor is not None]
    assert len(found) >= 0.8 * len(dev_sample), doubled
    assert all(1.8 <= factor <= 2.6 for factor in found), doubled  # from the spectrum: an estimate


def test_short_side_and_up_scaling_reach_the_assessment(dev_sample):
    image = Image.open(dev_sample[0]).convert("RGB").resize((300, 200), Image.BICUBIC)
    assert assess(image, image).short_side == 200
    enlarged = image.resize((900, 600), Image.BICUBIC)
    assert assess(enlarged, enlarged).upscale == 3.0
