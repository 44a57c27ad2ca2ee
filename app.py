"""GANOrigin web app: Gradio UI, the `predict` API for gradio_client, and the original REST API.

Run ``python app.py`` (host/port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT); a Hugging Face
Space runs this same file. All model logic lives in the ``ganorigin`` package. Gradio never
decodes an upload: the events take the uploaded file as it is (``preprocess=False``) and its
bytes go through ``ganorigin.load_image`` like every other entry point.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace

import gradio as gr
import pandas as pd
import uvicorn
from PIL import Image, ImageOps

from ganorigin import DEFAULT_THRESHOLD, Prediction
from ganorigin.verdict import COMMFOR_THRESHOLD
from ganorigin.align import alignment_available
from ganorigin.examples import EXAMPLES, fetch_examples
from ganorigin.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, load_image
from ganorigin.models import display_name
from ganorigin.serving.rest import create_rest_app
from ganorigin.serving.service import ModelService
from ganorigin.serving.uploads import MAX_UPLOAD_BYTES, UploadsOnlyBlocks, mount
from ganorigin.ui.batch import batch_tab
from ganorigin.ui.cards import CARD_CSS, EMPTY_CARD, provenance_panel, verdict_card
from ganorigin.ui.common import (drop_input_and_settle, gpu, markdown_text, threshold_in_range, user_threshold,
                                 with_upload)
from ganorigin.ui.feedback import feedback_form, feedback_shown
from ganorigin.ui.files import LIFETIME_S
from ganorigin.ui.image_input import IMAGE_PAGE_JS
from ganorigin.ui.url_input import url_box
from ganorigin.ui.video import VIDEO_PAGE_JS, video_tab

LOG_LEVEL = os.environ.get("GANORIGIN_LOG_LEVEL", "info").upper()
logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
logging.getLogger("ganorigin").setLevel(LOG_LEVEL)
logger = logging.getLogger("ganorigin.app")

CLASS_ORDER = ["Real", "ProGAN", "StyleGAN2", "StyleGAN3"]
QUEUE_SIZE = int(os.environ.get("GANORIGIN_QUEUE_SIZE", 64))
CONCURRENCY = int(os.environ.get("GANORIGIN_CONCURRENCY", 1))
CROP_DISPLAY_SIDE = 256  # e4e's input size: what attribution saw, at the resolution it saw it
HEAT_DISPLAY_SIDE = 448  # the detector's 224 px crop, shown at twice its size


def report_load() -> None:
    """Log how the model load ends: ready in N s, or what is missing and how to provide it."""
    if service.wait() == "ready":
        health = service.health()
        logger.info("Model ready on %s (loaded in %s s).", health["device"], health["load_seconds"])
    else:
        logger.error("The model could not be loaded; the app runs, but every analysis fails until it can.\n%s\n"
                     "Provide the weights, then press 'Retry loading' on the page.", service.error)


logger.info("Loading the model (weights from GANORIGIN_WEIGHTS_DIR, the Hugging Face cache or the Hub)…")
service = ModelService().start()
threading.Thread(target=report_load, name="ganorigin-load-report", daemon=True).start()
examples = fetch_examples()

HOW_IT_WORKS = f"""
**Detect.** [UniversalFakeDetect](https://arxiv.org/abs/2302.10174) looks at the centre 224×224 pixels at
native resolution with a frozen OpenAI CLIP ViT-L/14 and one linear layer, giving the probability that the image
is GAN-generated. An image is called GAN-generated when that probability reaches the threshold
({DEFAULT_THRESHOLD} by default, as in the original GANOrigin).

**Attribute.** The [e4e encoder](https://arxiv.org/abs/2102.02766) projects the face into StyleGAN2's W+
latent space (18×512); a linear SVM over that latent names the GAN: ProGAN, StyleGAN2 or StyleGAN3.
The chart shows P(real) and P(fake)·P(GAN | fake), so the bars sum to one.

**Align.** e4e was trained on FFHQ-aligned faces, so the largest face is found (dlib, 68 landmarks) and
cropped the FFHQ way before attribution; with no face found the whole image is used, and the page says so.

**Why.** On request, a heat map shows which regions of the detector's centre crop push the fake probability
up, and a frequency view shows the spectrum of the image's fine-detail residual, where GAN up-sampling leaves
periodic peaks.

**Limitations.** Only these three GANs are known: with the original weights, a face from any other generator
(diffusion models, other GANs) is still given one of the three names; models trained with `ganorigin train`
can answer "Unknown GAN" instead. Results on non-face images, heavy JPEG compression,
screenshots or resized images are unreliable. A verdict is evidence, not proof.
Limits: {MAX_IMAGE_BYTES / 2**20:g} MiB, {MAX_IMAGE_PIXELS / 1e6:g} megapixels per image.
"""

CSS = CARD_CSS + """
#status {font-size: 0.92em;}
#status pre, #status code {white-space: pre-wrap; overflow-wrap: anywhere;}
/* Gradio sizes the plot to the whole block and the label pushes its x axis out of view: let the
   block grow by the label's height instead. */
#class-chart {height: auto !important;}
#class-chart .vega-embed {height: 240px !important;}
#attributed-crop .icon-button-wrapper {display: none;}  /* no buttons: nothing may cover the crop */
/* On a phone the timeline's legend would run off its one row: the timeline's label names the colours. */
@media (max-width: 520px) {#video-timeline .role-legend {display: none;}}
.heat-legend {font-size: 0.85em; color: #475467;}
.heat-legend .bar {height: 12px; border-radius: 6px; border: 1px solid #d0d5dd;
  background: linear-gradient(to right, #0000ff, #ffffff, #ff0000);}
.heat-legend .ends {display: flex; justify-content: space-between; gap: 8px;}
#face-image .no-preview {position: absolute; inset: 0; display: flex; align-items: center; justify-content: center;
  padding: 16px; text-align: center; color: #475467;}
"""
PAGE_JS = f"() => {{ ({VIDEO_PAGE_JS})(); ({IMAGE_PAGE_JS})(); }}"
HEAT_LEGEND = ("<div class='heat-legend'><div>Each region pushes the verdict towards</div><div class='bar'></div>"
               "<div class='ends'><span><b>real</b></span><span><b>GAN-generated</b></span></div></div>")


def status_text() -> str:
    state = service.state
    if state == "ready":
        h = service.health()
        ready = f"**Model ready** on `{h['device']}` (loaded in {h['load_seconds']} s)."
        if h["test_weights"]:
            ready += ("\n\n⚠️ **Test weights.** These are random weights from `ganorigin demo-weights`: every verdict "
                      "on this page is meaningless. Remove GANORIGIN_WEIGHTS_DIR to use the real weights.")
        return ready
    if state == "loading":
        step = f" {service.step}…" if service.step else ""
        return (f"**Loading the model…**{step} The first launch downloads about 2 GB of weights; "
                "this page updates by itself.")
    return (
        "**The model is not available.** The app is running, but analyses will fail until the weights can be "
        "loaded. Provide them, then press *Retry loading*.\n\n```\n" + (service.error or "") + "\n```"
    )


def refresh_status():
    loading = service.state == "loading"
    return (status_text(), gr.Timer(active=loading), gr.Button(visible=service.state == "failed"),
            gr.Button(visible=loading))


def cancel_loading():
    service.cancel()
    return refresh_status()


def retry_loading():
    service.reload()
    threading.Thread(target=report_load, name="ganorigin-load-report", daemon=True).start()
    return refresh_status()


@gpu
def _predict(data: bytes, threshold: float, align: bool | None = None) -> Prediction:
    return service.predict(data, threshold, align)


@gpu
def _explain(data: bytes):
    return service.explain(data)


def predict_api(file: dict | None, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """The original /predict JSON for one image."""
    threshold = user_threshold(threshold)
    return with_upload(file, lambda data: _predict(data, threshold).to_dict(), missing="No image uploaded")


def predict_extended_api(file: dict | None, threshold: float = DEFAULT_THRESHOLD,
                         commfor_threshold: float = COMMFOR_THRESHOLD) -> dict:
    """The extended JSON: the original keys plus both detectors, the overall verdict, the
    degradation gate, alignment and provenance."""
    threshold, commfor_threshold = user_threshold(threshold), user_threshold(commfor_threshold, COMMFOR_THRESHOLD)
    return with_upload(file, lambda data: replace(_predict(data, threshold), commfor_threshold=commfor_threshold)
                       .to_dict(extended=True), missing="No image uploaded")


def _attribution_line(result: Prediction) -> str:
    share = max(result.probabilities)
    closest = markdown_text(display_name(result.attribution_label))
    attribution = markdown_text(result.attribution)
    if result.verdict_by == ("commfor",):
        line = (f"**Not one of the known GANs** (diffusion or other): only the any-generator detector is confident "
                f"(closest known GAN: {closest}, {share:.0%}).")
    elif result.unknown:
        line = f"**Unknown GAN**: unlike the three known GANs (closest: {closest}, {share:.0%})."
    elif result.is_fake:
        line = f"Attributed to **{attribution}** ({share:.0%} among the three known GANs)."
    else:
        line = f"Closest GAN if it were fake: {attribution} ({share:.0%})."
    if result.faces_found is not None:
        line += f"  \n*{result.alignment_note}*"
    return line


def _attribution_title(result: Prediction) -> str:
    if result.verdict_by == ("commfor",) or (result.is_fake and result.unknown):
        return "Closest known GAN"  # AI-generated, by no known GAN
    return "Attributed GAN" if result.is_fake else "Closest GAN (if it were fake)"


def _chart_caption(result: Prediction) -> str:
    if result.verdict_by == ("commfor",):
        return (f"Only the any-generator detector is confident (P {result.commfor_probability:.3f}). Bars: P(real), "
                "the known GANs' share and the other generators' share of it (the GAN detector decides the split); "
                "they sum to 1.")
    verdict = "at or above" if result.is_fake else "below"
    return (f"P(fake) {result.fake_probability:.3f} is {verdict} the threshold {result.threshold:.2f}. "
            "Bars: P(real) and P(fake) × P(GAN | fake); they sum to 1.")


def _result_views(result: Prediction) -> tuple:
    """What the page shows for ``result``: card, attribution line, per-GAN scores, chart, provenance, JSON."""
    shares = result.class_probabilities
    chart = pd.DataFrame({"class": list(shares), "probability": list(shares.values())})
    return (
        verdict_card(result),
        _attribution_line(result),
        gr.Label(result.attribution_probabilities, label=_attribution_title(result)),
        gr.BarPlot(chart, caption=_chart_caption(result), sort=list(shares)),
        provenance_panel(result),
        result.to_dict(),
    )


def analyse(image: dict | None, threshold: float, align: bool | None, commfor_threshold: float = COMMFOR_THRESHOLD):
    """Verdict, attribution, chart, provenance, the crop attribution saw and the original JSON for one image."""
    threshold, commfor_threshold = user_threshold(threshold), user_threshold(commfor_threshold, COMMFOR_THRESHOLD)
    result = with_upload(image, lambda data: _predict(data, threshold, None if align is None else bool(align)))
    result = replace(result, commfor_threshold=commfor_threshold)
    crop = result.attributed_image
    if crop is not None:
        crop = ImageOps.contain(crop, (CROP_DISPLAY_SIDE, CROP_DISPLAY_SIDE))
    # The page keeps the result to re-derive the verdict when a threshold moves, without the image.
    return (*_result_views(result), crop, replace(result, attributed_image=None))


def rederive(result: Prediction | None, threshold, commfor_threshold):
    """The verdict of the last analysis under new thresholds, without a new forward pass. A value
    typed outside 0..1 is put back in range (the box would otherwise keep it)."""
    threshold, fixed = threshold_in_range(threshold, DEFAULT_THRESHOLD)
    commfor_threshold, commfor_fixed = threshold_in_range(commfor_threshold, COMMFOR_THRESHOLD)
    views = (gr.skip(),) * 6 if result is None else _result_views(
        replace(result, threshold=threshold, commfor_threshold=commfor_threshold))
    return (*views, threshold if fixed else gr.skip(), commfor_threshold if commfor_fixed else gr.skip())


def explain(image: dict | None):
    """Heat map over the detector's 224 px centre crop, and the frequency view."""
    heat, spectrum = with_upload(image, _explain)
    how = "input × gradient" if heat.method == "gradient" else "occlusion"
    caption = (
        f"**Heat map** ({how}, P(fake) {heat.fake_probability:.3f}): the 224 px centre crop the detector sees; "
        f"red regions push the fake probability up, blue ones down.  \n**Frequency view:** {spectrum.explanation}"
    )
    heat_map = heat.overlay.resize((HEAT_DISPLAY_SIDE, HEAT_DISPLAY_SIDE), Image.Resampling.NEAREST)
    return heat_map, spectrum.picture, caption


def cleared() -> tuple:
    """Every result view emptied: nothing on the page may describe another image."""
    return (EMPTY_CARD, "", gr.Label(None, label="Attributed GAN"), None, "", None, None, None, None, None, "")


def check_upload(image: dict | None) -> None:
    """An upload goes through the decoding gate at once, so a file we cannot read is refused before Analyse."""
    if image is not None:
        with_upload(image, load_image)


def drop_image() -> None:
    """After a failed analysis the input is emptied: a rejected upload is already deleted."""
    return None


with UploadsOnlyBlocks(title="GANOrigin — GAN face detection and attribution",
                       delete_cache=(LIFETIME_S, LIFETIME_S)) as demo:  # uploads, temporary files
    gr.Markdown("# GANOrigin\nIs this face real or AI-generated — and which GAN made it?")
    status = gr.Markdown(status_text(), elem_id="status")
    with gr.Row():
        retry = gr.Button("Retry loading", size="sm", visible=service.state == "failed", scale=0)
        cancel = gr.Button("Cancel loading", size="sm", visible=service.state == "loading", scale=0)
    timer = gr.Timer(1.0, active=service.state == "loading")
    with gr.Tabs(elem_id="tabs"):
        with gr.Tab("Image", id="image"):
            last_result = gr.State()
            with gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=300):
                    image = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="Face image",
                                     height=380, elem_id="face-image")
                    url_box(image, _predict)
                    with gr.Accordion("Advanced", open=False):
                        threshold = gr.Slider(
                            0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="Decision threshold",
                            info="Fake probability at or above this is called GAN-generated (original: 0.89).")
                        commfor_threshold = gr.Slider(
                            0.0, 1.0, value=COMMFOR_THRESHOLD, step=0.01, label="Any-generator threshold",
                            info="Community Forensics' probability at or above this is called AI-generated "
                                 "(authors': 0.5).")
                        align = gr.Checkbox(value=alignment_available(), interactive=alignment_available(),
                                            label="Align the face (FFHQ-style) before attribution",
                                            info="The detector always sees the whole image.")
                    analyse_btn = gr.Button("Analyse", variant="primary", size="lg")
                    if examples:
                        captions = {e.filename: e.caption for e in EXAMPLES}
                        gr.Examples([[str(p)] for p in examples], inputs=image, label="Examples",
                                    example_labels=[captions.get(p.name, p.name) for p in examples])
                with gr.Column(scale=6, min_width=300):
                    card = gr.HTML(EMPTY_CARD, label="Verdict")
                    provenance = gr.HTML(label="Provenance")
                    gan_line = gr.Markdown(label="Attribution summary")
                    with gr.Row(equal_height=False):
                        attribution = gr.Label(label="Attributed GAN", num_top_classes=3, show_heading=False,
                                               elem_id="attribution", scale=3, min_width=180)
                        crop = gr.Image(label="What attribution saw", show_label=False, height=150, interactive=False,
                                        buttons=[], scale=1, min_width=120, elem_id="attributed-crop")
                    chart = gr.BarPlot(x="class", y="probability", y_lim=[0, 1], sort=CLASS_ORDER, x_title=" ",
                                       label="Class probabilities", height=260, x_label_angle=-90,
                                       caption=f"Threshold {DEFAULT_THRESHOLD:.2f} on P(fake).", elem_id="class-chart")
                    with gr.Accordion("Why this verdict? (heat map and frequency view)", open=False):
                        explain_btn = gr.Button("Explain", size="sm")
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=2, min_width=260):
                                heat_image = gr.Image(label="Heat map", interactive=False, height=320,
                                                      buttons=["fullscreen"], elem_id="heat-map")
                                gr.HTML(HEAT_LEGEND)
                            spectrum_image = gr.Image(label="Frequency view", interactive=False, height=320,
                                                      buttons=["fullscreen"], elem_id="frequency-view", scale=3,
                                                      min_width=260)
                        explain_text = gr.Markdown(label="How to read these views")
                    with gr.Accordion("JSON (the original API's answer: UFD's verdict alone)", open=False):
                        as_json = gr.JSON(label="POST /predict")
                    feedback = feedback_form(image, last_result, threshold, service.health,
                                             commfor_threshold=commfor_threshold)
        with gr.Tab("Batch", id="batch"):
            batch_tab(gpu(service.predict_batch))
        with gr.Tab("Video", id="video"):
            video_tab(service)
    with gr.Accordion("How it works / limitations", open=False):
        gr.Markdown(HOW_IT_WORKS)

    api_file = gr.File(visible=False, label="image")
    api_json = gr.JSON(visible=False, label="prediction")

    verdict_views = [card, gan_line, attribution, chart, provenance, as_json]
    status_outputs = [status, timer, retry, cancel]
    timer.tick(refresh_status, outputs=status_outputs, api_visibility="private")
    demo.load(refresh_status, outputs=status_outputs, api_visibility="private")
    retry.click(retry_loading, outputs=status_outputs, api_visibility="private")
    cancel.click(cancel_loading, outputs=status_outputs, api_visibility="private")
    # A new image (or none) empties every result; a failed analysis empties the image.
    image.change(cleared, outputs=[*verdict_views, crop, last_result, heat_image, spectrum_image, explain_text],
                 api_visibility="private", queue=False)
    thresholds = [threshold, commfor_threshold]
    for slider in thresholds:
        slider.change(rederive, [last_result, *thresholds], [*verdict_views, *thresholds], api_visibility="private",
                      preprocess=False, concurrency_limit=None)
    # preprocess=False: the handlers get the uploaded file itself, which Gradio has not opened.
    # /analyse is the page's own event (its outputs are page views): callable, but not advertised.
    image.upload(check_upload, image, api_visibility="private", preprocess=False
                 ).failure(drop_image, outputs=image, api_visibility="private", queue=False)
    analysed = analyse_btn.click(analyse, [image, threshold, align, commfor_threshold],
                                 [*verdict_views, crop, last_result], api_name="analyse", api_visibility="undocumented",
                                 preprocess=False, show_progress_on=card)
    analysed.failure(drop_input_and_settle(EMPTY_CARD, service), outputs=[image, card], api_visibility="private",
                     queue=False)
    analysed.success(feedback_shown, outputs=feedback, api_visibility="private", queue=False)
    explain_btn.click(explain, image, [heat_image, spectrum_image, explain_text], api_name="explain", preprocess=False,
                      show_progress_on=heat_image
                      ).failure(drop_input_and_settle(None, service), outputs=[image, heat_image],
                                api_visibility="private", queue=False)
    api_file.change(predict_api, [api_file, threshold], api_json, api_name="predict", preprocess=False)
    api_file.change(predict_extended_api, [api_file, *thresholds], api_json, api_name="predict_extended",
                    preprocess=False)

demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="slate").set(
    button_primary_background_fill="*primary_600", button_primary_background_fill_hover="*primary_700",
    button_primary_text_color="white",
)
app = mount(create_rest_app(service), demo, theme=THEME, css=CSS, js=PAGE_JS,
            max_file_size=MAX_UPLOAD_BYTES, footer_links=["api", "settings"])

if __name__ == "__main__":
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", 7860))
    logger.info("GANOrigin on http://%s:%d (REST API: POST /predict, GET /health)", host, port)
    uvicorn.run(app, host=host, port=port, log_level=LOG_LEVEL.lower(), access_log=LOG_LEVEL == "DEBUG")
