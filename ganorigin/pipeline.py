"""The two-stage pipeline: detect (UFD) and attribute (e4e + SVM), with the original JSON output."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from .detector import UFDDetector, ufd_transform
from .encoder import E4EEncoder, e4e_transform
from .images import ImageInput, load_image
from .svm import GANAttributor, display_name
from .weights import ResolvedWeights, WeightSources, resolve

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.89  # the original app's MODEL_THRESHOLD


@dataclass(frozen=True)
class Prediction:
    """One image's result. ``labels`` are the label encoder's strings, ``probabilities`` P(GAN | fake)."""

    fake_probability: float
    threshold: float
    labels: tuple
    probabilities: tuple

    @property
    def is_fake(self) -> bool:
        return self.fake_probability >= self.threshold

    @property
    def attribution_label(self) -> str:
        return self.labels[int(np.argmax(self.probabilities))]

    @property
    def attribution(self) -> str:
        """Display name of the most likely GAN (computed for every image; ``is_fake`` decides)."""
        return display_name(self.attribution_label)

    @property
    def attribution_probabilities(self) -> dict:
        return {display_name(label): p for label, p in zip(self.labels, self.probabilities)}

    @property
    def class_probabilities(self) -> dict:
        """P(real) and P(fake) * P(GAN | fake) per GAN: sums to one, for the bar chart."""
        p = self.fake_probability
        return {"Real": 1.0 - p, **{name: p * q for name, q in self.attribution_probabilities.items()}}

    def to_dict(self) -> dict:
        """The original GANOrigin ``/predict`` JSON, both branches, exactly."""
        p = self.fake_probability
        if not self.is_fake:
            return {
                "prediction": "Authentic Image",
                "confidence": round(1.0 - p, 4),
                "probabilities": {"Real": 1.0 - p, "Fake": p},
            }
        return {
            "prediction": self.attribution_label,
            "confidence": round(max(self.probabilities), 4),
            "probabilities": dict(zip(self.labels, self.probabilities)),
            "deepfake_score": p,
        }


class GANOrigin:
    """Detect GAN-generated faces and name the GAN.

    Example::

        model = GANOrigin.from_pretrained()
        result = model.predict("face.png")
        result.is_fake, result.attribution, result.to_dict()
    """

    def __init__(
        self,
        detector: UFDDetector,
        encoder: E4EEncoder,
        attributor: GANAttributor,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        device: Union[None, str, torch.device] = None,
        weights: Optional[ResolvedWeights] = None,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.detector = detector.to(self.device).eval()
        self.encoder = encoder.to(self.device).eval()
        self.attributor = attributor
        self.threshold = _check_threshold(threshold)
        self.weights = weights

    @classmethod
    def from_pretrained(
        cls,
        source: Union[None, str, WeightSources] = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        device: Union[None, str, torch.device] = None,
        local_files_only: bool = False,
        cache_dir: Optional[str] = None,
    ) -> "GANOrigin":
        """Load the original GANOrigin weights (or ``source``: a folder, ``"org/repo[@rev]"``, or
        :class:`WeightSources`), downloading what is not cached.

        Raises:
            WeightsNotFoundError: some files are missing; the message lists them and the fix.
            WeightsFormatError: a file is corrupt, of the wrong architecture, or an unsafe pickle.
        """
        sources = WeightSources.parse(source)
        if local_files_only or cache_dir:
            sources = replace(
                sources, local_files_only=local_files_only or sources.local_files_only, cache_dir=cache_dir or sources.cache_dir
            )
        files = resolve(sources)
        detector = UFDDetector.from_files(files.clip, files.ufd_head)
        encoder = E4EEncoder.from_checkpoint(files.e4e)
        attributor = GANAttributor.from_pickles(files.svm, files.scaler, files.label_encoder)
        return cls(detector, encoder, attributor, threshold=threshold, device=device, weights=files)

    def predict(self, image: ImageInput, *, threshold: Optional[float] = None) -> Prediction:
        """Analyse one image (path, bytes, PIL image or numpy array)."""
        return self.predict_batch([image], threshold=threshold)[0]

    def predict_batch(
        self, images: Iterable[ImageInput], *, threshold: Optional[float] = None, batch_size: int = 8
    ) -> list[Prediction]:
        """Analyse many images, ``batch_size`` at a time. Raises on the first undecodable one."""
        threshold = self.threshold if threshold is None else _check_threshold(threshold)
        decoded = [load_image(image) for image in images]
        results = []
        for start in range(0, len(decoded), batch_size):
            chunk = decoded[start : start + batch_size]
            fake = self.fake_probabilities(chunk)
            gan = self.attributor.predict_proba(self.encode(chunk))
            labels = tuple(self.attributor.labels)
            results += [
                Prediction(float(p), threshold, labels, tuple(float(q) for q in row)) for p, row in zip(fake, gan)
            ]
        return results

    @torch.inference_mode()
    def fake_probabilities(self, images: Sequence) -> np.ndarray:
        """UFD's P(fake) for decoded RGB images, shape (B,)."""
        x = torch.stack([ufd_transform(im) for im in images]).to(self.device)
        return self.detector.predict_proba(x).cpu().numpy()

    @torch.inference_mode()
    def encode(self, images: Sequence) -> np.ndarray:
        """e4e W+ codes of decoded RGB images, flattened: shape (B, 18 * 512)."""
        x = torch.stack([e4e_transform(im) for im in images]).to(self.device)
        return self.encoder(x).flatten(1).float().cpu().numpy()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}.")
    return threshold
