"""The pipeline, composition only: decode -> detect (two detectors) -> align -> encode -> classify -> result,
with the file's provenance read while the models run."""

from __future__ import annotations

import itertools
import logging
import os
from concurrent.futures import Future
from dataclasses import replace
from functools import partial
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
from PIL import Image
from torch import nn

from .accel import ModelWorkers, precision_of, precision_summary
from .align import AlignmentResult, align_face, alignment_available, alignment_setting
from .degradation import assess
from .errors import ConfigurationError, InvalidImageError, InvalidVideoError
from .factory import (Device, as_device, codes_from_parts, commfor_scores, create_commfor, create_detector,
                      create_encoder, detector_scores, encode, encode_in_parts)
from .hub import ResolvedWeights, WeightSources, resolve
from .hub.pickles import load_attributor_pickles
from .hub.trained_model import load_attribution_model
from .images import IMAGE_HEADER_BYTES, ImageInput, is_still_image, load_image, read_image_bytes
from .models import GANAttributor
from .models.attributor import alignment_mismatch
from .provenance import read_provenance
from .result import DEFAULT_THRESHOLD, Prediction
from .verdict import COMMFOR_THRESHOLD, UnsurePolicy
from .video import DEFAULT_FPS, DEFAULT_MAX_FRAMES, VideoInput, VideoPrediction, analyse_video, is_video

logger = logging.getLogger(__name__)

VIDEO_NOT_IMAGE = "This file is a video, not an image: use predict_video()."
IMAGE_NOT_VIDEO = "This file is an image, not a video: use predict()."
CPU_ENCODER_BATCH = 2  # e4e images per CPU forward: most of the weight-reuse gain (measured), little activation memory


class GANOrigin:
    """Detect GAN-generated faces and name the GAN; a second detector (Community Forensics) covers other generators.

    Example::

        model = GANOrigin.from_pretrained()
        result = model.predict("face.png")
        result.is_fake, result.attribution, result.to_dict()
    """

    def __init__(
        self,
        detector: nn.Module,
        encoder: nn.Module,
        attributor: GANAttributor,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        device: Device = None,
        weights: Optional[ResolvedWeights] = None,
        align: Optional[bool] = None,
        commfor: Optional[nn.Module] = None,
        commfor_threshold: float = COMMFOR_THRESHOLD,
        policy: Optional[UnsurePolicy] = None,
    ):
        """``detector``, ``encoder`` and ``commfor`` are ready to run: pure models or accelerated ones
        from :mod:`ganorigin.factory`. Without ``commfor`` only UFD detects (as the original).
        ``policy``: the "unsure" bands and degradation gate (default: ``UnsurePolicy.from_env()``)."""
        self.device = as_device(device)
        self.detector = detector.to(self.device).eval()
        self.encoder = encoder.to(self.device).eval()
        self.commfor = None if commfor is None else commfor.to(self.device).eval()
        self.commfor_threshold = check_threshold(commfor_threshold)
        self.policy = policy or UnsurePolicy.from_env()
        self.attributor = attributor
        self.threshold = check_threshold(threshold)
        self.weights = weights
        self.align = alignment_setting(align)
        self._alignments_checked: set = set()
        self._align(None)  # warns now if the default setting differs from the model's training
        # CLIP and e4e side by side on a CPU fast path; the exact fp32 path stays the original sequential one.
        self._workers = ModelWorkers.for_device(self.device) if self.precision != "fp32" else None

    @property
    def precision(self) -> str:
        """What CLIP and e4e run in: ``"fp32"``, ``"bf16"``, or e.g. ``"bf16 (e4e only)"``."""
        return precision_summary(self.detector, self.encoder)

    @property
    def precisions(self) -> dict:
        """What each model runs in, e.g. ``{"detector": "bf16", "encoder": "bf16", "commfor": "bf16"}``."""
        models = {"detector": self.detector, "encoder": self.encoder, "commfor": self.commfor}
        return {name: precision_of(model) for name, model in models.items() if model is not None}

    @classmethod
    def from_pretrained(
        cls,
        source: Union[None, str, os.PathLike, WeightSources] = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        device: Device = None,
        local_files_only: bool = False,
        cache_dir: Optional[str] = None,
        align: Optional[bool] = None,
        precision: Optional[str] = None,
        commfor_threshold: float = COMMFOR_THRESHOLD,
    ) -> "GANOrigin":
        """Load the original GANOrigin weights (or ``source``: a folder, ``"org/repo[@rev]"``, or
        :class:`WeightSources`), downloading what is not cached.

        ``precision``: ``"auto"`` (default, or ``GANORIGIN_PRECISION``) uses bf16/fp16 where the
        device runs it natively and it agrees with fp32; ``"fp32"`` is the exact original maths.
        See :mod:`ganorigin.accel`. ``threshold`` is UFD's, ``commfor_threshold`` Community Forensics'.

        Raises:
            WeightsNotFoundError: some files are missing; the message lists them and the fix.
            WeightsFormatError: a file is corrupt, of the wrong architecture, or an unsafe pickle.
            ConfigurationError: ``device`` or ``precision`` is one this machine cannot use.
        """
        device = as_device(device)  # a device this machine lacks is said before any download
        sources = WeightSources.parse(source)
        sources = replace(sources, local_files_only=local_files_only or sources.local_files_only,
                          cache_dir=cache_dir or sources.cache_dir)
        files = resolve(sources)
        if files.test_weights:  # the app and the CLI say it their own way too; a library user sees only this
            logger.warning("The weights in %s are random test weights from `ganorigin demo-weights`: every answer "
                           "is meaningless.", sources.weights_dir, extra={"test_weights": True})
        attributor, attribution_files = load_attributor(files)
        detector = create_detector(files=files, device=device, precision=precision)
        encoder = create_encoder(files=files, device=device, precision=precision, attribution=attributor.predict_proba,
                                 attribution_files=attribution_files, attribution_encoder=attributor.trained_encoder)
        commfor = create_commfor(files=files, device=device, precision=precision)
        return cls(detector, encoder, attributor, threshold=threshold, device=device, weights=files, align=align,
                   commfor=commfor, commfor_threshold=commfor_threshold)

    def predict(self, image: ImageInput, *, threshold: Optional[float] = None, align: Optional[bool] = None) -> Prediction:
        """Analyse one image (path, bytes, PIL image or numpy array). A path or bytes also get their
        ``provenance`` read (:mod:`ganorigin.provenance`).

        Raises:
            InvalidImageError: the image cannot be read, or is over the limits.
        """
        decoded, source = _read(image)
        return self._analyse([decoded], [source], self._threshold(threshold), self._align(align), provenance=True)[0]

    def predict_batch(
        self,
        images: Iterable[ImageInput],
        *,
        threshold: Optional[float] = None,
        batch_size: int = 8,
        align: Optional[bool] = None,
    ) -> list[Union[Prediction, InvalidImageError]]:
        """Analyse many images, ``batch_size`` at a time, in order.

        An item that cannot be read does not stop the others: its place in the list holds the
        :class:`InvalidImageError`, whose message starts with the item's path (or ``item N``).
        """
        threshold, align = self._threshold(threshold), self._align(align)
        remaining, results = iter(images), []
        while batch := list(itertools.islice(remaining, batch_size)):
            decoded = [_decode(image, len(results) + i) for i, image in enumerate(batch)]  # one batch at a time
            ok = [i for i, item in enumerate(decoded) if not isinstance(item, InvalidImageError)]
            predictions = iter(self._analyse([decoded[i][0] for i in ok], [decoded[i][1] for i in ok], threshold, align,
                                             provenance=True) if ok else [])
            results += [item if isinstance(item, InvalidImageError) else next(predictions) for item in decoded]
        return results

    def predict_video(self, video: VideoInput, *, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES,
                      threshold: Optional[float] = None, batch_size: int = 8, align: Optional[bool] = None,
                      progress: Optional[Callable[[int, int], None]] = None) -> VideoPrediction:
        """Analyse a clip (path, bytes or binary file): the first frame, then ``fps`` frames a second (at
        most ``max_frames``, spread evenly), through :meth:`predict_batch`. ``progress(done, expected)``
        is called after each batch. See :mod:`ganorigin.video`.

        Raises:
            InvalidVideoError: the clip cannot be read, or is over the limits.
        """
        try:
            return analyse_video(self, video, fps=fps, max_frames=max_frames, threshold=threshold,
                                 batch_size=batch_size, align=align, progress=progress)
        except InvalidVideoError as e:
            if type(e) is InvalidVideoError and is_still_image(_head(video)):
                raise InvalidVideoError(IMAGE_NOT_VIDEO) from e
            raise

    def predict_decoded(self, images: Sequence[Image.Image], sources: Sequence[ImageInput], *,
                        threshold: Optional[float] = None, align: Optional[bool] = None) -> list[Prediction]:
        """Analyse images already decoded by the gate elsewhere (e.g. a CPU stage of :mod:`ganorigin.scale`);
        ``sources`` are what each was decoded from (bytes or path, read again for the JPEG tables).
        Provenance is the caller's to add."""
        return self._analyse(list(images), list(sources), self._threshold(threshold), self._align(align))

    def _analyse(self, images: list, sources: list, threshold: float, align: bool,
                 provenance: bool = False) -> list[Prediction]:
        """``images`` decoded from ``sources`` (what the caller gave, or its bytes: read again for the JPEG
        tables and, with ``provenance``, for the provenance of those that are bytes, on this thread while
        the models run on theirs)."""
        detection = self._start("detector", lambda: self.fake_probabilities(images))
        encoding = self._start("encoder", lambda: self._align_and_encode(images, align))  # e4e's lane aligns
        second = self._start("commfor", lambda: self.commfor_probabilities(images)) if self.commfor is not None else None
        degradations = [assess(source, im) for source, im in zip(sources, images)]
        provenances = [read_provenance(source, decoded=im) if provenance and isinstance(source, bytes) else None
                       for source, im in zip(sources, images)]
        fake, (alignments, attributed, parts) = detection.result(), encoding.result()
        features = codes_from_parts(parts)
        other = second.result() if second is not None else [None] * len(images)
        gan = self.attributor.predict_proba(features)
        unknown = self.attributor.reject_unknown(features)
        labels = tuple(self.attributor.labels)
        policy = self.policy
        return [
            Prediction(float(p), threshold, labels, tuple(float(q) for q in row), unknown=bool(u),
                       commfor_probability=None if c is None else float(c), commfor_threshold=self.commfor_threshold,
                       ufd_band=policy.ufd_band, commfor_band=policy.commfor_band, degradation=d,
                       degradation_reasons=policy.degradation_reasons(d), provenance=f, **_alignment_fields(a, im))
            for p, c, row, u, d, f, a, im in zip(fake, other, gan, unknown, degradations, provenances, alignments,
                                                 attributed)
        ]

    def _align_and_encode(self, images: list, align: bool) -> tuple:
        """``(alignments, the images e4e saw, their codes in parts)``: the last batch's style groups go to whichever
        worker is free (:func:`~ganorigin.factory.encode_in_parts`), so neither waits while the other has work."""
        alignments = [align_face(im) if align else None for im in images]
        attributed = [a.image if a is not None and a.used else im for a, im in zip(alignments, images)]
        parts = encode_in_parts(self.encoder, attributed, partial(self._start, "styles"),
                                self._encoder_batch(len(attributed)), split=self.device.type == "cpu")
        return alignments, attributed, parts

    def _start(self, model: str, fn: Callable[[], Any]) -> Future:
        """``fn()`` on ``model``'s worker thread on a CPU fast path, so that CLIP and e4e run side by
        side (see :mod:`ganorigin.accel.workers`); elsewhere right away."""
        if self._workers is not None:
            return self._workers.submit(model, fn)
        done: Future = Future()
        done.set_result(fn())
        return done

    def fake_probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """UFD's P(fake) for decoded RGB images, shape (B,).

        On a GPU all at once; on a CPU one image at a time, since reduced-precision matrix kernels
        would make an image's answer depend on its batch-mates."""
        return detector_scores(self.detector, list(images), batch=len(images) if self.device.type == "cuda" else 1)

    def commfor_probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Community Forensics' P(fake) for decoded RGB images, shape (B,); batched as :meth:`fake_probabilities`."""
        return commfor_scores(self.commfor, list(images), batch=len(images) if self.device.type == "cuda" else 1)

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """e4e W+ codes of decoded RGB images, flattened: shape (B, 18 * 512).

        On a CPU in bf16 up to ``CPU_ENCODER_BATCH`` at once: the packed convolutions give bitwise
        the same codes at any batch size, and each weight is read once per batch. int8 takes one
        image at a time: its inputs are quantised over the whole batch's range."""
        return encode(self.encoder, list(images), batch=self._encoder_batch(len(images)))

    def _encoder_batch(self, images: int) -> int:
        """Images per e4e forward, of ``images``: all on a GPU; on a CPU as :meth:`encode` says."""
        if self.device.type == "cuda":
            return max(1, images)
        return CPU_ENCODER_BATCH if precision_of(self.encoder) == "bf16" else 1

    def _threshold(self, threshold: Optional[float]) -> float:
        return self.threshold if threshold is None else check_threshold(threshold)

    def _align(self, align: Optional[bool]) -> bool:
        """``align`` or the default; warns once per setting that differs from how the attribution
        model's training features were made."""
        align = self.align if align is None else bool(align)
        if align not in self._alignments_checked:
            self._alignments_checked.add(align)
            if warning := alignment_mismatch(self.attributor, align, alignment_available()):
                logger.warning(warning)
        return align


def load_attributor(files: ResolvedWeights) -> tuple[GANAttributor, tuple]:
    """The attribution model (the safe format, else the original pickles) and the files it came from."""
    if files.safe_model is not None:
        return load_attribution_model(files.safe_model), (files.safe_model,)
    return (load_attributor_pickles(files.svm, files.scaler, files.label_encoder),
            (files.svm, files.scaler, files.label_encoder))


def _read(image: ImageInput) -> tuple[Image.Image, Union[bytes, Image.Image, np.ndarray]]:
    """``image`` decoded through the gate, and what it was decoded from: a path or bytes as the file's
    bytes (read once), a PIL image or an array as itself."""
    if isinstance(image, (Image.Image, np.ndarray)):
        return load_image(image), image
    data = read_image_bytes(image)
    try:
        return load_image(data), data
    except InvalidImageError as e:
        if is_video(data[:16]):
            raise InvalidImageError(VIDEO_NOT_IMAGE) from e
        raise


def _head(video: VideoInput) -> bytes:
    """The first bytes of a clip given as a path, bytes or binary file (a file's position is restored); none
    where it cannot be read, or is no regular file (a pipe would block)."""
    try:
        if isinstance(video, (bytes, bytearray, memoryview)):
            return bytes(video[:IMAGE_HEADER_BYTES])
        if isinstance(video, (str, os.PathLike)):
            if not os.path.isfile(video):
                return b""
            with open(video, "rb") as f:
                return f.read(IMAGE_HEADER_BYTES)
        position = video.tell()
        try:
            return video.read(IMAGE_HEADER_BYTES)
        finally:
            video.seek(position)
    except (OSError, AttributeError, ValueError):
        return b""


def _decode(image: ImageInput, index: int) -> Union[tuple[Image.Image, Union[bytes, Image.Image, np.ndarray]],
                                                    InvalidImageError]:
    try:
        return _read(image)
    except InvalidImageError as e:
        name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"item {index + 1}"  # counted from 1
        return type(e)(f"{name}: {e}")


def _alignment_fields(alignment: Optional[AlignmentResult], attributed: Image.Image) -> dict:
    if alignment is None:
        return {"attributed_image": attributed, "alignment_note": "Face alignment was off; the whole image was analysed."}
    return {
        "aligned": alignment.used,
        "faces_found": alignment.faces_found,
        "alignment_note": alignment.reason,
        "attributed_image": attributed,
    }


def check_threshold(threshold) -> float:
    """``threshold`` as a float in [0, 1]; a :class:`ConfigurationError` (a ValueError) with the one message
    every entry point shows."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ConfigurationError(f"The threshold is a probability from 0 to 1; got {threshold}.")
    return value
