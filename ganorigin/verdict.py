"""One verdict from two detectors, and "unsure" where a confident answer would be a coin flip.

Each detector's probability is read against its threshold with a band around it: at or above
``threshold + band`` it is confident the image is generated, below ``threshold - band`` that it
is not, and in between it is unsure (the band shrinks near 0 and 1 so it never leaves [0, 1]).

- **AI-generated** when either detector is confident, naming which (UFD, the GAN detector, then
  attributes the GAN; Community Forensics alone means a generator other than the known GANs).
- **Unsure** when the degradation gate trips (heavy JPEG re-compression, up-scaling, a very small
  image: the detectors are known to be unreliable there) or, with no confident detector, when
  one of them is inside its band.
- **Real** otherwise.

:class:`ReadsVerdict` reads it so for an image and for a clip (its scores over the frames, the gate on most of them).
:class:`UnsurePolicy` holds the bands and the gate's limits; ``UnsurePolicy.from_env()`` reads
``GANORIGIN_UNSURE_BAND_UFD``, ``GANORIGIN_UNSURE_BAND_COMMFOR``, ``GANORIGIN_GATE_MIN_JPEG_QUALITY``,
``GANORIGIN_GATE_MAX_UPSCALE`` and ``GANORIGIN_GATE_MIN_SIDE``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Optional

from .degradation import Degradation

AI_GENERATED, REAL, UNSURE = "AI-generated", "real", "unsure"
DETECTOR_NAMES = {"ufd": "UniversalFakeDetect (GAN detector)", "commfor": "Community Forensics (any generator)"}
OTHER_GENERATOR = "AI-generated — not one of the known GANs (diffusion or other)"
OTHER_GENERATOR_CLASS = "Other generator"  # the bar chart's class for it
COMMFOR_THRESHOLD = 0.5  # sigmoid(logit) > 0.5, the authors' operating point

_ENV = {
    "ufd_band": "GANORIGIN_UNSURE_BAND_UFD",
    "commfor_band": "GANORIGIN_UNSURE_BAND_COMMFOR",
    "min_jpeg_quality": "GANORIGIN_GATE_MIN_JPEG_QUALITY",
    "max_upscale": "GANORIGIN_GATE_MAX_UPSCALE",
    "min_side": "GANORIGIN_GATE_MIN_SIDE",
}


@dataclass(frozen=True)
class UnsurePolicy:
    """The bands around each detector's threshold and the degradation gate's limits.

    The defaults are chosen, not fitted: with the real weights, calibrate them on labelled images
    (e.g. with ``ganorigin robustness``). A band of 0 and limits of 0 / ``inf`` switch "unsure" off.
    """

    ufd_band: float = 0.05  # P(fake) within this of UFD's threshold (0.89 by default): unsure
    commfor_band: float = 0.1  # ... of Community Forensics' threshold (0.5)
    min_jpeg_quality: int = 50  # JPEG quality below this: heavily recompressed
    max_upscale: float = 1.75  # enlarged by more than this: up-scaled
    min_side: int = 256  # shorter side below this many pixels: too small

    def __post_init__(self):
        for name in ("ufd_band", "commfor_band"):
            if not 0.0 <= getattr(self, name) <= 0.5:
                raise ValueError(f"{name} ({_ENV[name]}) must be within [0, 0.5], got {getattr(self, name)}.")
        if self.max_upscale < 1.0 or self.min_side < 0 or not 0 <= self.min_jpeg_quality <= 100:
            raise ValueError(f"The degradation gate needs max_upscale >= 1, min_side >= 0 and min_jpeg_quality in "
                             f"[0, 100]; got {self.max_upscale}, {self.min_side}, {self.min_jpeg_quality}.")

    @classmethod
    def from_env(cls) -> "UnsurePolicy":
        """The defaults, overridden by the ``GANORIGIN_UNSURE_*`` / ``GANORIGIN_GATE_*`` variables set."""
        values = {}
        for field in fields(cls):
            text = os.environ.get(_ENV[field.name], "").strip()
            if text:
                try:
                    values[field.name] = type(field.default)(float(text))
                except ValueError:
                    raise ValueError(f"{_ENV[field.name]} must be a number, got {text!r}.") from None
        return cls(**values)

    def degradation_reasons(self, degradation: Optional[Degradation]) -> tuple:
        """Why ``degradation`` makes a verdict unreliable, as short phrases; empty when it does not."""
        if degradation is None:
            return ()
        reasons = []
        quality = degradation.jpeg_quality
        if quality is not None and quality < self.min_jpeg_quality:
            reasons.append(f"heavily recompressed (quality ≈ {quality})")
        if degradation.upscale is not None and degradation.upscale > self.max_upscale:
            reasons.append(f"up-scaled ×{degradation.upscale:g}")
        if degradation.short_side < self.min_side:
            reasons.append(f"small image ({degradation.short_side} px on the short side)")
        return tuple(reasons)


def effective_band(threshold: float, band: float) -> float:
    """``band``, narrowed so that ``threshold +- band`` stays within [0, 1]."""
    return min(band, threshold, 1.0 - threshold)


def detector_state(probability: float, threshold: float, band: float) -> str:
    """``"fake"``, ``"real"`` or ``"unsure"`` for one detector (see the module docstring)."""
    band = effective_band(threshold, band)
    upper, lower = round(threshold + band, 9), round(threshold - band, 9)  # 0.89 + 0.05 is 0.94, not 0.9400000000000001
    if probability >= upper:
        return "fake"
    return "real" if probability < lower else "unsure"


def overall(states: dict, scores: dict, degradation_reasons: tuple) -> tuple:
    """``(verdict, detectors that are confident it is generated, reasons for "unsure")``.

    Args:
        states: detector key -> :func:`detector_state`.
        scores: detector key -> ``(probability, threshold, band)``, for the reasons' wording.
    """
    if degradation_reasons:
        return UNSURE, (), tuple(degradation_reasons)
    confident = tuple(key for key, state in states.items() if state == "fake")
    if confident:
        return AI_GENERATED, confident, ()
    close = [f"{DETECTOR_NAMES[key]} scored {p:.2f}, within {effective_band(t, band):g} of its threshold {t:g}"
             for key, (p, t, band) in scores.items() if states[key] == "unsure"]
    return (UNSURE, (), tuple(close)) if close else (REAL, (), ())


class ReadsVerdict:
    """The overall verdict of an answer with ``detector_scores`` (key -> ``(probability, threshold, band)``) and
    ``degradation_reasons``: an image's :class:`~ganorigin.Prediction`, a clip's ``VideoPrediction``."""

    @property
    def detector_states(self) -> dict:
        """Detector key -> ``"fake"``, ``"real"`` or ``"unsure"`` (its score against its threshold and band)."""
        return {key: detector_state(*score) for key, score in self.detector_scores.items()}

    @property
    def _overall(self) -> tuple:
        return overall(self.detector_states, self.detector_scores, self.degradation_reasons)

    @property
    def verdict(self) -> str:
        """``"AI-generated"``, ``"real"`` or ``"unsure"``: both detectors and the degradation gate."""
        return self._overall[0]

    @property
    def verdict_by(self) -> tuple:
        """The detectors (keys) confident that it is generated: a score at or over its threshold plus its band;
        empty unless AI-generated."""
        return self._overall[1]

    @property
    def unsure_reasons(self) -> tuple:
        """Why the verdict is "unsure" (the degradation, or a score inside its band); empty otherwise."""
        return self._overall[2]
