"""The invisible DWT watermarks of Stable Diffusion's reference scripts and of SDXL.

Both embed with invisible-watermark's ``dwtDct`` method on the BGR image (SDXL as diffusers and
Stability's scripts do it; SD 1.x as CompVis' ``txt2img.py`` does it): in the Haar DWT's
low-low band of the YUV ``U`` channel, each 4x4 block carries one bit of the message, repeated
over the image, in the remainder of its largest coefficient (besides the first) modulo 36.
Reading takes a majority vote per bit over all blocks.

This reader does the same arithmetic as ``imwatermark.WatermarkDecoder(...).decode(bgr, "dwtDct")``
(OpenCV's fixed-point BGR->YUV, PyWavelets' Haar products; the tests check that the votes are
identical) but vectorised with numpy, so it needs neither OpenCV nor a per-block Python loop.

The mark is fragile: rescaling or re-encoding (a JPEG re-save at quality 90) erases it, and on
some images even the lossless round trip reads back barely half of the bits. Finding it is
evidence; not finding it is none.
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
SD1_MESSAGE = b"StableDiffusionV1"  # CompVis scripts/txt2img.py
MARKS = {
    "SDXL": np.array([int(bit) for bit in bin(SDXL_MESSAGE)[2:]], dtype=bool),  # 48 bits
    "Stable Diffusion 1.x": np.unpackbits(np.frombuffer(SD1_MESSAGE, dtype=np.uint8)).astype(bool),  # 136 bits
}
MIN_PIXELS = 256 * 256  # invisible-watermark refuses to mark smaller images
SDXL_MIN_WIDTH = 256  # and diffusers leaves SDXL images narrower than this unmarked
MAX_PIXELS_READ = 2_000_000  # the top rows up to this many pixels are read: every native SD/SDXL size fits whole
FALSE_FIND_RATE = 1e-6  # "found" needs more agreeing bits than chance would give once in a million
_SCALE = 36  # dwtDct's quantisation step for the U channel
_HAAR = 0.7071067811865476  # PyWavelets' Haar filter tap, 1/sqrt(2) as a double


@dataclass(frozen=True)
class MarkReading:
    """One known mark read back: how many of its bits agree (``None`` when not checked)."""

    name: str
    bits: int
    agreeing_bits: Optional[int]
    found: bool

    @property
    def agreement(self) -> Optional[float]:
        return None if self.agreeing_bits is None else self.agreeing_bits / self.bits


@dataclass(frozen=True, kw_only=True)
class Watermarks(Evidence):
    """The SDXL and SD 1.x marks read back; ``found`` when one of them agrees beyond chance."""

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


FOUND_AT = {name: min_agreeing_bits(len(mark)) for name, mark in MARKS.items()}  # 41 of 48, 97 of 136


def read_watermarks(image: Image.Image) -> Watermarks:
    """Read both marks from a decoded RGB image (from :func:`ganorigin.images.load_image`)."""
    width, height = image.size
    if width * height < MIN_PIXELS:
        return Watermarks(says="not checked: the image is under 256x256 pixels, which the generators do not mark")
    rows = min(height, max(8, MAX_PIXELS_READ // width // 8 * 8))  # whole 8-row bands keep every block's bit index
    rgb = np.asarray(image.crop((0, 0, width, rows)))
    votes = {name: bit_votes(rgb, len(mark)) for name, mark in MARKS.items()}
    readings = []
    for name, mark in MARKS.items():
        if name == "SDXL" and width < SDXL_MIN_WIDTH:
            readings.append(MarkReading(name, len(mark), None, False))
            continue
        agreeing = int(((votes[name] * 255 > 127) == mark).sum())  # the library's rounding of the vote
        readings.append(MarkReading(name, len(mark), agreeing, agreeing >= FOUND_AT[name]))
    found = [r for r in readings if r.found]
    if found:
        says = "; ".join(f"an invisible {r.name} watermark was found ({r.agreeing_bits}/{r.bits} bits agree)" for r in found)
        return Watermarks(found=True, strength=WEAK, ai_generated=True, says=says[0].upper() + says[1:],
                          marks=tuple(readings), rows_read=rows)
    agreement = ", ".join(f"{r.name} {r.agreement:.0%}" for r in readings if r.agreement is not None)
    return Watermarks(says=f"no Stable Diffusion watermark found (bits agreeing: {agreement}); absence proves nothing: "
                           "a resize or JPEG re-save erases it", marks=tuple(readings), rows_read=rows)


def bit_votes(rgb: np.ndarray, bits: int) -> np.ndarray:
    """Per message bit, the share of blocks that read 1 (the ``dwtDct`` decoder's vote), shape (bits,)."""
    height, width = rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4
    u = _u_channel(rgb[:height, :width]).astype(np.float64)
    # Haar low-low band, as PyWavelets computes it: rows first, each sum of two products.
    rows = _HAAR * u[0::2] + _HAAR * u[1::2]
    low = _HAAR * rows[:, 0::2] + _HAAR * rows[:, 1::2]
    block_rows, block_cols = low.shape[0] // 4, low.shape[1] // 4
    blocks = low[: block_rows * 4, : block_cols * 4].reshape(block_rows, 4, block_cols, 4)
    blocks = np.abs(blocks.transpose(0, 2, 1, 3).reshape(-1, 16)[:, 1:])  # raster order; the first coefficient is skipped
    largest = blocks[np.arange(len(blocks)), blocks.argmax(axis=1)]
    ones = (largest % _SCALE) > _SCALE / 2
    bit_index = np.arange(len(ones)) % bits
    counts = np.bincount(bit_index, minlength=bits)
    return np.bincount(bit_index, weights=ones, minlength=bits) / np.maximum(counts, 1)


def _u_channel(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit BGR->YUV ``U`` (14-bit fixed point): U = 0.492 (B - Y) + 128, rounded and saturated."""
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    y = (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
    return np.clip(((b - y) * 8061 + (128 << 14) + (1 << 13)) >> 14, 0, 255)
