"""One model instance for a server: loaded in the background, shared by the web UI and the REST API.

The server starts at once; while weights load (or cannot be had) every request gets a clear
answer saying so. A load has a deadline (``GANORIGIN_LOAD_TIMEOUT`` seconds, default 900), can be
cancelled (:meth:`ModelService.cancel`) and retried (:meth:`ModelService.reload`) without a
restart, and ends with one probe prediction, so a model that loads but cannot answer fails here
rather than on every request. What the service shows a user (errors, steps, weight sources) names
files and settings, never this server's directories.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..errors import GANOriginError, ModelUnavailableError, WeightsFormatError
from ..explain import FrequencyView, HeatMap, frequency_view, gradient_heatmap, occlusion_heatmap
from ..images import ImageInput, load_image
from ..hub import WEIGHTS
from ..hub.registry import filenames
from ..pipeline import GANOrigin
from ..result import Prediction
from ..video import VideoInput, VideoPrediction
from .redact import public_text

logger = logging.getLogger(__name__)
# Every loading step (downloads, checks) is logged at INFO under this logger; the service shows
# the latest one while it loads.
PACKAGE_LOGGER = logging.getLogger("ganorigin")

DEFAULT_LOAD_TIMEOUT_S = 900.0


@dataclass
class _Attempt:
    """One load: when it began, its latest step, and whether it has ended (loaded, failed,
    timed out or cancelled); a late result of an ended attempt is discarded."""

    started_at: float = field(default_factory=time.monotonic)
    ended: threading.Event = field(default_factory=threading.Event)
    step: Optional[str] = None
    deadline: Optional[threading.Timer] = None


class ModelService:
    """Owns the :class:`GANOrigin` of a server process.

    Model calls are serialised by a lock: on a small CPU box one analysis at a time is fastest
    and keeps memory flat; Gradio's queue and the REST threadpool wait their turn.

    Args:
        loader: builds the model (default: weights from the environment).
        load_timeout: seconds a load may take before it is given up (default
            ``GANORIGIN_LOAD_TIMEOUT``, else 900). The loader's thread cannot be stopped; it
            finishes in the background and its result is dropped.
    """

    def __init__(self, loader: Callable[[], GANOrigin] = GANOrigin.from_pretrained, *,
                 load_timeout: Optional[float] = None):
        self._loader = loader
        self.load_timeout = float(os.environ.get("GANORIGIN_LOAD_TIMEOUT", DEFAULT_LOAD_TIMEOUT_S)
                                  if load_timeout is None else load_timeout)
        self._model: Optional[GANOrigin] = None
        self._error: Optional[str] = None
        self._attempt: Optional[_Attempt] = None
        self._ready_after: Optional[float] = None
        self._run_lock = threading.Lock()
        self._state_lock = threading.Lock()

    def start(self) -> "ModelService":
        """Begin loading in a background thread (a no-op while a load runs or once loaded)."""
        with self._state_lock:
            if self._model is not None or self.state == "loading":
                return self
            attempt = self._attempt = _Attempt()
            attempt.deadline = threading.Timer(self.load_timeout, self._give_up, (attempt,))
            attempt.deadline.daemon = True
            self._error = None
        attempt.deadline.start()
        threading.Thread(target=self._load, args=(attempt,), name="ganorigin-load", daemon=True).start()
        return self

    reload = start

    def cancel(self) -> bool:
        """Stop waiting for the load in progress: the state becomes ``"failed"`` and
        :meth:`reload` may start afresh. Returns whether a load was cancelled."""
        attempt = self._attempt
        return attempt is not None and self._end(
            attempt, error="Loading was cancelled; retry loading to try again."
        )

    def _load(self, attempt: _Attempt) -> None:
        steps = _StepRecorder(attempt, threading.get_ident())
        if PACKAGE_LOGGER.level == logging.NOTSET:
            PACKAGE_LOGGER.setLevel(logging.INFO)
        PACKAGE_LOGGER.addHandler(steps)
        try:
            logger.info("Loading the model (deadline %g s, GANORIGIN_LOAD_TIMEOUT)", self.load_timeout)
            model = self._loader()
            _probe(model)
        except GANOriginError as e:
            self._end(attempt, error=str(e))
        except Exception as e:  # a fault of this program, not of the weights: keep the traceback
            logger.exception("Loading the model failed")
            self._end(attempt, error=f"Loading the model failed with an internal error ({type(e).__name__}); "
                                     "the server log has the details.")
        else:
            self._end(attempt, model=model)
        finally:
            PACKAGE_LOGGER.removeHandler(steps)

    def _give_up(self, attempt: _Attempt) -> None:
        last = f" The last step was: {attempt.step}." if attempt.step else ""
        self._end(attempt, error=(
            f"Loading the model did not finish within {self.load_timeout:g} s (GANORIGIN_LOAD_TIMEOUT).{last} "
            "The network or the Hub may be too slow: retry loading, or provide the weights in a local folder "
            "(GANORIGIN_WEIGHTS_DIR)."
        ))

    def _end(self, attempt: _Attempt, *, model: Optional[GANOrigin] = None, error: Optional[str] = None) -> bool:
        """Record the outcome of ``attempt`` unless it has already ended; returns whether it was recorded."""
        with self._state_lock:
            if attempt.ended.is_set():
                if model is not None:
                    logger.info("A load that had been cancelled or timed out has finished; its model is dropped.")
                return False
            attempt.deadline.cancel()
            seconds = time.monotonic() - attempt.started_at
            if model is not None:
                self._model, self._ready_after = model, seconds
                logger.info("Model ready in %.1f s (device %s)", seconds, model.device)
            else:
                self._error = public_text(error)
                logger.error("The model could not be loaded (after %.1f s):\n%s", seconds, error)
            attempt.ended.set()
        return True

    @property
    def step(self) -> Optional[str]:
        """While loading: what is happening now, e.g. "Downloading e4e_ffhq_encode.pt from Hub repo …"."""
        attempt = self._attempt
        if attempt is None or attempt.step is None or self.state != "loading":
            return None
        return public_text(attempt.step)

    @property
    def state(self) -> str:
        """``"ready"``, ``"loading"`` or ``"failed"`` (which includes timed out and cancelled)."""
        if self._model is not None:
            return "ready"
        attempt = self._attempt
        return "loading" if attempt is not None and not attempt.ended.is_set() else "failed"

    @property
    def error(self) -> Optional[str]:
        """Why the last load failed, with no server path in it."""
        return self._error

    def wait(self, timeout: Optional[float] = None) -> str:
        """Wait for the current load to end; returns the state."""
        attempt = self._attempt
        if attempt is not None:
            attempt.ended.wait(timeout)
        return self.state

    @property
    def model(self) -> GANOrigin:
        if self._model is None:
            if self.state == "loading":
                elapsed = time.monotonic() - self._attempt.started_at
                raise ModelUnavailableError(f"The model is still loading ({elapsed:.0f} s so far); try again shortly.")
            raise ModelUnavailableError(f"The model could not be loaded.\n{self._error}")
        return self._model

    def predict(self, image: ImageInput, threshold: Optional[float] = None, align: Optional[bool] = None) -> Prediction:
        model = self.model
        with self._run_lock:
            return model.predict(image, threshold=threshold, align=align)

    def predict_video(self, video: VideoInput, threshold: Optional[float] = None,
                      progress: Optional[Callable[[int, int], None]] = None) -> VideoPrediction:
        """A clip's analysis (:meth:`GANOrigin.predict_video`), holding the model for the whole clip."""
        model = self.model
        with self._run_lock:
            return model.predict_video(video, threshold=threshold, progress=progress)

    def predict_batch(self, images: list, threshold: Optional[float] = None) -> list:
        """:meth:`GANOrigin.predict_batch` on ``images`` in one turn; keep batches small so that single
        analyses do not wait long."""
        model = self.model
        with self._run_lock:
            return model.predict_batch(images, threshold=threshold, batch_size=len(images) or 1)

    def explain(self, image: ImageInput) -> tuple[HeatMap, FrequencyView]:
        """The heat map (occlusion on a GPU, input x gradient on a CPU) and the frequency view."""
        model = self.model
        decoded = load_image(image)
        with self._run_lock:
            if model.device.type == "cuda":
                heat = occlusion_heatmap(model.detector, decoded)
            else:
                heat = gradient_heatmap(model.detector, decoded)
        return heat, frequency_view(decoded)

    def health(self) -> dict:
        """What ``GET /health`` reports: state, the loading step, weight sources, versions."""
        import gradio
        import open_clip
        import sklearn
        import torch

        from .. import __version__

        model = self._model
        return {
            "status": self.state,
            "weights_loaded": model is not None,
            "step": self.step,
            "error": self._error,
            "load_seconds": None if self._ready_after is None else round(self._ready_after, 2),
            "weights": ({name: public_text(origin) for name, origin in model.weights.origins.items()}
                        if model is not None and model.weights else {}),
            "test_weights": bool(model is not None and model.weights and model.weights.test_weights),
            "threshold": model.threshold if model is not None else None,
            "device": str(model.device) if model is not None else None,
            "versions": {
                "ganorigin": __version__,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "open_clip": open_clip.__version__,
                "scikit-learn": sklearn.__version__,
                "gradio": gradio.__version__,
            },
        }


def _probe(model: GANOrigin) -> None:
    """One fixed image through the whole model (``predict`` only); weights that load but give NaN, or
    make it raise, fail here.

    Raises:
        WeightsFormatError: naming the files most likely at fault.
    """
    logger.info("Checking the model on a test image")
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    try:
        result = model.predict(image)  # as the model will be used: no alignment warning it would not give
    except GANOriginError as e:
        raise WeightsFormatError(f"The model loaded but failed its check on a test image: {e}") from e
    except Exception as e:
        logger.exception("The model failed on the test image")
        raise WeightsFormatError(
            f"The model loaded but failed its check on a test image ({type(e).__name__}: {e}). A weight file is "
            "probably damaged or does not belong with the others."
        ) from e
    # NaN W+ codes are refused by the attributor itself; NaN from the detector would pass unnoticed.
    p = result.fake_probability
    if not (np.isfinite(p) and 0.0 <= p <= 1.0):
        raise WeightsFormatError(
            f"The detector gave P(fake) = {p} on a test image: the CLIP weights ({' or '.join(filenames(WEIGHTS['clip.vit_large_patch14_openai']))}) or the "
            f"UFD head ({WEIGHTS['ufd.fc'].filename}) hold NaN or infinite values. Replace them."
        )
    c = result.commfor_probability
    if c is not None and not (np.isfinite(c) and 0.0 <= c <= 1.0):
        raise WeightsFormatError(
            f"The second detector gave P(fake) = {c} on a test image: its weights "
            f"({WEIGHTS['commfor.vit_small_patch16_384'].filename}) hold NaN or infinite values. Replace them."
        )


class _StepRecorder(logging.Handler):
    """Keeps an attempt's latest log message from its own loading thread: the step shown while loading."""

    def __init__(self, attempt: _Attempt, thread_id: int):
        super().__init__(logging.INFO)
        self.attempt, self.thread_id = attempt, thread_id

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread_id:
            self.attempt.step = record.getMessage()
