"""An image URL on the page: a box that fetches the image into the tab's image input, and the
``/predict_url`` API for gradio_client. Fetching follows :mod:`ganorigin.serving.urls`."""

from __future__ import annotations

from typing import Callable

import gradio as gr

from ..examples import EXAMPLES
from ..images import image_extension, load_image
from ..result import DEFAULT_THRESHOLD, Prediction
from ..serving.urls import fetch_image_bytes
from .common import api_text, user_error, user_errors, user_threshold
from .files import output_file

URL_PLACEHOLDER = "https://example.org/face.jpg"
UNUSABLE = "This address cannot be analysed"


def fetch_url(url: str) -> tuple[bytes, str]:
    """The image at ``url`` and a file name for it, after the decoding gate accepted its bytes.

    Raises:
        gradio.Error: the address is refused, the fetch failed, or the bytes are not an image we read.
    """
    if not url or not url.strip():
        raise user_error("Paste the address of an image first.", "No address")
    with user_errors(UNUSABLE):
        data = fetch_image_bytes(url)
        load_image(data)
    return data, f"image-from-url.{image_extension(data)}"


def fetch_into_image(url: str) -> str:
    """The image at ``url`` as a file for the image input, with its original bytes (their metadata
    and JPEG tables matter to the analysis)."""
    data, name = fetch_url(url)
    return output_file(name, data)


def url_box(image: gr.Image, predict: Callable[[bytes, float], Prediction]) -> gr.Textbox:
    """A URL box whose *Fetch* button (or Enter) loads an image into ``image``, plus the ``/predict_url``
    API (the original /predict JSON for the image at a URL)."""
    box = gr.Textbox(label="…or an image URL", placeholder=URL_PLACEHOLDER, elem_id="image-url", max_lines=1,
                     submit_btn="Fetch")
    box.submit(fetch_into_image, box, image, api_visibility="private"
               ).failure(lambda: None, outputs=image, api_visibility="private", queue=False)  # no "Error" badge left

    def predict_url(url: str, threshold: float = DEFAULT_THRESHOLD) -> dict:
        """The original /predict JSON for the image at the given http(s) URL."""
        threshold = user_threshold(threshold)
        data, _ = fetch_url(url)
        with user_errors(UNUSABLE):
            return predict(data, threshold).to_dict()

    api_url = api_text("url", EXAMPLES[1].url)
    api_threshold = gr.Number(DEFAULT_THRESHOLD, visible=False, label="threshold")
    api_json = gr.JSON(visible=False, label="prediction")
    api_url.change(predict_url, [api_url, api_threshold], api_json, api_name="predict_url", preprocess=False)
    return box
