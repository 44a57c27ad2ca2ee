"""The Gradio app as a user of ``gradio_client`` meets it: a real ``python app.py`` server.

Proves that ``Client(url).predict(handle_file(p), api_name="/predict")`` returns exactly the
library's original JSON for real dev images (both branches); that bad files come back as
``AppError`` with a message a person understands, the library's own on every endpoint, while the
server keeps serving; that the API names its outputs; that with no weights and no network the app
still starts and says what is missing; that the log says where the app listens, how loading went,
and one line per user error; and that the examples are downloaded on first launch
(sha256-checked) and listed, and simply absent offline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app_server import assert_same_prediction, example_sources, main_server, offline_server, png_header


@pytest.fixture(scope="module")
def server(weights_env, hub):
    return main_server(weights_env, hub)


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


def _config_components(server) -> list[dict]:
    return server.get_json("/config")["components"]


def test_predict_endpoint_returns_the_library_json(client, model, dev_sample):
    for path in dev_sample:
        got = client.predict(handle_file(str(path)), api_name="/predict")
        assert_same_prediction(got, model.predict(path).to_dict())


def test_predict_threshold_selects_the_attribution_branch(client, model, dev_sample):
    for path in dev_sample[:3]:
        got = client.predict(handle_file(str(path)), 0.0, api_name="/predict")
        want = model.predict(path, threshold=0.0).to_dict()
        assert "deepfake_score" in got and got["prediction"] != "Authentic Image"
        assert_same_prediction(got, want)


def test_bad_files_give_a_clear_app_error_and_the_server_keeps_serving(client, model, dev_images, tmp_path):
    png = next(p for p in sorted(p for ps in dev_images.values() for p in ps) if p.suffix == ".png")
    data = png.read_bytes()
    bad = {
        "empty.png": (b"", "empty (0 bytes)"),
        "garbage.jpg": (b"this is not an image\n" * 50, "not an image we can read"),
        "truncated.png": (data[: len(data) // 2], "truncated or corrupt"),
        "huge.png": (png_header(100_000, 100_000), "megapixel limit"),
    }
    for name, (content, message) in bad.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(AppError) as caught:
            client.predict(handle_file(str(path)), api_name="/predict")
        assert message in str(caught.value), (name, str(caught.value))
        assert "Traceback" not in str(caught.value)
    got = client.predict(handle_file(str(png)), api_name="/predict")
    assert_same_prediction(got, model.predict(png).to_dict())


def test_examples_are_downloaded_checked_and_listed(server):
    from ganorigin.examples import EXAMPLES

    served = example_sources()
    if len(served) < len(EXAMPLES):
        pytest.skip("the dev images that match the app's examples are not present")
    folder = Path(server.env["GANORIGIN_CACHE_DIR"]) / "ganorigin" / "examples"
    for example in EXAMPLES:
        cached = folder / example.filename
        assert cached.is_file(), f"{example.filename} was not downloaded:\n{server.logs()[-2000:]}"
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == example.sha256
    datasets = [c for c in _config_components(server) if c.get("type") == "dataset"]
    assert len(datasets) == 1, "the page should show one Examples gallery"
    listed = json.dumps(datasets[0]["props"])
    for example in EXAMPLES:
        assert example.filename in listed and example.caption in listed


def test_offline_without_weights_the_app_starts_and_says_what_is_missing(tmp_path):
    offline = offline_server()
    health = offline.get_json("/health")
    assert health["status"] == "failed" and health["weights_loaded"] is False
    assert "e4e_ffhq_encode.pt" in health["error"] and "offline" in health["error"]

    # What the page says is read in a real browser (test_browser.py): the page's status is filled in by its
    # load event, while /config holds whatever the status was when the page was built.
    components = _config_components(offline)
    assert not [c for c in components if c.get("type") == "dataset"], "offline with an empty cache: no examples"

    face = tmp_path / "face.png"
    Image.new("RGB", (64, 64), (120, 90, 60)).save(face)
    with pytest.raises(AppError) as caught:
        Client(offline.url, verbose=False).predict(handle_file(str(face)), api_name="/predict")
    assert "The model could not be loaded. GET /health says why." in str(caught.value), "REST's words"
    assert "e4e_ffhq_encode.pt" not in str(caught.value), "the reason is the operator's: the banner, /health"


def test_explain_endpoint_returns_heat_map_spectrum_and_caption(client, model, dev_sample):
    """`/explain` (the UI's "Why" panel) gives the heat-map overlay, the frequency view and a caption
    whose P(fake) is the library's (within the fast path's agreement bound)."""
    face = dev_sample[0]
    heat_map, spectrum, caption = client.predict(handle_file(str(face)), api_name="/explain")
    with Image.open(heat_map) as heat, Image.open(spectrum) as view:
        assert min(heat.size) >= 224 and view.width > view.height
    reported = float(caption.split("P(fake) ")[1].split(")")[0])
    assert reported == pytest.approx(model.predict(face).fake_probability, abs=0.02)
    assert "Frequency view" in caption


@pytest.mark.parametrize("name, content", [("notes.png", b"this is not an image\n" * 20), ("empty.png", b"")])
def test_a_file_that_is_not_an_image_gets_the_predict_message_on_every_endpoint(client, server, tmp_path, name,
                                                                                 content):
    """A text file and a 0-byte file: /predict, the page's Analyse event (/analyse) and /explain
    all answer the library's own message, with no server path and no Gradio internals."""
    from ganorigin import InvalidImageError, load_image

    with pytest.raises(InvalidImageError) as library:
        load_image(content)
    path = tmp_path / name
    path.write_bytes(content)
    calls = {"/predict": (handle_file(str(path)),), "/analyse": (handle_file(str(path)), 0.5, False, 0.5),
             "/explain": (handle_file(str(path)),)}
    for api_name, args in calls.items():
        with pytest.raises(AppError) as caught:
            client.predict(*args, api_name=api_name)
        assert str(caught.value) == str(library.value), api_name
        for leak in ("/tmp", "gradio", "preprocess", "Traceback", "UnidentifiedImageError"):
            assert leak not in str(caught.value), (api_name, leak)
    assert "Traceback" not in server.logs()


def test_a_video_sent_as_an_image_is_pointed_to_the_video_analysis(client, tmp_path):
    """An MP4 on the image endpoints: not "not an image we can read", but where videos are analysed."""
    from video_files import grey_seconds, write_clip

    from ganorigin.ui.common import VIDEO_NOT_IMAGE

    clip = tmp_path / "clip.png"  # named like an image: the bytes decide
    clip.write_bytes(write_clip(grey_seconds(1), size=(32, 32)))
    for api_name, args in {"/predict": (handle_file(str(clip)),),
                           "/analyse": (handle_file(str(clip)), 0.5, False, 0.5)}.items():
        with pytest.raises(AppError) as caught:
            client.predict(*args, api_name=api_name)
        assert str(caught.value) == VIDEO_NOT_IMAGE, api_name


def test_a_path_sent_without_handle_file_gets_how_to_send_it_and_no_traceback(client, server, dev_sample, tmp_path):
    """The commonest gradio_client slip: a path string, or one file where a list is taken. The answer says how
    to send files, the same whether the path exists on the server or not; the log has no traceback."""
    from ganorigin.serving.uploads import SEND_FILES

    before = len(server.logs())
    calls = [(path, api_name) for path in (str(dev_sample[0]), str(tmp_path / "missing.png"))
             for api_name in ("/predict", "/predict_extended", "/explain", "/predict_video")]
    for args, api_name in [((path,), api_name) for path, api_name in calls] + [
            ((handle_file(str(dev_sample[0])), ""), "/predict_batch")]:
        with pytest.raises(AppError) as caught:
            client.predict(*args, api_name=api_name)
        assert str(caught.value) == SEND_FILES, api_name
    assert "Traceback" not in server.logs()[before:]
    assert client.predict(handle_file(str(dev_sample[0])), api_name="/predict")["confidence"] > 0, "still serving"


def test_a_raw_call_with_too_few_values_is_told_how_many_are_taken(server):
    event, data = server.call("predict", [], timeout=10)
    assert event == "error" and data["error"] == "This endpoint takes 2 values; 0 were sent."
    assert "Traceback" not in server.logs()


def test_an_image_sent_as_a_video_is_pointed_to_the_image_analysis(client, dev_images, tmp_path):
    """A PNG on /predict_video (the Video tab's checks are the same; test_browser.py): the library's message
    that it is an image, not "not a video we can read"."""
    from ganorigin.ui.common import IMAGE_NOT_VIDEO

    image = tmp_path / "face.mp4"  # named like a video: the bytes decide
    image.write_bytes(sorted(p for p in dev_images["real"] if p.suffix == ".png")[0].read_bytes())
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(image)), api_name="/predict_video")
    assert str(caught.value) == IMAGE_NOT_VIDEO


def test_api_outputs_are_named_and_the_documented_endpoints_are_listed(client):
    """view_api names every output after its label (no ``value_15``); /predict, /predict_extended, /explain,
    /predict_video, /predict_url and /predict_batch are listed, the page's own /analyse and /analyse_batch are
    callable but not advertised."""
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(api) == {"/predict", "/predict_extended", "/explain", "/predict_video", "/predict_url", "/predict_batch"}
    assert [r["label"] for r in api["/predict_video"]["returns"]] == ["video prediction"]
    assert [p["parameter_name"] for p in api["/predict_video"]["parameters"]] == ["file", "threshold",
                                                                               "commfor_threshold"]
    assert [r["label"] for r in api["/predict"]["returns"]] == ["prediction"]
    assert [p["parameter_name"] for p in api["/predict_extended"]["parameters"]] == [
        "file", "threshold", "commfor_threshold"]
    assert [r["label"] for r in api["/explain"]["returns"]] == ["Heat map", "Frequency view", "How to read these views"]
    assert [p["parameter_name"] for p in api["/predict"]["parameters"]] == ["file", "threshold"]
    assert [p["parameter_name"] for p in api["/predict_url"]["parameters"]] == ["url", "threshold"]
    assert [p["parameter_name"] for p in api["/predict_batch"]["parameters"]] == ["files", "urls", "threshold"]
    assert [p["parameter_has_default"] for p in api["/predict_batch"]["parameters"]] == [False, True, True], (
        "files alone will do")
    assert [r["label"] for r in api["/predict_batch"]["returns"]] == ["results"]
    examples = [p["example_input"] for endpoint in api.values() for p in endpoint["parameters"]]
    assert "Hello!!" not in examples  # Gradio's example for any text: ours name images
    assert api["/predict_url"]["parameters"][0]["example_input"].startswith("https://")


def test_a_labels_markup_shows_as_text_in_the_attribution_line():
    """A trained model's labels are its author's words: rendered by a CommonMark renderer, as the page's Markdown
    is, the escaped label is the label itself (HTML-escaped), with no link, image or emphasis."""
    import html

    from markdown_it import MarkdownIt

    from ganorigin.ui.common import markdown_text

    for label in ('<img src="http://example.org/leak.png">', "[verified](http://phish.example/)", "**Style**_GAN_ `3`",
                  "# Style-GAN 2 & co | x ~y~ \\ !"):
        assert MarkdownIt().renderInline(markdown_text(label)) == html.escape(label), label


def test_a_threshold_outside_0_1_is_refused_with_a_message(client, dev_sample):
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(dev_sample[0])), 1.5, api_name="/predict")
    assert "The threshold is a probability from 0 to 1; got 1.5." in str(caught.value)


def test_the_log_says_where_the_app_listens_how_loading_went_and_one_line_per_user_error(client, server, tmp_path):
    log = server.logs()
    assert f"GANOrigin on {server.url}" in log
    assert "Loading the model" in log and "Model ready on cpu (loaded in" in log
    bad = tmp_path / "words.png"
    bad.write_bytes(b"words, not pixels\n")
    before = len(server.logs().splitlines())
    with pytest.raises(AppError):
        client.predict(handle_file(str(bad)), api_name="/predict")
    new_lines = server.logs().splitlines()[before:]
    assert len(new_lines) == 1 and "This file cannot be analysed: This file is not an image we can" in new_lines[0], \
        new_lines

    offline = offline_server().logs()
    assert "The model could not be loaded" in offline and "e4e_ffhq_encode.pt" in offline
    assert "Provide the weights" in offline and "Traceback" not in offline
