"""What an analysis returns: :class:`Prediction`, its original ``/predict`` JSON and the extended one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np
from PIL import Image

from .degradation import Degradation
from .models.attributor import display_name
from .verdict import AI_GENERATED, COMMFOR_THRESHOLD, OTHER_GENERATOR, OTHER_GENERATOR_CLASS, UNSURE, ReadsVerdict

if TYPE_CHECKING:
    from .provenance import Provenance

DEFAULT_THRESHOLD = 0.89  # the original app's MODEL_THRESHOLD
UNKNOWN_GAN = "Unknown GAN"  # attribution when the open-set rule rejects every known GAN


@dataclass(frozen=True)
class Prediction(ReadsVerdict):
    """One image's result. ``labels`` are the label encoder's strings, ``probabilities`` P(GAN | fake)."""

    fake_probability: float
    threshold: float
    labels: tuple
    probabilities: tuple
    # Face alignment: faces_found is None when alignment was off; attributed_image is what e4e saw.
    aligned: bool = False
    faces_found: Optional[int] = None
    alignment_note: str = ""
    attributed_image: Optional[Image.Image] = field(default=None, compare=False, repr=False)
    # Open-set rule (models trained by `ganorigin train`): far from every known GAN.
    unknown: bool = False
    # The any-generator detector (None when the pipeline ran UFD alone), the bands around both
    # thresholds, and the degradation gate: see ganorigin.verdict.
    commfor_probability: Optional[float] = None
    commfor_threshold: float = COMMFOR_THRESHOLD
    ufd_band: float = 0.0
    commfor_band: float = 0.0
    degradation: Optional[Degradation] = None
    degradation_reasons: tuple = ()
    # What the file's own bytes say about its origin (None for PIL images and arrays: no bytes).
    provenance: Optional["Provenance"] = field(default=None, repr=False)

    @property
    def is_fake(self) -> bool:
        return self.fake_probability >= self.threshold

    @property
    def attribution_label(self) -> str:
        return self.labels[int(np.argmax(self.probabilities))]

    @property
    def attribution(self) -> str:
        """Display name of the most likely GAN, or "Unknown GAN" (computed for every image; ``is_fake`` decides)."""
        return UNKNOWN_GAN if self.unknown else display_name(self.attribution_label)

    @property
    def attribution_probabilities(self) -> dict:
        return {display_name(label): p for label, p in zip(self.labels, self.probabilities)}

    @property
    def class_probabilities(self) -> dict:
        """P(real) and P(fake) * P(GAN | fake) per GAN: sums to one, for the bar chart.

        When Community Forensics alone is confident (a generator other than the known GANs), its
        probability c is P(generated), split as c * P(fake) * P(GAN | fake) per GAN and
        c * (1 - P(fake)) for "Other generator" (P(fake) being UFD's, the GAN detector's).
        """
        p = self.fake_probability
        if self.verdict_by == ("commfor",):
            c = self.commfor_probability
            return {"Real": 1.0 - c, **{name: c * p * q for name, q in self.attribution_probabilities.items()},
                    OTHER_GENERATOR_CLASS: c * (1.0 - p)}
        return {"Real": 1.0 - p, **{name: p * q for name, q in self.attribution_probabilities.items()}}

    @property
    def detector_scores(self) -> dict:
        """Detector key (``"ufd"``, ``"commfor"``) -> ``(probability, threshold, band)``, for those that ran."""
        scores = {"ufd": (self.fake_probability, self.threshold, self.ufd_band)}
        if self.commfor_probability is not None:
            scores["commfor"] = (self.commfor_probability, self.commfor_threshold, self.commfor_band)
        return scores

    @property
    def verdict_attribution(self) -> Optional[str]:
        """The GAN named with an AI-generated verdict: UFD's hit is attributed as ever; Community
        Forensics alone names no GAN (None)."""
        return self.attribution if self.verdict == AI_GENERATED and "ufd" in self.verdict_by else None

    @property
    def verdict_text(self) -> str:
        """The verdict as a person reads it, e.g. "AI-generated — StyleGAN2"."""
        verdict, _, reasons = self._overall
        if verdict == AI_GENERATED:
            attribution = self.verdict_attribution
            return f"AI-generated — {attribution}" if attribution else OTHER_GENERATOR
        return f"Unsure — {'; '.join(reasons)}" if verdict == UNSURE else "Real"

    def to_dict(self, extended: bool = False) -> dict:
        """The original GANOrigin ``/predict`` JSON, both branches, exactly (UFD's verdict alone);
        ``extended=True`` adds ``"alignment"`` (used, faces_found, note), ``"detectors"`` (each
        detector's probability, threshold, band and state), ``"verdict"`` (both detectors and the
        degradation gate), ``"degradation"`` (what was measured; null when not measured) and
        ``"provenance"`` (what the file's own bytes say; null for PIL images and arrays).

        A fake rejected by the open-set rule has ``"prediction": "Unknown GAN"``; its confidence,
        probabilities (of the known GANs) and deepfake_score are as in the known-GAN branch.
        """
        result = self._original_dict()
        if extended:
            result["alignment"] = {"used": self.aligned, "faces_found": self.faces_found, "note": self.alignment_note}
            states = self.detector_states
            result["detectors"] = {key: {"probability": p, "threshold": t, "band": band, "state": states[key]}
                                   for key, (p, t, band) in self.detector_scores.items()}
            result["verdict"] = {"label": self.verdict, "text": self.verdict_text, "by": list(self.verdict_by),
                                 "attribution": self.verdict_attribution, "unsure_reasons": list(self.unsure_reasons)}
            result["degradation"] = None if self.degradation is None else self.degradation.to_dict()
            result["provenance"] = None if self.provenance is None else self.provenance.to_dict()
        return result

    def _original_dict(self) -> dict:
        p = self.fake_probability
        if not self.is_fake:
            return {
                "prediction": "Authentic Image",
                "confidence": round(1.0 - p, 4),
                "probabilities": {"Real": 1.0 - p, "Fake": p},
            }
        return {
            "prediction": UNKNOWN_GAN if self.unknown else self.attribution_label,
            "confidence": round(max(self.probabilities), 4),
            "probabilities": dict(zip(self.labels, self.probabilities)),
            "deepfake_score": p,
        }
