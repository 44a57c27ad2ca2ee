"""The two-stage pipeline: detect (UFD) and attribute (e4e + SVM), with the original JSON output."""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import fast
from .align import AlignmentResult, align_face, alignment_available
from .detector import UFDDetector, ufd_transform
from .encoder import E4EEncoder, e4e_transform
from .images import ImageInput, load_image
from .parallel import ModelWorkers
from .svm import GANAttributor, display_name
from .weights import ResolvedWeights, WeightSources, resolve

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.89  # the original app's MODEL_THRESHOLD
CPU_ENCODER_BATCH = 2  # e4e images per CPU forward: most of the weight-reuse gain (measured), little activation memory
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
        an ``"alignment"`` entry (used, faces_found, note).

        A fake rejected by the open-set rule has ``"prediction": "Unknown GAN"``; its confidence,
        probabilities (of the known GANs) and deepfake_score are as in the known-GAN branch.
        """
        result = self._original_dict()
        if extended:
            result["alignment"] = {"used": self.aligned, "faces_found": self.faces_found, "note": self.alignment_note}
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
        align: Optional[bool] = None,
        precision: Optional[str] = None,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.detector = detector.to(self.device).eval()
        self.encoder = encoder.to(self.device).eval()
        self.attributor = attributor
        self.threshold = _check_threshold(threshold)
        self.weights = weights
        self.align = alignment_available() if align is None else bool(align)
        self.precision = "fp32"
        self.precision_check: Optional[dict] = None  # the fast path's agreement with fp32, when one ran
        self._use_precision(fast.resolve_precision(precision, self.device))
        # The exact fp32 path stays the original sequential one.
        self._workers = ModelWorkers.for_device(self.device) if self.precision != "fp32" else None

    @classmethod
    def from_pretrained(
        cls,
        source: Union[None, str, WeightSources] = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        device: Union[None, str, torch.device] = None,
        local_files_only: bool = False,
        cache_dir: Optional[str] = None,
        align: Optional[bool] = None,
        precision: Optional[str] = None,
    ) -> "GANOrigin":
        """Load the original GANOrigin weights (or ``source``: a folder, ``"org/repo[@rev]"``, or
        :class:`WeightSources`), downloading what is not cached.

        ``precision``: ``"auto"`` (default, or ``GANORIGIN_PRECISION``) uses bf16/fp16 where the
        device runs it natively and it agrees with fp32; ``"fp32"`` is the exact original maths.
        See :mod:`ganorigin.fast`.

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
        if files.safe_model is not None:
            from .training import load_attribution_model  # training imports this module

            attributor = load_attribution_model(files.safe_model)
        else:
            attributor = GANAttributor.from_pickles(files.svm, files.scaler, files.label_encoder)
        return cls(
            detector, encoder, attributor, threshold=threshold, device=device, weights=files, align=align, precision=precision
        )

    def predict(self, image: ImageInput, *, threshold: Optional[float] = None, align: Optional[bool] = None) -> Prediction:
        """Analyse one image (path, bytes, PIL image or numpy array)."""
        return self.predict_batch([image], threshold=threshold, align=align)[0]

    def predict_batch(
        self,
        images: Iterable[ImageInput],
        *,
        threshold: Optional[float] = None,
        batch_size: int = 8,
        align: Optional[bool] = None,
    ) -> list[Prediction]:
        """Analyse many images, ``batch_size`` at a time. Raises on the first undecodable one.

        ``align`` (default: the pipeline's setting) FFHQ-aligns the largest face for attribution
        only; the detector always sees the whole image.
        """
        threshold = self.threshold if threshold is None else _check_threshold(threshold)
        align = self.align if align is None else bool(align)
        remaining = iter(images)
        results = []
        while batch := list(itertools.islice(remaining, batch_size)):
            chunk = [load_image(image) for image in batch]  # one batch decoded at a time
            detection = self._start("detector", lambda: self.fake_probabilities(chunk))  # runs while faces align
            alignments = [align_face(im) if align else None for im in chunk]
            attributed = [a.image if a is not None and a.used else im for a, im in zip(alignments, chunk)]
            encoding = self._start("encoder", lambda: self.encode(attributed))
            fake, features = detection.result(), encoding.result()
            gan = self.attributor.predict_proba(features)
            unknown = self.attributor.reject_unknown(features)
            labels = tuple(self.attributor.labels)
            results += [
                Prediction(
                    float(p), threshold, labels, tuple(float(q) for q in row), unknown=bool(u), **_alignment_fields(a, im)
                )
                for p, row, u, a, im in zip(fake, gan, unknown, alignments, attributed)
            ]
        return results

    def _start(self, model: str, fn: Callable[[], Any]) -> Future:
        """``fn()`` on ``model``'s worker thread on a CPU fast path, so that CLIP and e4e run side by
        side (see :mod:`ganorigin.parallel`); elsewhere right away."""
        if self._workers is not None:
            return self._workers.submit(model, fn)
        done: Future = Future()
        done.set_result(fn())
        return done

    @torch.inference_mode()
    def fake_probabilities(self, images: Sequence) -> np.ndarray:
        """UFD's P(fake) for decoded RGB images, shape (B,)."""
        with fast.inference_context(self.detector, self.device):
            return np.concatenate([
                self.detector.predict_proba(torch.stack([ufd_transform(im) for im in chunk]).to(self.device)).cpu().numpy()
                for chunk in self._forward_chunks(images, self.detector)
            ])

    @torch.inference_mode()
    def encode(self, images: Sequence) -> np.ndarray:
        """e4e W+ codes of decoded RGB images, flattened: shape (B, 18 * 512)."""
        precision = fast.prepared_precision(self.encoder)
        memory_format = torch.contiguous_format if precision == "fp32" else torch.channels_last
        codes = []
        with fast.inference_context(self.encoder, self.device):
            for chunk in self._forward_chunks(images, self.encoder):
                x = torch.stack([e4e_transform(im) for im in chunk]).to(self.device, memory_format=memory_format)
                codes.append(self.encoder(x).flatten(1).float().cpu().numpy())
        return np.concatenate(codes)

    def _forward_chunks(self, images: Sequence, module: nn.Module) -> list:
        """How ``module`` takes ``images``: on a GPU all at once. On a CPU the packed e4e takes up to
        ``CPU_ENCODER_BATCH`` at once (its convolutions give bitwise the same codes at any batch
        size, and each weight is read from memory once per batch); everything else one image at a
        time, since reduced-precision matrix kernels would make an image's answer depend on its
        batch-mates."""
        if self.device.type == "cuda":
            step = len(images)
        elif module is self.encoder and fast.prepared_precision(module) != "fp32":
            step = CPU_ENCODER_BATCH
        else:
            step = 1
        step = max(step, 1)
        return [images[i : i + step] for i in range(0, len(images), step)]

    def _use_precision(self, precision: str) -> None:
        """Run each model in ``precision`` where it agrees with fp32 on the probe image (checked
        once per machine and weights, then cached); a model that disagrees stays exact fp32."""
        if precision == "fp32" or self._precision_summary() != "fp32":  # shared, already prepared modules
            self.precision = self._precision_summary()
            return
        key = fast.check_key(self._weight_files(), self.device, precision)
        check = fast.cached_check(key)
        if check is not None:  # known verdict: prepare only the models that passed
            if check.get("detector_ok", check["ok"]):
                fast.prepare_detector(self.detector, self.device, precision)
            if check.get("encoder_ok", check["ok"]):
                fast.prepare_encoder(self.encoder, self.device, precision)
        else:
            check = self._check_precision(precision)
            fast.store_check(key, check)
        if not check["ok"]:
            logger.warning("%s disagrees with fp32 on the probe image (%s); the disagreeing model runs fp32.",
                           precision, check)
        self.precision_check = check
        self.precision = self._precision_summary()

    def _precision_summary(self) -> str:
        """``"bf16"`` when both models run it, ``"fp32"`` when neither, else e.g. ``"bf16 (e4e only)"``."""
        detector, encoder = fast.prepared_precision(self.detector), fast.prepared_precision(self.encoder)
        if detector == encoder:
            return detector
        return f"{encoder} (e4e only)" if detector == "fp32" else f"{detector} (CLIP only)"

    def _check_precision(self, precision: str) -> dict:
        """Prepare both models for ``precision`` and compare each with its exact fp32 self on the
        probe image; a model that disagrees is rebuilt in fp32. One model at a time, so the fp32
        and converted copies of both are never in memory together."""
        images = fast.probe_images()
        fp32_states = {"detector": self.detector.state_dict(), "encoder": self.encoder.state_dict()}
        with fast.releasing_pages(self.detector):
            reference_fake = self.fake_probabilities(images)
        fast.prepare_detector(self.detector, self.device, precision)
        fast_fake = self.fake_probabilities(images)
        with fast.releasing_pages(self.encoder):
            reference_gan = self.attributor.predict_proba(self.encode(images))
        fast.prepare_encoder(self.encoder, self.device, precision)
        fast_gan = self.attributor.predict_proba(self.encode(images))
        check = fast.compare((reference_fake, reference_gan), (fast_fake, fast_gan))
        for name in ("detector", "encoder"):
            if not check[f"{name}_ok"]:
                module = fast.rebuild_fp32(getattr(self, name), fp32_states[name])
                setattr(self, name, module.to(self.device).eval())
        return check

    def _weight_files(self) -> Optional[list]:
        if self.weights is None:
            return None
        names = ("clip", "ufd_head", "e4e", "svm", "scaler", "safe_model")
        return [path for path in (getattr(self.weights, name, None) for name in names) if path is not None]


def _alignment_fields(alignment: Optional[AlignmentResult], attributed: Image.Image) -> dict:
    if alignment is None:
        return {"attributed_image": attributed, "alignment_note": "Face alignment was off; the whole image was analysed."}
    return {
        "aligned": alignment.used,
        "faces_found": alignment.faces_found,
        "alignment_note": alignment.reason,
        "attributed_image": attributed,
    }


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}.")
    return threshold
