"""Fuzzing the decoding gate and ``predict`` with at least 10,000 generated and mutated inputs.

Seeds are small real files (PNG, JPEG with EXIF orientation, WebP lossy and lossless, animated
GIF, multi-page TIFF, BMP), made here from synthetic pictures and, when ../shared is present, a
dev image. Mutations: byte flips, truncations, header corruption, chunk duplication, splices,
random bytes behind real magic numbers, and huge declared dimensions (headers patched, CRCs fixed).
Proves, for every input: ``load_image`` returns an RGB image or raises ``InvalidImageError``,
nothing else; no input takes more than ``SLOW_INPUT_S`` (counted by a per-input clock, and a
``faulthandler`` watchdog ends the run on a true hang); peak memory grows by less than
``MEMORY_MARGIN_MB``. Every ``PREDICT_EVERY``-th decodable input also goes through
``model.predict``. ``GANORIGIN_FUZZ_N`` sets the number of inputs (default 10,000).

Provenance reading gets its own run (``GANORIGIN_PROVENANCE_FUZZ_N``, default 2,000) from files
that carry every kind of evidence: PNGs with generator text chunks, XMP and EXIF, JPEG and WebP
with XMP and EXIF, and C2PA-signed JPEG and PNG; mutated as above and inside the XMP packet, the
text chunks and the C2PA manifest. For every input ``read_provenance`` returns (or refuses an
empty input with ``InvalidImageError``), no section falls back on its internal-error text, and
no input takes more than ``SLOW_PROVENANCE_S``.
"""

from __future__ import annotations

import faulthandler
import io
import math
import os
import random
import resource
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from ganorigin import InvalidImageError, load_image
from ganorigin.provenance import read_provenance
from ganorigin.provenance.containers import sniff_mime

# Pillow's TIFF/EXIF reader warns about the damage the mutations make (and then copes or raises);
# exactly these are expected here. Any other warning stays visible.
pytestmark = [
    pytest.mark.filterwarnings(f"ignore:{message}:UserWarning:PIL.TiffImagePlugin")
    for message in ("Corrupt EXIF data", "Metadata Warning, tag", "Truncated File Read")
]

FUZZ_N = int(os.environ.get("GANORIGIN_FUZZ_N", 10_000))
PREDICT_EVERY = max(1, min(50, FUZZ_N // 100))  # predict on some decoded inputs, even in a short run
SLOW_INPUT_S = 5.0  # load_image on one input of at most ~100 KB
SLOW_PREDICT_S = 60.0  # one tiny-model forward pass on a shared CI core
HANG_S = 300  # faulthandler ends the process (and prints every stack) if one input runs this long
MEMORY_MARGIN_MB = 500
SEED = 20240601
PROVENANCE_FUZZ_N = int(os.environ.get("GANORIGIN_PROVENANCE_FUZZ_N", 2_000))
SLOW_PROVENANCE_S = 10.0  # read_provenance on one input of at most ~1 MB, a C2PA check included


def _picture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A face-sized synthetic picture: gradients plus noise, uint8 HxWx3."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 200
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _seed_files(dev_image) -> dict[str, bytes]:
    """Small valid files in every format the gate accepts, named by what they exercise."""
    rng = np.random.default_rng(SEED)
    rgb = Image.fromarray(_picture(64, rng))
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray((_picture(64, rng)[..., 0])))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    frames = [Image.fromarray(_picture(48, rng)).convert("P") for _ in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    tiff = io.BytesIO()
    rgb.save(tiff, "TIFF", save_all=True, append_images=[rgb.convert("L"), rgba])
    seeds = {
        "png-rgb": _encode(rgb, "PNG"),
        "png-rgba": _encode(rgba, "PNG"),
        "png-p-transparency": _encode(rgb.convert("P"), "PNG", transparency=3),
        "png-16bit": _encode(Image.fromarray((_picture(40, rng)[..., 0].astype(np.uint16) * 257)), "PNG"),
        "png-1bit": _encode(rgb.convert("1"), "PNG"),
        "jpeg-exif": _encode(rgb, "JPEG", quality=85, exif=exif),
        "jpeg-progressive-cmyk": _encode(rgb.convert("CMYK"), "JPEG", progressive=True),
        "webp-lossy": _encode(rgb, "WEBP", quality=70),
        "webp-lossless-alpha": _encode(rgba, "WEBP", lossless=True),
        "gif-animated": gif.getvalue(),
        "tiff-multipage": tiff.getvalue(),
        "bmp": _encode(rgb, "BMP"),
    }
    if dev_image is not None:
        with Image.open(dev_image) as dev:
            small = dev.convert("RGB").resize((64, 64))
        seeds["dev-png"] = _encode(small, "PNG")
        seeds["dev-jpeg"] = _encode(small, "JPEG", quality=90)
        seeds["dev-webp"] = _encode(small, "WEBP")
    return seeds


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each chunk after the PNG signature."""
    chunks, pos = [], 8
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        end = pos + 12 + length
        if end > len(data):
            break
        chunks.append((pos, end))
        pos = end
    return chunks


def _with_dimensions(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its header claiming ``width`` x ``height`` (CRC fixed for PNG)."""
    b = bytearray(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        b[16:24] = struct.pack(">II", width, height)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    elif data[:2] == b"\xff\xd8":
        for marker in (b"\xff\xc0", b"\xff\xc2"):
            at = data.find(marker)
            if at > 0:
                b[at + 5 : at + 9] = struct.pack(">HH", min(height, 65535), min(width, 65535))
    elif data[:3] == b"GIF":
        b[6:10] = struct.pack("<HH", min(width, 65535), min(height, 65535))
        at = data.find(b"\x2c", 13)
        if at > 0:
            b[at + 5 : at + 9] = struct.pack("<HH", min(width, 65535), min(height, 65535))
    elif data[:2] == b"BM":
        b[18:26] = struct.pack("<ii", min(width, 2**31 - 1), min(height, 2**31 - 1))
    elif data[:4] == b"RIFF" and data[12:16] == b"VP8X":
        b[24:30] = (max(1, min(width, 2**24)) - 1).to_bytes(3, "little") + (max(1, min(height, 2**24)) - 1).to_bytes(3, "little")
    elif data[:4] == b"RIFF" and data[12:16] == b"VP8 ":
        b[26:30] = struct.pack("<HH", min(width, 16383), min(height, 16383))
    return bytes(b)


def _mutate(seed: bytes, other: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutation of ``seed``; returns (kind, bytes)."""
    kind = rng.choice(
        ["flip", "flip", "truncate", "header", "duplicate", "splice", "random", "dimensions", "dimensions", "stack"]
    )
    data = bytearray(seed)
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "header":
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(min(64, len(data)))] = rng.randrange(256)
    elif kind == "duplicate":
        chunks = _png_chunks(seed) if seed[:4] == b"\x89PNG" else []
        if chunks:
            start, end = rng.choice(chunks)
            at = rng.choice(chunks)[rng.randrange(2)]
            data[at:at] = seed[start:end] * rng.randint(1, 3)
        else:
            start = rng.randrange(len(data))
            piece = seed[start : start + rng.randint(1, 512)]
            at = rng.randrange(len(data))
            data[at:at] = piece * rng.randint(1, 4)
    elif kind == "splice":
        cut = rng.randrange(len(seed))
        data = bytearray(seed[:cut] + other[rng.randrange(len(other)) :])
    elif kind == "random":
        magic = seed[: rng.choice([0, 2, 4, 8, 16])]
        data = bytearray(magic + rng.randbytes(rng.randint(0, 4096)))
    elif kind == "dimensions":
        huge = rng.choice([65535, 100_000, 2**31 - 1, 2**32 - 1, rng.randint(1, 20_000), rng.randint(0, 15)])
        data = bytearray(_with_dimensions(seed, huge, rng.choice([huge, rng.randint(0, 70_000)])))
    else:  # "stack": several mutations at once
        for _ in range(rng.randint(2, 4)):
            data = bytearray(_mutate(bytes(data) or seed, other, rng)[1])
    return kind, bytes(data)


def _inputs(seeds: dict[str, bytes], n: int):
    """The seeds themselves, a few fixed edge cases, then mutations until ``n`` inputs."""
    rng = random.Random(SEED)
    fixed = [("seed", data) for data in seeds.values()] + [
        ("empty", b""),
        ("one-byte", b"\x89"),
        ("text", b"hello, this is not an image\n" * 20),
        ("png-signature-only", b"\x89PNG\r\n\x1a\n"),
        ("jpeg-soi-only", b"\xff\xd8\xff"),
        ("eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n" + b"0 0 moveto\n" * 20),
    ]
    yield from fixed[:n]
    pool = list(seeds.values())
    for _ in range(n - len(fixed)):
        yield _mutate(rng.choice(pool), rng.choice(pool), rng)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


@pytest.fixture(scope="module")
def seeds(request):
    dev_image = None
    try:
        dev_sample = request.getfixturevalue("dev_sample")
        dev_image = min(dev_sample, key=lambda p: p.stat().st_size)
    except pytest.skip.Exception:
        pass  # ../shared absent: synthetic seeds only
    return _seed_files(dev_image)


def test_seeds_decode(seeds):
    """The fuzzer starts from files the gate accepts, in every accepted format."""
    for name, data in seeds.items():
        img = load_image(data)
        assert img.mode == "RGB" and min(img.size) >= 16, name


def test_fuzz_load_image_and_predict(seeds, model):
    model.predict(seeds["png-rgb"])  # warm-up: lazy allocations are not growth
    baseline_mb = _peak_rss_mb()
    outcomes = {"fuzzed": 0, "decoded": 0, "refused": 0, "predicted": 0}
    slow, unexpected = [], []
    start = time.perf_counter()
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    try:
        for i, (kind, data) in enumerate(_inputs(seeds, FUZZ_N)):
            faulthandler.dump_traceback_later(HANG_S, exit=True)
            outcomes["fuzzed"] += 1
            t0 = time.perf_counter()
            try:
                img = load_image(data)
            except InvalidImageError as e:
                assert str(e), "an InvalidImageError without a message"
                outcomes["refused"] += 1
                img = None
            except Exception as e:  # the finding this test exists for: collected, then reported
                unexpected.append((i, kind, f"{type(e).__name__}: {e}"))
                img = None
            elapsed = time.perf_counter() - t0
            if elapsed > SLOW_INPUT_S:
                slow.append((i, kind, round(elapsed, 1)))
            if img is None:
                continue
            outcomes["decoded"] += 1
            if img.mode != "RGB" or min(img.size) < 16:
                unexpected.append((i, kind, f"decoded to {img.mode} {img.size}"))
            if outcomes["decoded"] % PREDICT_EVERY == 0:
                t0 = time.perf_counter()
                result = model.predict(data)
                if time.perf_counter() - t0 > SLOW_PREDICT_S:
                    slow.append((i, kind, "predict"))
                assert 0.0 <= result.fake_probability <= 1.0
                assert math.isclose(sum(result.probabilities), 1.0, abs_tol=1e-4)
                outcomes["predicted"] += 1
    finally:
        faulthandler.cancel_dump_traceback_later()
    growth_mb = _peak_rss_mb() - baseline_mb
    print(
        f"\nfuzzed {outcomes['fuzzed']} inputs in {time.perf_counter() - start:.0f} s: {outcomes['decoded']} decoded, "
        f"{outcomes['refused']} refused with InvalidImageError, {outcomes['predicted']} through predict; "
        f"{len(unexpected)} unexpected, {len(slow)} slow; peak RSS growth {growth_mb:.0f} MB"
    )
    assert outcomes["fuzzed"] == FUZZ_N
    assert not unexpected, f"{len(unexpected)} inputs escaped the gate, e.g. {unexpected[:10]}"
    assert not slow, f"{len(slow)} inputs exceeded their time bound: {slow[:10]}"
    assert growth_mb < MEMORY_MARGIN_MB, f"peak RSS grew by {growth_mb:.0f} MB over the run"
    assert outcomes["refused"] and outcomes["decoded"] and outcomes["predicted"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    array=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=40),
    )
)
def test_arrays_of_any_shape_and_dtype(array):
    """Any numpy array is either an RGB image or an InvalidImageError."""
    try:
        img = load_image(array)
    except InvalidImageError as e:
        assert str(e)
    else:
        assert img.mode == "RGB" and min(img.size) >= 16


def _provenance_seeds() -> dict[str, bytes]:
    """Files carrying every kind of provenance evidence, made by the real libraries."""
    from provenance_files import encode, make_chain, manifest, png_with_text, sign, xmp_packet

    rgb = _picture(256, np.random.default_rng(SEED))
    xmp = xmp_packet(source_type="trainedAlgorithmicMedia", creator_tool="Fuzz Studio")
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = "Canon", "EOS R5", "NovelAI"
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + "a cat\nSteps: 20, Sampler: Euler, Seed: 1".encode("utf-16-be")
    comfy = '{"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}}}'
    texts = {"parameters": "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Seed: 1, Model: sd15, Version: v1.9",
             "prompt": comfy, "workflow": '{"nodes": [{"type": "UNETLoader", "widgets_values": ["flux.safetensors"]}]}',
             "Software": "NovelAI", "Comment": '{"steps": 28, "seed": 3}', "XML:com.adobe.xmp": xmp.decode()}
    png = png_with_text(rgb, texts, itxt=("workflow", "XML:com.adobe.xmp"), exif=exif)
    jpeg = encode(rgb, "JPEG", quality=90, xmp=xmp, exif=exif)
    chain = make_chain("Fuzz Lab", "Fuzz signer")
    definition = manifest(source_type="trainedAlgorithmicMedia", agent="Fuzz Diffusion")
    return {
        "png-text-xmp-exif": png,
        "jpeg-xmp-exif": jpeg,
        "webp-xmp-exif": encode(rgb, "WEBP", xmp=xmp, exif=exif),
        "jpeg-c2pa": sign(jpeg, "image/jpeg", chain, definition),
        "png-c2pa": sign(png, "image/png", chain, definition),
    }


REGIONS = (b"<x:xmpmeta", b"parameters", b"workflow", b"jumb", b"c2pa.claim", b"c2pa.signature", b"Exif")


def _mutate_region(seed: bytes, rng: random.Random) -> tuple[str, bytes]:
    """Damage inside a metadata block: flips, noise, a cut, or an XML entity declaration."""
    marker = rng.choice([m for m in REGIONS if m in seed] or [b""])
    at = seed.find(marker) + rng.randrange(0, 400)
    data = bytearray(seed)
    kind = rng.choice(["flip", "noise", "cut", "dtd"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[min(len(data) - 1, at + rng.randrange(200))] ^= 1 << rng.randrange(8)
    elif kind == "noise":
        data[at : at + 64] = rng.randbytes(64)
    elif kind == "cut":
        del data[at : at + rng.randint(1, 2000)]
    else:
        data[at:at] = b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    return f"region-{kind}", bytes(data)


def test_fuzz_read_provenance():
    seeds = _provenance_seeds()
    rng = random.Random(SEED)
    pool = list(seeds.values())
    inputs = [("seed", data) for data in pool] + [("empty", b"")]
    while len(inputs) < PROVENANCE_FUZZ_N:
        seed = rng.choice(pool)
        inputs.append(_mutate_region(seed, rng) if rng.random() < 0.5 else _mutate(seed, rng.choice(pool), rng))
    outcomes, slow, unexpected = {"read": 0, "refused": 0, "found": 0}, [], []
    start = time.perf_counter()
    try:
        for i, (kind, data) in enumerate(inputs):
            faulthandler.dump_traceback_later(HANG_S, exit=True)
            t0 = time.perf_counter()
            try:
                result = read_provenance(data)
            except InvalidImageError:
                outcomes["refused"] += 1
                continue
            except Exception as e:  # the finding this test exists for
                unexpected.append((i, kind, f"{type(e).__name__}: {e}"))
                continue
            finally:
                if time.perf_counter() - t0 > SLOW_PROVENANCE_S:
                    slow.append((i, kind, round(time.perf_counter() - t0, 1)))
            outcomes["read"] += 1
            outcomes["found"] += result.strength != "none"
            internal = [name for name, s in result.sections.items() if s.error and "internal error" in s.error]
            if internal:
                unexpected.append((i, kind, f"internal error in {internal}"))
    finally:
        faulthandler.cancel_dump_traceback_later()
    print(f"\nread_provenance on {len(inputs)} inputs in {time.perf_counter() - start:.0f} s: {outcomes}; "
          f"{len(unexpected)} unexpected, {len(slow)} slow")
    assert not unexpected, f"{len(unexpected)} inputs broke a reader, e.g. {unexpected[:10]}"
    assert not slow, f"{len(slow)} inputs exceeded {SLOW_PROVENANCE_S} s: {slow[:10]}"
    # refused: the empty input, and those a mutation left without any image format's signature
    assert outcomes["refused"] == 1 + sum(bool(data) and sniff_mime(data) is None for _, data in inputs)
    assert outcomes["found"] > len(inputs) // 4  # the mutations leave evidence to read
