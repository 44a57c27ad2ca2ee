"""The invisible DWT watermarks of Stable Diffusion's reference scripts and of SDXL.

All embed with invisible-watermark's ``dwtDct`` method on the BGR image: in the Haar DWT's
low-low band of the YUV ``U`` channel, each 4x4 block carries one bit of the message, repeated
over the image, in the remainder of its largest coefficient (besides the first) modulo 36.
Reading takes a majority vote per bit over all blocks.

Two conventions are in use, and a mark reads back only under its own: SD 1.x / 2.x
(CompVis' and Stability's ``txt2img.py``) mark the 8-bit image, whose ``U`` is offset by 128;
SDXL (diffusers, Stability's ``generative-models``) marks float pixels, whose ``U`` OpenCV
offsets by 0.5. Every mark is read under both; "found" needs more agreeing bits than chance
would give once in a million over all these tries.

This reader does the same arithmetic as ``imwatermark.WatermarkDecoder(...).decode(bgr, "dwtDct")``
given a uint8 or a float32 image (OpenCV's colour conversion, PyWavelets' Haar products; the
tests check that the votes are identical) but vectorised with numpy, so it needs neither
OpenCV nor a per-block Python loop.

The mark is fragile: rescaling or re-encoding (a JPEG re-save at quality 90) erases it. Finding
it is evidence; not finding it is none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from .evidence import Evidence
from .vocabulary import WEAK

SDXL_MESSAGE = 0b101100111110110010010000011110111011000110011110  # diffusers / Stability's SDXL scripts
MARKS = {
    "SDXL": np.array([int(bit) for bit in bin(SDXL_MESSAGE)[2:]], dtype=bool),  # 48 bits
    "Stable Diffusion 1.x": np.unpackbits(np.frombuffer(b"StableDiffusionV1", dtype=np.uint8)).astype(bool),  # 136
    "Stable Diffusion 2.x": np.unpackbits(np.frombuffer(b"SDV2", dtype=np.uint8)).astype(bool),  # 32 bits
}
CONVENTIONS = ("8-bit", "float")
MIN_PIXELS = 256 * 256  # invisible-watermark refuses to mark smaller images
SDXL_MIN_WIDTH = 256  # and diffusers leaves SDXL images narrower than this unmarked
MAX_PIXELS_READ = 2_000_000  # the top rows up to this many pixels are read: every native SD/SDXL size fits whole
FALSE_FIND_RATE = 1e-6  # chance that an unmarked image reads as marked, all marks and conventions together
_SCALE = 36  # dwtDct's quantisation step for the U channel
_HAAR = 0.7071067811865476  # PyWavelets' Haar filter tap, 1/sqrt(2)


@dataclass(frozen=True)
class MarkReading:
    """One known mark read back: how many of its bits agree (``None`` when not checked)."""

    name: str
    bits: int
    agreeing_bits: Optional[int]
    found: bool
    convention: Optional[str] = None  # the pixel convention it agreed best under: "8-bit" or "float"

    @property
    def agreement(self) -> Optional[float]:
        return None if self.agreeing_bits is None else self.agreeing_bits / self.bits


@dataclass(frozen=True, kw_only=True)
class Watermarks(Evidence):
    """The SDXL, SD 1.x and SD 2.x marks read back; ``found`` when one of them agrees beyond chance."""

    marks: tuple = ()  # MarkReading per known mark
    rows_read: int = 0  # image rows read from the top (all of them for images up to 2 MP)


def min_agreeing_bits(bits: int, rate: float = FALSE_FIND_RATE) -> int:
    """The fewest agreeing bits that fair coin flips reach with probability at most ``rate``."""
    tail = 0.0
    for k in range(bits, -1, -1):
        tail += math.comb(bits, k) / 2**bits
        if tail > rate:
            return k + 1
    return 0


_TRIES = len(MARKS) * len(CONVENTIONS)
FOUND_AT = {name: min_agreeing_bits(len(mark), FALSE_FIND_RATE / _TRIES) for name, mark in MARKS.items()}


def read_watermarks(image: Image.Image) -> Watermarks:
    """Read the known marks from a decoded RGB image (from :func:`ganorigin.images.load_image`)."""
    width, height = image.size
    if width * height < MIN_PIXELS:
        return Watermarks(says="not checked: the image is under 256x256 pixels, which the generators do not mark")
    rows = min(height, max(8, MAX_PIXELS_READ // width // 8 * 8))  # whole 8-row bands keep every block's bit index
    rgb = np.asarray(image.crop((0, 0, width, rows)))
    blocks = {convention: block_bits(rgb, convention) for convention in CONVENTIONS}
    readings = []
    for name, mark in MARKS.items():
        if name == "SDXL" and width < SDXL_MIN_WIDTH:
            readings.append(MarkReading(name, len(mark), None, False))
            continue
        agreeing, convention = max((int((bit_votes(ones, len(mark)) == mark).sum()), convention)
                                   for convention, ones in blocks.items())
        readings.append(MarkReading(name, len(mark), agreeing, agreeing >= FOUND_AT[name], convention))
    found = [r for r in readings if r.found]
    if found:
        says = "; ".join(f"invisible {r.name} watermark found ({r.agreeing_bits}/{r.bits} bits agree)" for r in found)
        return Watermarks(found=True, strength=WEAK, ai_generated=True, says="An " + says, marks=tuple(readings),
                          rows_read=rows)
    agreement = ", ".join(f"{r.name} {r.agreement:.0%}" for r in readings if r.agreement is not None)
    return Watermarks(says=f"no Stable Diffusion watermark found (best bit agreement: {agreement}); absence proves "
                           "nothing: a resize or JPEG re-save erases it", marks=tuple(readings), rows_read=rows)


def block_bits(rgb: np.ndarray, convention: str) -> np.ndarray:
    """The bit each 4x4 block of the ``U`` channel's Haar low-low band reads, in raster order."""
    height, width = rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4
    u = _u_channel(rgb[:height, :width], convention)
    tap = u.dtype.type(_HAAR)  # PyWavelets keeps float32 input in float32
    rows = tap * u[0::2] + tap * u[1::2]  # as PyWavelets computes it: rows first, each a sum of two products
    low = tap * rows[:, 0::2] + tap * rows[:, 1::2]
    block_rows, block_cols = low.shape[0] // 4, low.shape[1] // 4
    blocks = np.abs(low[: block_rows * 4, : block_cols * 4]).reshape(block_rows, 4, block_cols, 4)
    blocks[:, 0, :, 0] = 0  # each block's first coefficient takes no part
    # The decoder's value at its arg-max of |coefficient|, raster order: the max over each block's 4 columns, then
    # over its 4 rows, as elementwise maxima (ten times faster than numpy's reduction over two strided axes).
    columns = np.maximum(np.maximum(blocks[..., 0], blocks[..., 1]), np.maximum(blocks[..., 2], blocks[..., 3]))
    largest = np.maximum(np.maximum(columns[:, 0], columns[:, 1]), np.maximum(columns[:, 2], columns[:, 3])).ravel()
    return (largest % _SCALE) > _SCALE / 2


def bit_votes(ones: np.ndarray, bits: int) -> np.ndarray:
    """The message a ``bits``-bit mark reads as: a majority vote per bit over the blocks that carry it."""
    bit_index = np.arange(len(ones)) % bits
    share = np.bincount(bit_index, weights=ones, minlength=bits) / np.maximum(np.bincount(bit_index, minlength=bits), 1)
    return share * 255 > 127  # the decoder's own rounding of the vote


def _u_channel(rgb: np.ndarray, convention: str) -> np.ndarray:
    """OpenCV's BGR->YUV ``U`` = 0.492 (B - Y) + offset: on 8-bit pixels in 14-bit fixed point, offset 128,
    rounded and saturated; on float pixels in float32, offset 0.5."""
    if convention == "float":
        pixels = rgb.astype(np.float32)
        r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        y = r * np.float32(0.299) + g * np.float32(0.587) + b * np.float32(0.114)
        return (b - y) * np.float32(0.492) + np.float32(0.5)
    r, g, b = (rgb[..., channel].astype(np.int32) for channel in range(3))
    y = (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
    u = ((b - y) * 8061 + ((128 << 14) + (1 << 13))) >> 14
    return np.clip(u, 0, 255, out=u).astype(np.float64)
