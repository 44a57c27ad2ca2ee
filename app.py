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
from ganorigin.examples import EXAMPLES, fetch_examples
from ganorigin.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from ganorigin.rest import create_rest_app
from ganorigin.service import ModelService

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

**Limitations.** Only these three GANs are known: a face from any other generator (diffusion models,
other GANs) is still given one of the three names. Results on non-face images, heavy JPEG compression,
screenshots or resized images are unreliable. A verdict is evidence, not proof.
Limits: {MAX_IMAGE_BYTES / 2**20:g} MiB, {MAX_IMAGE_PIXELS / 1e6:g} megapixels per image.
"""

CSS = """
#verdict-card {border-radius: 12px; padding: 18px 20px; margin-bottom: 8px;}
#verdict-card.fake {background: #fdecea; border: 1px solid #f5b7b1;}
#verdict-card.real {background: #e8f6ee; border: 1px solid #a9dfbf;}
#verdict-card h2 {margin: 0 0 6px 0;}
#status {font-size: 0.92em;}
"""


def status_text() -> str:
    state = service.state
    if state == "ready":
        h = service.health()
        return f"✅ **Model ready** on `{h['device']}` (loaded in {h['load_seconds']} s)."
    if state == "loading":
        return "⏳ **Loading the model…** The first launch downloads about 2 GB of weights; this page updates by itself."
    return (
        "⚠️ **The model is not available.** The app is running, but analyses will fail until the weights can be "
        "loaded. Provide them, then press *Retry loading*.\n\n```\n" + (service.error or "") + "\n```"
    )


def refresh_status():
    loading = service.state == "loading"
    return status_text(), gr.Timer(active=loading), gr.Button(visible=service.state == "failed")


def retry_loading():
    service.reload()
    return refresh_status()


@gpu
def _predict(path: str, threshold: float) -> Prediction:
    try:
        return service.predict(path, threshold)
    except InvalidImageError as e:
        raise gr.Error(str(e), title="This file cannot be analysed") from e
    except GANOriginError as e:
        raise gr.Error(str(e), title="Model unavailable") from e


def predict_api(file: str | None, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """The original /predict JSON for one image."""
    if file is None:
        raise gr.Error("No image uploaded")
    return _predict(file, threshold).to_dict()


def analyse(image: str | None, threshold: float):
    if image is None:
        raise gr.Error("Upload, paste or capture a face image first.", title="No image")
    result = _predict(image, threshold)
    p = result.fake_probability
    verdict = "GAN-generated" if result.is_fake else "Real"
    gan_line = (
        f"Attributed to **{result.attribution}** ({max(result.probabilities):.0%} among the three known GANs)."
        if result.is_fake
        else f"Closest GAN if it were fake: {result.attribution} ({max(result.probabilities):.0%})."
    )
    card = (
        f"<div id='verdict-card' class='{'fake' if result.is_fake else 'real'}'>"
        f"<h2>{'🤖' if result.is_fake else '📷'} {verdict}</h2>"
        f"<div>Fake probability <b>{p:.3f}</b> — threshold {result.threshold:.2f}</div></div>"
    )
    chart = pd.DataFrame(
        {"class": list(result.class_probabilities), "probability": list(result.class_probabilities.values())}
    )
    return card, gan_line, result.attribution_probabilities, chart, result.to_dict()


with gr.Blocks(title="GANOrigin — GAN face detection and attribution") as demo:
    gr.Markdown("# GANOrigin\nIs this face real or GAN-generated — and which GAN made it?")
    with gr.Row():
        status = gr.Markdown(status_text(), elem_id="status")
        retry = gr.Button("Retry loading", size="sm", visible=service.state == "failed", scale=0)
    timer = gr.Timer(1.0, active=service.state == "loading")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            image = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="Face image", height=380)
            with gr.Accordion("Advanced", open=False):
                threshold = gr.Slider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="Decision threshold",
                                      info="Fake probability at or above this is called GAN-generated (original: 0.89).")
            analyse_btn = gr.Button("Analyse", variant="primary", size="lg")
            if examples:
                captions = {e.filename: e.caption for e in EXAMPLES}
                gr.Examples([[str(p)] for p in examples], inputs=image, label="Examples",
                            example_labels=[captions.get(p.name, p.name) for p in examples])
        with gr.Column(scale=6):
            card = gr.HTML("<div id='verdict-card'><h2>No image analysed yet</h2>"
                           "<div>Upload a face and press Analyse.</div></div>")
            gan_line = gr.Markdown()
            attribution = gr.Label(label="Attributed GAN", num_top_classes=3)
            chart = gr.BarPlot(x="class", y="probability", y_lim=[0, 1], sort=CLASS_ORDER,
                               label="Class probabilities", height=260)
            with gr.Accordion("JSON (the original API's answer)", open=False):
                as_json = gr.JSON(label="POST /predict")
    with gr.Accordion("How it works / limitations", open=False):
        gr.Markdown(HOW_IT_WORKS)

    api_file = gr.File(visible=False)
    api_json = gr.JSON(visible=False)

    timer.tick(refresh_status, outputs=[status, timer, retry], api_visibility="private")
    demo.load(refresh_status, outputs=[status, timer, retry], api_visibility="private")
    retry.click(retry_loading, outputs=[status, timer, retry], api_visibility="private")
    analyse_btn.click(analyse, [image, threshold], [card, gan_line, attribution, chart, as_json], api_name="analyse")
    api_file.change(predict_api, [api_file, threshold], api_json, api_name="predict")

demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="slate")
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
