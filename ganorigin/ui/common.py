"""What every tab of the page shares: user-facing errors, reading an upload, the ZeroGPU decorator."""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Callable

import gradio as gr

from ..errors import GANOriginError, InvalidImageError, ModelUnavailableError
from ..pipeline import check_threshold
from ..result import DEFAULT_THRESHOLD
from ..serving.redact import unavailable_text
from ..serving.service import ModelService
from ..serving.uploads import read_upload, reject_upload
from ..video import is_video

try:  # ZeroGPU Spaces: run analyses on a borrowed GPU; elsewhere a no-op.
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        return fn


logger = logging.getLogger("ganorigin.app")
NO_IMAGE = "Upload, paste or capture a face image first."
# Read on the page and by API clients alike: the tab first, the endpoint in a word.
VIDEO_NOT_IMAGE = "This file is a video, not an image: analyse it in the Video tab (or the API's /predict_video)."
IMAGE_NOT_VIDEO = "This file is an image, not a video: analyse it in the Image tab (or the API's /predict)."


def api_text(label: str, example: str, default: str | None = None) -> gr.Textbox:
    """The hidden text input of an API endpoint, documented with ``example`` (Gradio's own is "Hello!!");
    with a ``default``, clients may leave it out. Not a subclass: Gradio writes a ``.pyi`` file beside the
    module of every component class."""
    box = gr.Textbox(default, visible=False, label=label)
    box.example_payload = box.example_value = lambda: example
    return box


def user_threshold(value, default: float = DEFAULT_THRESHOLD) -> float:
    """A threshold sent by the page or an API client (a slider's own checks do not run for API calls);
    ``None``: ``default`` (UFD's; Community Forensics' thresholds pass theirs)."""
    if value is None:
        return default
    try:
        return check_threshold(value)
    except ValueError as e:
        raise user_error(str(e), "Invalid threshold") from e


def markdown_text(text: str) -> str:
    """``text`` to show as it is inside Markdown (a trained model's labels are its author's words): every
    character Markdown or HTML would read as markup is escaped."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~&-])", r"\\\1", text)


def threshold_in_range(value, default: float) -> tuple[float, bool]:
    """A threshold typed on the page, put back in 0..1 (``default`` when not a number) with a warning,
    and whether that changed it (the slider's box would otherwise keep what was typed)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    corrected = default if number != number else min(max(number, 0.0), 1.0)
    if corrected != number:
        gr.Warning(f"The threshold is a probability from 0 to 1; it was set to {corrected:g}.")
    return corrected, corrected != number


def user_error(message: str, title: str) -> gr.Error:
    """A message for the person using the page or the API; the log gets one line, no traceback."""
    logger.info("%s: %s", title, message.splitlines()[0])
    return gr.Error(message, title=title, print_exception=False)


def drop_input_and_settle(view, service: ModelService) -> Callable[[], tuple]:
    """After a failed analysis or explanation: the input emptied (kept while ``service`` has no model: the input
    was not what failed, and it can be analysed once *Retry loading* has loaded one), and the view that showed
    the progress drawn again as ``view``, so that Gradio's "Error" badge does not stay over it once the message
    has gone."""
    return lambda: (None if service.state == "ready" else gr.skip(), view)


def with_upload(file: dict | None, task, missing: str = NO_IMAGE):
    """``task(bytes)`` on the uploaded ``file``. A file that is not one we can read is deleted at
    once; expected failures become messages for the person."""
    if file is None:
        raise user_error(missing, "No image")
    with user_errors():
        data = read_upload(file)
        try:
            return task(data)
        except InvalidImageError as e:
            reject_upload(file, str(e))
            if is_video(data[:16]):
                raise InvalidImageError(VIDEO_NOT_IMAGE) from e
            raise


@contextmanager
def user_errors(invalid: str = "This file cannot be analysed"):
    """Expected failures inside become messages for the person: an image that cannot be read
    (titled ``invalid``), a model that is not available."""
    try:
        yield
    except InvalidImageError as e:
        raise user_error(str(e), invalid) from e
    except GANOriginError as e:
        raise model_error(e) from e


def model_error(error: GANOriginError) -> gr.Error:
    """A model that cannot analyse, in the words REST uses too (why it is not available is on the page's banner
    and in /health, for the operator)."""
    text = unavailable_text(error) if isinstance(error, ModelUnavailableError) else str(error)
    return user_error(text, "Model unavailable")
