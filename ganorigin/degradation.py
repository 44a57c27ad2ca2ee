"""How degraded an image is: its JPEG quality, signs of up-scaling, its size.

Detectors read fine pixel statistics that re-compression and resampling destroy. This module
measures the three degradations that matter most, from the file's own bytes and pixels:

- **JPEG quality** from the quantisation tables (the DQT segments, parsed here with bounds, never
  by a decoder): the libjpeg quality (1-100) whose scaled standard tables fit them best. Exact
  for files written by libjpeg (Pillow, most software); an approximation for encoders with
  their own tables (cameras, Photoshop).
- **Up-scaling**: an image enlarged by interpolation has no detail above ``1/factor`` of its
  pixel grid's resolution. Above that frequency its spectrum sits on the floor left by rounding
  to 8 bits, which an image at its native resolution stays well above. The frequency where the
  spectrum reaches that floor gives the factor (calibrated on bicubic ×2 and ×3 up-scales of
  the dev images); a resampling period of 3, 5 or 6 pixels in the second derivative (the
  interpolation's trace) gives it exactly.
- **Size**: the shorter side in pixels.

:func:`assess` measures all three; :mod:`ganorigin.verdict` decides what is degraded enough.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

# ITU-T T.81 Annex K: the example luminance and chrominance tables libjpeg scales, natural order.
_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])
_CHROMINANCE = np.full(64, 99)
_CHROMINANCE[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 24, 25]] = [17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 47, 66]


def _zigzag() -> np.ndarray:
    """Natural (row-major) index of each coefficient in the zigzag order DQT stores them in."""
    order = []
    for diagonal in range(15):
        cells = [(row, diagonal - row) for row in range(max(0, diagonal - 7), min(diagonal, 7) + 1)]
        order += [8 * row + col for row, col in (cells[::-1] if diagonal % 2 == 0 else cells)]
    return np.array(order)


_ZIGZAG = _zigzag()
HEADER_BYTES = 4 * 2**20  # the tables come before the image data; a header past this is not read
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI: no length field


@dataclass(frozen=True)
class Degradation:
    """What :func:`assess` measured. ``None``: not a JPEG / no sign of up-scaling."""

    jpeg_quality: Optional[int]
    upscale: Optional[float]
    short_side: int

    def to_dict(self) -> dict:
        return {"jpeg_quality": self.jpeg_quality, "upscale": self.upscale, "short_side": self.short_side}


def quantization_tables(data: bytes) -> dict:
    """``{table id: (64 values in natural order, 16-bit?)}`` from a JPEG's DQT segments; ``{}`` for
    anything that is not a well-formed JPEG header. Reads nothing past the first scan."""
    if data[:2] != b"\xff\xd8":
        return {}
    tables, pos = {}, 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return {}
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: the tables have all been seen
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return {}
        if marker == 0xDB and not _read_dqt(segment, tables):
            return {}
        pos += 2 + length
    return tables


def _read_dqt(segment: bytes, tables: dict) -> bool:
    """Add the tables of one DQT segment to ``tables``; False if it is malformed."""
    offset = 0
    while offset < len(segment):
        precision, table_id = segment[offset] >> 4, segment[offset] & 0x0F
        size = 64 * (1 + precision)
        if precision > 1 or table_id > 3 or offset + 1 + size > len(segment):
            return False
        values = np.frombuffer(segment[offset + 1 : offset + 1 + size], dtype=">u2" if precision else "u1")
        natural = np.empty(64, dtype=np.int64)
        natural[_ZIGZAG] = values
        tables[table_id] = (natural, bool(precision))
        offset += 1 + size
    return True


def _libjpeg_tables(base: np.ndarray, wide: bool) -> np.ndarray:
    """libjpeg's ``jpeg_set_quality`` for qualities 1 to 100: the base table scaled, clamped to 1..255 (or 32767);
    shape (100, 64)."""
    quality = np.arange(1, 101)
    scale = np.where(quality < 50, 5000 // quality, 200 - 2 * quality)
    return np.clip((base[None, :] * scale[:, None] + 50) // 100, 1, 32767 if wide else 255)


# Table id -> {16-bit?: libjpeg's tables for every quality}: luminance (0) and chrominance (1).
_LIBJPEG_TABLES = {i: {wide: _libjpeg_tables(base, wide) for wide in (False, True)}
                   for i, base in ((0, _LUMINANCE), (1, _CHROMINANCE))}


def jpeg_quality(tables: dict) -> Optional[int]:
    """The libjpeg quality whose tables fit ``tables`` best (least absolute difference over the
    luminance table 0 and, when present, the chrominance table 1); None without table 0."""
    if 0 not in tables:
        return None
    errors = sum(np.abs(_LIBJPEG_TABLES[i][wide] - table).sum(axis=1)
                 for i, (table, wide) in tables.items() if i in _LIBJPEG_TABLES)
    return 1 + int(np.argmin(errors))


# --- up-scaling -------------------------------------------------------------------------------

_GRAY = np.array([0.299, 0.587, 0.114])
_ROUNDING_FLOOR = float((_GRAY**2).sum() / 12)  # variance of 8-bit rounding noise in the gray mix
_ANALYSIS_SIDE = 512  # centre crop analysed: enough rows for a stable spectrum, fast
_FLOOR_MARGIN = 4.0  # "at the floor": within 4x the rounding noise's power
_BAND_LIMITED = 0.45  # detail stops below 0.45 cycles/pixel (native images reach ~0.49)
_FACTOR_CALIBRATION = 0.8  # factor ~ 0.8 / bandwidth (bicubic x2 -> 0.40, x3 -> 0.26 on the dev images)
_PERIODS = (3, 5, 6)  # resampling periods read exactly (2, 4 and 8 collide with JPEG's 8-px blocks)
_PERIOD_PEAK = 6.0  # a period's spectral peak over the median: absent in native images (< 3 measured)


def _luminance(image: Image.Image) -> np.ndarray:
    """The centre ``_ANALYSIS_SIDE`` square (at most) as gray levels, float64."""
    w, h = image.size
    left, top = (w - min(w, _ANALYSIS_SIDE)) // 2, (h - min(h, _ANALYSIS_SIDE)) // 2
    crop = image.crop((left, top, left + min(w, _ANALYSIS_SIDE), top + min(h, _ANALYSIS_SIDE)))
    return np.asarray(crop.convert("RGB"), dtype=np.float64) @ _GRAY


def bandwidth(gray: np.ndarray) -> float:
    """The highest frequency (cycles/pixel, at most 0.5) where the mean row and column power
    spectrum is still clearly above the 8-bit rounding floor."""
    grid = np.linspace(0.0, 0.5, 257)
    power = np.zeros_like(grid)
    for lines in (gray, gray.T):
        lines = lines - lines.mean(axis=1, keepdims=True)
        window = np.hanning(lines.shape[1])
        spectrum = (np.abs(np.fft.rfft(lines * window, axis=1)) ** 2).mean(axis=0) / (window**2).sum()
        power += np.interp(grid, np.fft.rfftfreq(lines.shape[1]), spectrum) / 2
    smooth = np.convolve(np.log(power / _ROUNDING_FLOOR + 1e-12), np.ones(9) / 9, mode="same")
    above = np.flatnonzero(smooth[: len(grid) - 4] > np.log(_FLOOR_MARGIN))
    return float(grid[above.max()]) if above.size else 0.0


def resampling_period(gray: np.ndarray) -> Optional[int]:
    """A period of ``_PERIODS`` in the rows' and columns' mean second-derivative magnitude (the trace
    interpolation leaves), if one stands out in both directions; else None."""
    found = None
    for lines in (gray, gray.T):
        curvature = np.abs(lines[:, :-2] - 2 * lines[:, 1:-1] + lines[:, 2:]).mean(axis=0)
        spectrum = np.abs(np.fft.rfft(curvature - curvature.mean()))
        frequencies = np.fft.rfftfreq(len(curvature))
        median = np.median(spectrum[1:]) + 1e-12
        peaks = {k: spectrum[np.abs(frequencies - 1 / k) <= 1 / len(curvature)].max() / median for k in _PERIODS}
        period, peak = max(peaks.items(), key=lambda item: item[1])
        if peak < _PERIOD_PEAK or found not in (None, period):
            return None
        found = period
    return found


def upscale_factor(image: Image.Image) -> Optional[float]:
    """The factor ``image`` was enlarged by (one decimal), or None when its detail reaches its own
    resolution."""
    gray = _luminance(image)
    if min(gray.shape) < 64:
        return None
    limit = bandwidth(gray)
    if limit >= _BAND_LIMITED:
        return None
    period = resampling_period(gray)
    return float(period) if period else round(_FACTOR_CALIBRATION / max(limit, 0.05), 1)


def _header_bytes(source) -> Optional[bytes]:
    """The first bytes of an encoded image given as a path or bytes (what the tables are read from)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:HEADER_BYTES])
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(Path(source), "rb") as f:
                return f.read(HEADER_BYTES)
        except OSError:
            return None
    return None


def assess(source, image: Image.Image) -> Degradation:
    """Measure the decoded ``image``; ``source`` (what the user gave: a path, bytes, a PIL image)
    supplies the JPEG tables when it is an encoded file (a PIL image: its ``quantization``)."""
    data = _header_bytes(source)
    if data is not None:
        tables = quantization_tables(data)
    else:
        pil_tables = getattr(source, "quantization", None) or {}
        tables = {i: (np.asarray(t, dtype=np.int64), max(t) > 255) for i, t in pil_tables.items() if len(t) == 64}
    return Degradation(jpeg_quality(tables), upscale_factor(image), min(image.size))
