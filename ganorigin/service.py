"""One model instance for a server: loaded in the background, shared by the web UI and the REST API.

The server starts at once; while weights load (or cannot be had) every request gets a clear
answer saying so, and :meth:`ModelService.reload` tries again without a restart.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from typing import Callable, Optional

from .errors import GANOriginError
from .explain import FrequencyView, HeatMap, frequency_view, gradient_heatmap, occlusion_heatmap
from .images import ImageInput, load_image
from .errors import ModelUnavailableError
from .pipeline import GANOrigin
from .result import Prediction


class ModelService:
    """Owns the :class:`GANOrigin` of a server process.

    Model calls are serialised by a lock: on a small CPU box one analysis at a time is fastest
    and keeps memory flat; Gradio's queue and the REST threadpool wait their turn.
    """

    def __init__(self, loader: Callable[[], GANOrigin] = GANOrigin.from_pretrained):
        self._loader = loader
        self._model: Optional[GANOrigin] = None
        self._error: Optional[str] = None
        self._loading = threading.Event()
        self._started_at = time.monotonic()
        self._ready_after: Optional[float] = None
        self._step: Optional[_LastMessage] = None
        self._run_lock = threading.Lock()
        self._state_lock = threading.Lock()

    def start(self) -> "ModelService":
        """Begin loading in a background thread (a no-op while a load is running)."""
        with self._state_lock:
            if self._loading.is_set() or self._model is not None:
                return self
            self._loading.set()
            self._error = None
            self._started_at = time.monotonic()
        threading.Thread(target=self._load, name="ganorigin-load", daemon=True).start()
        return self

    reload = start

    def _load(self) -> None:
        downloads = _LastMessage()
        weights_logger = logging.getLogger("ganorigin.weights")
        weights_logger.addHandler(downloads)
        weights_logger.setLevel(logging.INFO)
        self._step = downloads
        try:
            model = self._loader()
            with self._state_lock:
                self._model, self._ready_after = model, time.monotonic() - self._started_at
        except GANOriginError as e:
            with self._state_lock:
                self._error = str(e)
        finally:
            weights_logger.removeHandler(downloads)
            self._loading.clear()

    @property
    def step(self) -> Optional[str]:
        """While loading: what is happening now, e.g. "Downloading e4e_ffhq_encode.pt from Hub repo …"."""
        return self._step.message if self._step is not None and self.state == "loading" else None

    @property
    def state(self) -> str:
        """``"ready"``, ``"loading"`` or ``"failed"``."""
        if self._model is not None:
            return "ready"
        return "loading" if self._loading.is_set() else "failed"

    @property
    def error(self) -> Optional[str]:
        return self._error

    def wait(self, timeout: Optional[float] = None) -> str:
        """Wait for the current load to finish; returns the state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._loading.is_set() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.05)
        return self.state

    @property
    def model(self) -> GANOrigin:
        if self._model is None:
            if self.state == "loading":
                elapsed = time.monotonic() - self._started_at
                raise ModelUnavailableError(f"The model is still loading ({elapsed:.0f} s so far); try again shortly.")
            raise ModelUnavailableError(f"The model could not be loaded.\n{self._error}")
        return self._model

    def predict(self, image: ImageInput, threshold: Optional[float] = None, align: Optional[bool] = None) -> Prediction:
        model = self.model
        with self._run_lock:
            return model.predict(image, threshold=threshold, align=align)

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
        """What ``GET /health`` reports: state, weight sources, versions."""
        import gradio
        import open_clip
        import sklearn
        import torch

        from . import __version__

        model = self._model
        return {
            "status": self.state,
            "weights_loaded": model is not None,
            "error": self._error,
            "load_seconds": None if self._ready_after is None else round(self._ready_after, 2),
            "weights": dict(model.weights.origins) if model is not None and model.weights else {},
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


class _LastMessage(logging.Handler):
    """Keeps the last log message: the download step shown while the model loads."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.message: Optional[str] = None

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()
