"""The "This verdict is wrong" form under an analysis: what the image really is, a note, consent to keep it.

Reports go to :class:`ganorigin.feedback.FeedbackStore` (a local folder, or a Space's dataset repo).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import gradio as gr

from ..feedback import DONT_KNOW, OTHER_GENERATOR, REAL, FeedbackStore
from ..models import display_name
from ..pipeline import check_threshold
from ..result import Prediction
from ..serving.uploads import read_upload
from .common import user_error

MODEL_KEYS = ("weights", "versions", "device")
CONSENT = ("Keep this image so that future versions are tested on it (without this, only its fingerprint, the "
           "sha256, and the verdict are stored)")


def choices(labels) -> list[tuple[str, str]]:
    """What the image can really be: real, one of the known GANs, another generator, or not known."""
    return ([("A real photo", REAL)] + [(display_name(label), label) for label in labels]
            + [("Another generator (diffusion or other)", OTHER_GENERATOR), ("I don't know", DONT_KNOW)])


def feedback_form(image: gr.Image, result: gr.State, threshold: gr.Slider, health: Callable[[], dict],
                  store: Optional[FeedbackStore] = None) -> None:
    """The button and form, shown once ``result`` holds an analysis of ``image`` and reset with each new one.

    Args:
        image: the analysed upload (its bytes give the sha256 and, with consent, the kept image).
        result: the page's last :class:`~ganorigin.result.Prediction`.
        threshold: the threshold the shown verdict uses.
        health: the server's health report (``ModelService.health``): its weight sources, package versions
            and device are recorded as the model's versions.
        store: where reports go (default: :meth:`FeedbackStore.from_env`).
    """
    store = store or FeedbackStore.from_env()
    wrong = gr.Button("This verdict is wrong", size="sm", visible=False, elem_id="verdict-wrong")
    with gr.Group(visible=False, elem_id="feedback-form") as form:
        what = gr.Radio(choices(()), label="What is this image really?", elem_id="feedback-what")
        note = gr.Textbox(label="Note (optional)", lines=2, max_lines=6, max_length=2000, elem_id="feedback-note")
        keep = gr.Checkbox(False, label=CONSENT, elem_id="feedback-consent")
        send = gr.Button("Send feedback", variant="primary", size="sm", elem_id="feedback-send")
    thanks = gr.Markdown(elem_id="feedback-thanks")

    def reset(prediction: Optional[Prediction]):
        labels = prediction.labels if prediction is not None else ()
        return (gr.Button(visible=prediction is not None), gr.Group(visible=False),
                gr.Radio(choices(labels), value=None), "", False, "")

    def submit(file: Optional[dict], prediction: Optional[Prediction], label: Optional[str], text: str, consent: bool,
               threshold_value: float):
        if prediction is None or file is None:
            raise user_error("Analyse an image first, then say what it really is.", "Nothing to report")
        if not label:
            raise user_error("Choose what the image really is (or \"I don't know\").", "Feedback incomplete")
        try:
            shown = replace(prediction, threshold=check_threshold(threshold_value))
        except ValueError:
            shown = prediction
        model = {key: value for key, value in health().items() if key in MODEL_KEYS}
        try:
            store.add(read_upload(file), shown, label, note=text, keep_image=bool(consent), model=model)
        except ValueError as e:
            raise user_error(str(e), "Feedback incomplete") from e
        kept = "The image was kept." if consent else "The image itself was not kept."
        return gr.Group(visible=False), gr.Button(visible=False), f"Thank you: your report was stored. {kept}"

    result.change(reset, result, [wrong, form, what, note, keep, thanks], api_visibility="private", queue=False)
    wrong.click(lambda: (gr.Group(visible=True), ""), outputs=[form, thanks], api_visibility="private", queue=False)
    # preprocess=False: the handler gets the uploaded file itself, which Gradio has not opened.
    send.click(submit, [image, result, what, note, keep, threshold], [form, wrong, thanks], api_visibility="private",
               preprocess=False)
