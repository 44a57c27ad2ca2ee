"""The "This verdict is wrong" form under an analysis: what the image really is, a note, consent to keep it.

Reports go to :class:`ganorigin.feedback.FeedbackStore` (a local folder, or a Space's dataset repo).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import gradio as gr

from ..feedback import DONT_KNOW, MAX_NOTE_CHARS, OTHER_GENERATOR, REAL, FeedbackStore
from ..models import display_name
from ..models.attributor import DISPLAY_NAMES
from ..pipeline import check_threshold
from ..result import Prediction
from ..serving.uploads import read_upload
from .common import user_error

MODEL_KEYS = ("weights", "test_weights", "versions", "device")
CONSENT = ("Keep this image so that future versions are tested on it (without this, only its fingerprint, the "
           "sha256, and the verdict are stored)")


def choices(labels=()) -> list[tuple[str, str]]:
    """What the image can really be: real, one of the model's GANs (the original three until an analysis
    says which the model knows), another generator, or not known."""
    gans = dict.fromkeys(map(display_name, labels)) or dict.fromkeys(DISPLAY_NAMES.values())
    return ([("A real photo", REAL)] + [(name, name) for name in gans]
            + [("Another generator (diffusion or other)", OTHER_GENERATOR), ("I don't know", DONT_KNOW)])


def _label(choice: str, prediction: Prediction) -> str:
    """The model's own label for a GAN chosen by its display name; other choices as they are."""
    return next((label for label in prediction.labels if display_name(label) == choice), choice)


def feedback_form(image: gr.Image, result: gr.State, threshold: gr.Slider, health: Callable[[], dict],
                  store: Optional[FeedbackStore] = None, commfor_threshold: Optional[gr.Slider] = None) -> gr.Accordion:
    """The form (a closed panel under the results), hidden and reset with each new image; returned, for the
    page to show it once an analysis has succeeded (:func:`feedback_shown`).

    Args:
        image: the analysed upload (its bytes give the sha256 and, with consent, the kept image).
        result: the page's last :class:`~ganorigin.result.Prediction`.
        threshold: the threshold the shown verdict uses (UFD's); ``commfor_threshold`` Community Forensics'.
        health: the server's health report (``ModelService.health``): its weight sources, package versions
            and device are recorded as the model's versions.
        store: where reports go (default: :meth:`FeedbackStore.from_env`).
    """
    store = store or FeedbackStore.from_env()
    with gr.Accordion("This verdict is wrong", open=False, visible=False, elem_id="feedback-form") as form:
        what = gr.Radio(choices(), label="What is this image really?", elem_id="feedback-what")
        note = gr.Textbox(label="Note (optional)", lines=2, max_lines=6, max_length=MAX_NOTE_CHARS,
                          elem_id="feedback-note")
        keep = gr.Checkbox(False, label=CONSENT, elem_id="feedback-consent")
        send = gr.Button("Send feedback", variant="primary", size="sm", elem_id="feedback-send")
    thanks = gr.Markdown(elem_id="feedback-thanks")

    def reset():
        return gr.Accordion(visible=False, open=False), gr.Radio(value=None), "", False, ""

    def submit(file: Optional[dict], prediction: Optional[Prediction], label: Optional[str], text: str, consent: bool,
               threshold_value: float, commfor_value: Optional[float] = None):
        if prediction is None or file is None:
            raise user_error("Analyse an image first, then say what it really is.", "Nothing to report")
        if not label:
            raise user_error("Choose what the image really is (or \"I don't know\").", "Feedback incomplete")
        shown = replace(prediction, threshold=_or(threshold_value, prediction.threshold),
                        commfor_threshold=_or(commfor_value, prediction.commfor_threshold))
        model = {key: value for key, value in health().items() if key in MODEL_KEYS}
        try:
            store.add(read_upload(file), shown, _label(label, prediction), note=text, keep_image=bool(consent), model=model)
        except ValueError as e:
            raise user_error(str(e), "Feedback incomplete") from e
        kept = "The image was kept." if consent else "The image itself was not kept."
        # The form goes until the next analysis: pressing Send again would store the same report twice.
        return gr.Accordion(visible=False, open=False), f"Thank you: your report was stored. {kept}"

    # A new image (or none) resets the form; the State itself is not watched (its value need not be hashable).
    image.change(reset, None, [form, what, note, keep, thanks], api_visibility="private", queue=False)
    form.expand(lambda prediction: gr.Radio(choices(prediction.labels if prediction else ())), result, what,
                api_visibility="private", queue=False, preprocess=False)
    # preprocess=False: the handler gets the uploaded file itself, which Gradio has not opened.
    thresholds = [threshold] + ([commfor_threshold] if commfor_threshold is not None else [])
    send.click(submit, [image, result, what, note, keep, *thresholds], [form, thanks], api_visibility="private",
               preprocess=False)
    return form


def _or(value, default: float) -> float:
    """A threshold from the page as the verdict on screen uses it; ``default`` where it is not one."""
    try:
        return check_threshold(value)
    except ValueError:
        return default


def feedback_shown() -> gr.Accordion:
    """The form's update once the page shows an analysis: visible, closed."""
    return gr.Accordion(visible=True, open=False)
