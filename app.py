"""GANOrigin web app: Gradio UI, the `predict` API for gradio_client, and the original REST API.

Run ``python app.py`` (host/port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT); a Hugging Face
Space runs this same file. All model logic lives in the ``ganorigin`` package.
"""

from __future__ import annotations

import os

import gradio as gr
import pandas as pd
import uvicorn

from ganorigin import DEFAULT_THRESHOLD, GANOriginError, InvalidImageError, Prediction
from ganorigin.align import alignment_available
from ganorigin.examples import EXAMPLES, fetch_examples
from ganorigin.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from ganorigin.serving.rest import create_rest_app
from ganorigin.serving.service import ModelService
from ganorigin.models import display_name

try:  # ZeroGPU Spaces: run analyses on a borrowed GPU; elsewhere a no-op.
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        return fn


CLASS_ORDER = ["Real", "ProGAN", "StyleGAN2", "StyleGAN3"]
QUEUE_SIZE = int(os.environ.get("GANORIGIN_QUEUE_SIZE", 64))
CONCURRENCY = int(os.environ.get("GANORIGIN_CONCURRENCY", 1))

service = ModelService().start()
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

CSS = """
#verdict-card {border-radius: 12px; padding: 16px 20px; margin-bottom: 4px; border: 1px solid #d0d5dd;}
#verdict-card.fake {background: #fdecea; border-color: #f5b7b1;}
#verdict-card.real {background: #e8f6ee; border-color: #a9dfbf;}
#verdict-card h2 {margin: 0 0 6px 0; display: flex; align-items: center; gap: 10px;}
#verdict-card .dot {width: 14px; height: 14px; border-radius: 50%; background: #98a2b3; display: inline-block;}
#verdict-card.fake .dot {background: #d92d20;}
#verdict-card.real .dot {background: #12b76a;}
#verdict-card .meter {position: relative; height: 10px; border-radius: 5px; background: #e4e7ec; margin: 10px 0 4px;}
#verdict-card .meter .fill {position: absolute; left: 0; top: 0; bottom: 0; border-radius: 5px; background: #6172f3;}
#verdict-card .meter .mark {position: absolute; top: -4px; bottom: -4px; width: 2px; background: #101828;}
#verdict-card .scale {display: flex; justify-content: space-between; font-size: 0.8em; color: #667085;}
#status {font-size: 0.92em;}
/* Gradio sizes the plot to the whole block and the label pushes its x axis out of view: let the
   block grow by the label's height instead. */
#class-chart {height: auto !important;}
#class-chart .vega-embed {height: 240px !important;}
"""


def status_text() -> str:
    state = service.state
    if state == "ready":
        h = service.health()
        return f"**Model ready** on `{h['device']}` (loaded in {h['load_seconds']} s)."
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
    return status_text(), gr.Timer(active=loading), gr.Button(visible=service.state == "failed")


def retry_loading():
    service.reload()
    return refresh_status()


def _user_errors(fn):
    """Turn the library's errors into messages for the person using the page or the API."""

    def wrapper(*args):
        try:
            return fn(*args)
        except InvalidImageError as e:
            raise gr.Error(str(e), title="This file cannot be analysed") from e
        except GANOriginError as e:
            raise gr.Error(str(e), title="Model unavailable") from e

    return wrapper


@gpu
@_user_errors
def _predict(path: str, threshold: float, align: bool | None = None) -> Prediction:
    return service.predict(path, threshold, align)


def predict_api(file: str | None, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """The original /predict JSON for one image."""
    if file is None:
        raise gr.Error("No image uploaded")
    return _predict(file, threshold).to_dict()


def _verdict_card(result: Prediction) -> str:
    p, t = result.fake_probability, result.threshold
    kind = "fake" if result.is_fake else "real"
    title = "GAN-generated" if result.is_fake else "Real"
    return (
        f"<div id='verdict-card' class='{kind}'><h2><span class='dot'></span>{title}</h2>"
        f"<div>Fake probability <b>{p:.3f}</b> — threshold {t:.2f}</div>"
        f"<div class='meter'><div class='fill' style='width:{p * 100:.1f}%'></div>"
        f"<div class='mark' style='left:calc({t * 100:.1f}% - 1px)' title='threshold'></div></div>"
        "<div class='scale'><span>real</span><span>GAN-generated</span></div></div>"
    )


def _attribution_line(result: Prediction) -> str:
    share = max(result.probabilities)
    if result.unknown:
        line = f"**Unknown GAN**: unlike the three known GANs (closest: {display_name(result.attribution_label)}, {share:.0%})."
    elif result.is_fake:
        line = f"Attributed to **{result.attribution}** ({share:.0%} among the three known GANs)."
    else:
        line = f"Closest GAN if it were fake: {result.attribution} ({share:.0%})."
    if result.faces_found is not None:
        line += f"  \n*{result.alignment_note}*"
    return line


def analyse(image: str | None, threshold: float, align: bool):
    if image is None:
        raise gr.Error("Upload, paste or capture a face image first.", title="No image")
    result = _predict(image, threshold, align)
    chart = pd.DataFrame(
        {"class": list(result.class_probabilities), "probability": list(result.class_probabilities.values())}
    )
    return (
        _verdict_card(result),
        _attribution_line(result),
        result.attribution_probabilities,
        chart,
        result.attributed_image,
        result.to_dict(),
    )


@gpu
@_user_errors
def explain(image: str | None):
    """Heat map over the detector's 224 px centre crop, and the frequency view."""
    if image is None:
        raise gr.Error("Upload, paste or capture a face image first.", title="No image")
    heat, spectrum = service.explain(image)
    how = "input × gradient" if heat.method == "gradient" else "occlusion"
    caption = (
        f"**Heat map** ({how}, P(fake) {heat.fake_probability:.3f}): red regions of the centre crop the detector sees "
        f"push the fake probability up, blue ones down.  \n**Frequency view:** {spectrum.explanation}"
    )
    return heat.image_overlay, spectrum.picture, caption


with gr.Blocks(title="GANOrigin — GAN face detection and attribution") as demo:
    gr.Markdown("# GANOrigin\nIs this face real or GAN-generated — and which GAN made it?")
    with gr.Row():
        status = gr.Markdown(status_text(), elem_id="status")
        retry = gr.Button("Retry loading", size="sm", visible=service.state == "failed", scale=0)
    timer = gr.Timer(1.0, active=service.state == "loading")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            image = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="Face image", height=380,
                             elem_id="face-image")
            with gr.Accordion("Advanced", open=False):
                threshold = gr.Slider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="Decision threshold",
                                      info="Fake probability at or above this is called GAN-generated (original: 0.89).")
                align = gr.Checkbox(value=alignment_available(), interactive=alignment_available(),
                                    label="Align the face (FFHQ-style) before attribution",
                                    info="The detector always sees the whole image.")
            analyse_btn = gr.Button("Analyse", variant="primary", size="lg")
            if examples:
                captions = {e.filename: e.caption for e in EXAMPLES}
                gr.Examples([[str(p)] for p in examples], inputs=image, label="Examples",
                            example_labels=[captions.get(p.name, p.name) for p in examples])
        with gr.Column(scale=6):
            card = gr.HTML("<div id='verdict-card'><h2><span class='dot'></span>No image analysed yet</h2>"
                           "<div>Upload a face and press Analyse.</div></div>")
            gan_line = gr.Markdown()
            with gr.Row(equal_height=False):
                attribution = gr.Label(label="Attributed GAN", num_top_classes=3, show_heading=False,
                                       elem_id="attribution", scale=3)
                crop = gr.Image(label="What attribution saw", show_label=False, height=150, interactive=False, scale=1,
                                elem_id="attributed-crop")
            chart = gr.BarPlot(x="class", y="probability", y_lim=[0, 1], sort=CLASS_ORDER, x_title=" ",
                               label="Class probabilities", height=260, elem_id="class-chart")
            with gr.Accordion("Why this verdict? (heat map and frequency view)", open=False):
                explain_btn = gr.Button("Explain", size="sm")
                with gr.Row(equal_height=False):
                    heat_image = gr.Image(label="Heat map (detector's centre crop)", interactive=False, height=300,
                                          elem_id="heat-map", scale=2)
                    spectrum_image = gr.Image(label="Frequency view", interactive=False, height=300,
                                              elem_id="frequency-view", scale=3)
                explain_text = gr.Markdown()
            with gr.Accordion("JSON (the original API's answer)", open=False):
                as_json = gr.JSON(label="POST /predict")
    with gr.Accordion("How it works / limitations", open=False):
        gr.Markdown(HOW_IT_WORKS)

    api_file = gr.File(visible=False)
    api_json = gr.JSON(visible=False)

    timer.tick(refresh_status, outputs=[status, timer, retry], api_visibility="private")
    demo.load(refresh_status, outputs=[status, timer, retry], api_visibility="private")
    retry.click(retry_loading, outputs=[status, timer, retry], api_visibility="private")
    analyse_btn.click(analyse, [image, threshold, align], [card, gan_line, attribution, chart, crop, as_json],
                      api_name="analyse")
    explain_btn.click(explain, image, [heat_image, spectrum_image, explain_text], api_name="explain")
    api_file.change(predict_api, [api_file, threshold], api_json, api_name="predict")

demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="slate").set(
    button_primary_background_fill="*primary_600", button_primary_background_fill_hover="*primary_700",
    button_primary_text_color="white",
)
app = gr.mount_gradio_app(
    create_rest_app(service), demo, path="/", theme=THEME, css=CSS, max_file_size=MAX_IMAGE_BYTES,
    footer_links=["api", "settings"],
)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        log_level=os.environ.get("GANORIGIN_LOG_LEVEL", "warning"),
    )
