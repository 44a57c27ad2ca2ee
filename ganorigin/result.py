"""What an analysis returns: :class:`Prediction`, and its original ``/predict`` JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np
from PIL import Image

from .models.attributor import display_name

if TYPE_CHECKING:
    from .provenance import Provenance

DEFAULT_THRESHOLD = 0.89  # the original app's MODEL_THRESHOLD
UNKNOWN_GAN = "Unknown GAN"  # attribution when the open-set rule rejects every known GAN


@dataclass(frozen=True)
class Prediction:
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
        """P(real) and P(fake) * P(GAN | fake) per GAN: sums to one, for the bar chart."""
        p = self.fake_probability
        return {"Real": 1.0 - p, **{name: p * q for name, q in self.attribution_probabilities.items()}}

    def to_dict(self, extended: bool = False) -> dict:
        """The original GANOrigin ``/predict`` JSON, both branches, exactly; ``extended=True`` adds
        an ``"alignment"`` entry (used, faces_found, note) and ``"provenance"`` (or None).

        A fake rejected by the open-set rule has ``"prediction": "Unknown GAN"``; its confidence,
        probabilities (of the known GANs) and deepfake_score are as in the known-GAN branch.
        """
        result = self._original_dict()
        if extended:
            result["alignment"] = {"used": self.aligned, "faces_found": self.faces_found, "note": self.alignment_note}
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
