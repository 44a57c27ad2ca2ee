"""The original GANOrigin REST API, served by ``python app.py`` beside the Gradio UI (issue 8).

Proves, against real servers: a multipart ``POST /predict`` of real dev images returns exactly
the library's original JSON (both branches, ``threshold`` form field), and the same JSON as the
Gradio ``/predict`` endpoint (one code path, one model); missing, bad, oversized files and bad
thresholds get the documented status and ``{"error": ...}`` body; ``GET /health`` is truthful
while weights are still downloading from the (slowed) local Hub and after they load; CORS is off
by default and on when configured; and a schemathesis property-based run over the app's own
OpenAPI spec finds no 5xx and no schema violation.

Hardening (issue 12), each attack reproduced over real sockets: a declared ``Content-Length`` over
the limit is refused before a byte of the body is sent; a chunked body is cut off at the limit
and never spooled past it; requests past the in-flight bound get 503 with ``Retry-After`` while
the admitted ones finish with 200; other methods on ``/predict`` and ``/predict/video`` get 405 JSON; a flag
that is not true or false, and a video sent as an image (found by its bytes), get a plain message; ``/health`` and
its errors name weight files and sources, never server folders; weights that load but hold NaN
fail the load and ``/health`` says why; a fault of the program is a JSON 500 whose traceback goes
to the log, while user errors are logged as one line. ``/docs`` works with the internet cut off.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from gradio_client import Client, handle_file
from hypothesis import HealthCheck, Phase, given, settings
from safetensors.torch import load_file, save_file
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from ganorigin import GANOrigin, WeightSources
from ganorigin.pipeline import check_threshold
from ganorigin.serving.rest import (DEFAULT_MAX_INFLIGHT, INTERNAL_ERROR, MAX_BODY_BYTES, RETRY_AFTER_S, TOO_LARGE,
                                    IMAGE_ON_VIDEO_ROUTE, VIDEO_ON_IMAGE_ROUTE, create_rest_app)
from ganorigin.serving.service import ModelService
from ganorigin.testing import COMMFOR_FILE, E4E_FILE, SVM_FILE, UFD_HEAD_FILE

from app_server import assert_same_prediction, main_server, shared_server
from uvicorn_server import ThreadedServer

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


@pytest.fixture(scope="module")
def server(weights_env, hub):
    return main_server(weights_env, hub)


def _post(server, path=None, content: bytes | None = None, **form) -> httpx.Response:
    files = None
    if path is not None or content is not None:
        name = path.name if path is not None else "upload.bin"
        files = {"image": (name, path.read_bytes() if content is None else content,
                           MIME.get(path.suffix.lower(), "application/octet-stream") if path else "image/png")}
    return httpx.post(f"{server.url}/predict", files=files, data={k: str(v) for k, v in form.items()}, timeout=120)


def _any_png(dev_images):
    return next(p for p in sorted(p for ps in dev_images.values() for p in ps) if p.suffix == ".png")


def test_multipart_upload_returns_the_library_json(server, model, dev_sample):
    for path in dev_sample:
        response = _post(server, path)
        assert response.status_code == 200, response.text
        assert_same_prediction(response.json(), model.predict(path).to_dict())


def test_threshold_form_field(server, model, dev_sample):
    path = dev_sample[0]
    response = _post(server, path, threshold=0.0)
    assert response.status_code == 200, response.text
    got = response.json()
    assert "deepfake_score" in got and got["prediction"] != "Authentic Image"
    assert_same_prediction(got, model.predict(path, threshold=0.0).to_dict())
    response = _post(server, path, threshold=1.0)
    assert response.status_code == 200, response.text
    assert_same_prediction(response.json(), model.predict(path, threshold=1.0).to_dict())


def test_rest_and_gradio_endpoint_give_identical_json(server, dev_sample):
    client = Client(server.url, verbose=False)
    for path in dev_sample[:2]:
        for threshold in (0.89, 0.0):
            rest = _post(server, path, threshold=threshold).json()
            gradio = client.predict(handle_file(str(path)), threshold, api_name="/predict")
            assert rest == gradio


def test_extended_adds_both_detectors_the_verdict_and_provenance_and_gradio_gives_the_same(server, model, dev_sample):
    """``extended=true`` on REST and ``/predict_extended`` for gradio_client: the original keys as
    ever, plus the library's ``detectors``, ``verdict``, ``degradation``, ``alignment`` and
    ``provenance``; without it, the original JSON alone."""
    client = Client(server.url, verbose=False)
    for path in dev_sample[:2]:
        want = model.predict(path).to_dict(extended=True)
        got = _post(server, path, extended="true")
        assert got.status_code == 200, got.text
        got = got.json()
        assert set(got) == set(want)
        original = set(model.predict(path).to_dict())
        assert_same_prediction({k: got[k] for k in original}, {k: want[k] for k in original})
        for key, detector in want["detectors"].items():
            assert got["detectors"][key]["probability"] == pytest.approx(detector["probability"], abs=1e-6)
            assert got["detectors"][key]["state"] == detector["state"]
        assert got["verdict"] == want["verdict"] and got["degradation"] == want["degradation"]
        assert got["provenance"] == json.loads(json.dumps(want["provenance"]))
        assert client.predict(handle_file(str(path)), 0.89, 0.5, api_name="/predict_extended") == got
        assert set(_post(server, path).json()) == original


def test_the_any_generator_threshold_field_sets_community_forensics_verdict_in_the_extended_answer(server, model,
                                                                                                   dev_sample):
    path = dev_sample[0]
    for commfor_threshold in (0.0, 1.0):
        got = _post(server, path, threshold=1.0, commfor_threshold=commfor_threshold, extended="true")
        assert got.status_code == 200, got.text
        want = replace(model.predict(path, threshold=1.0), commfor_threshold=commfor_threshold).to_dict(extended=True)
        assert got.json()["verdict"] == want["verdict"]
        assert got.json()["detectors"]["commfor"]["threshold"] == commfor_threshold
    assert want["verdict"]["label"] == "real" and _post(server, path, threshold=1.0, commfor_threshold=0.0,
                                                        extended="true").json()["verdict"]["by"] == ["commfor"]
    response = _post(server, path, commfor_threshold="high")
    assert response.status_code == 422 and response.json() == {
        "error": "The threshold is a probability from 0 to 1; got high."}


def test_no_file_is_400(server):
    for form in ({}, {"threshold": 0.5}):
        response = _post(server, **form)
        assert response.status_code == 400
        assert response.json() == {"error": "No image uploaded"}


def test_a_file_field_sent_as_text_or_twice_is_told_how_to_send_it(server, dev_sample):
    """No pydantic or Python words ("Expected UploadFile, received: <class 'str'>")."""
    for route, field in (("/predict", "image"), ("/predict/video", "video")):
        response = httpx.post(f"{server.url}{route}", data={field: "hello"}, timeout=30)
        assert response.status_code == 422 and response.json() == {
            "error": f"Send the {field} as a file in the multipart field '{field}' (curl -F {field}=@FILE)."}
        two = [(field, ("a.png", dev_sample[0].read_bytes())), (field, ("b.png", b"not an image"))]
        response = httpx.post(f"{server.url}{route}", files=two, timeout=30)
        assert response.status_code == 422 and response.json() == {
            "error": f"Send one {field} per request, in the multipart field '{field}'."}


def test_bad_files_are_422_with_a_message(server, dev_images):
    data = _any_png(dev_images).read_bytes()
    cases = {
        b"": "empty (0 bytes)",
        b"GIF89a but not really" * 20: "not an image we can read",
        data[: len(data) // 2]: "truncated or corrupt",
    }
    for content, message in cases.items():
        response = _post(server, content=content)
        assert response.status_code == 422, response.text
        body = response.json()
        assert list(body) == ["error"] and message in body["error"]


def test_too_many_megapixels_or_bytes_is_413(server):
    from PIL import Image

    from ganorigin.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

    side = int(MAX_IMAGE_PIXELS ** 0.5) + 100
    with tempfile.SpooledTemporaryFile() as f:
        Image.new("L", (side, side)).save(f, format="PNG")  # a few hundred KiB of zeros, > the limit in pixels
        f.seek(0)
        big = f.read()
    response = _post(server, content=big)
    assert response.status_code == 413, response.text
    assert f"{side}x{side}" in response.json()["error"] and "megapixels" in response.json()["error"]

    response = _post(server, content=b"\0" * (MAX_IMAGE_BYTES + 1))
    assert response.status_code == 413, response.text
    assert response.json() == {"error": f"The file is larger than the {MAX_IMAGE_BYTES / 2**20:g} MiB limit."}


def test_a_file_over_the_byte_limit_gets_one_message_everywhere(server, model, tmp_path, capsys, monkeypatch,
                                                               weights_env):
    """The page's gate reads one byte past the limit, REST stops at the limit: neither knows the file's size, so
    no entry point claims one (the page once said "The file is 50.0 MiB" of a 60 MiB file)."""
    from gradio_client.exceptions import AppError

    from ganorigin.cli import main
    from ganorigin.errors import ImageTooLargeError
    from ganorigin.images import MAX_IMAGE_BYTES

    path = tmp_path / "big.png"
    with open(path, "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 10 * 2**20)  # sparse: 10 MiB over the limit
    with pytest.raises(ImageTooLargeError) as python:
        model.predict(path)
    message = str(python.value)
    assert message == f"The file is larger than the {MAX_IMAGE_BYTES / 2**20:g} MiB limit."
    assert _post(server, path).json() == {"error": message}
    with pytest.raises(AppError) as gradio:
        Client(server.url, verbose=False).predict(handle_file(str(path)), api_name="/predict")
    assert str(gradio.value) == message
    for name, value in weights_env.items():
        monkeypatch.setenv(name, value)
    assert main(["predict", str(path), "--no-progress", "--offline"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == f"{path}: {message}"


def test_threshold_out_of_range_is_422_json(server, dev_sample):
    for value in (1.5, -0.1, "high"):
        response = _post(server, dev_sample[0], threshold=value)
        assert response.status_code == 422, response.text
        # The message every entry point gives (Python API, CLI, the page, gradio_client).
        assert response.json() == {"error": f"The threshold is a probability from 0 to 1; got {value}."}
        with pytest.raises(ValueError) as python_api:
            check_threshold(value)
        assert str(python_api.value) == response.json()["error"]


def test_cors_is_off_on_the_real_server_by_default(server):
    response = httpx.get(f"{server.url}/health", headers={"Origin": "https://frontend.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_cors_follows_the_environment(model, monkeypatch):
    from ganorigin.serving.rest import create_rest_app
    from ganorigin.serving.service import ModelService

    service = ModelService(loader=lambda: model).start()
    assert service.wait(timeout=60) == "ready"
    origin = {"Origin": "https://frontend.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}

    monkeypatch.delenv("GANORIGIN_CORS_ORIGINS", raising=False)
    closed = TestClient(create_rest_app(service))
    assert "access-control-allow-origin" not in closed.get("/health", headers=origin).headers
    assert "access-control-allow-origin" not in closed.options("/predict", headers=preflight).headers

    monkeypatch.setenv("GANORIGIN_CORS_ORIGINS", "https://frontend.example, https://other.example")
    opened = TestClient(create_rest_app(service))
    assert opened.get("/health", headers=origin).headers["access-control-allow-origin"] == "https://frontend.example"
    answer = opened.options("/predict", headers=preflight)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "https://frontend.example"
    assert "POST" in answer.headers["access-control-allow-methods"]
    stranger = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in opened.get("/health", headers=stranger).headers


def test_health_is_truthful_before_and_after_the_weights_load(hub, weights_dir, weights_env):
    """Weights come from the local Hub, slowed down: first "loading", then "ready" with origins."""
    from ganorigin.testing import COMMFOR_FILE, E4E_FILE, LABEL_ENCODER_FILE, SCALER_FILE, SVM_FILE, UFD_HEAD_FILE

    repo, clip_repo = "ganorigin-tests/app-health-attribution", "ganorigin-tests/app-health-clip"
    commfor_repo = "ganorigin-tests/app-health-commfor"
    hub.add_repo(repo, {f: weights_dir / f for f in (E4E_FILE, SVM_FILE, SCALER_FILE, LABEL_ENCODER_FILE)})
    hub.add_repo(clip_repo, {"open_clip_model.safetensors": weights_dir / "open_clip_model.safetensors"})
    hub.add_repo(commfor_repo, {COMMFOR_FILE: weights_dir / COMMFOR_FILE})
    head_url = hub.add_raw("app-health-fc_weights.pth", weights_dir / UFD_HEAD_FILE)
    env = {
        "GANORIGIN_REPO_ID": repo,
        "GANORIGIN_CLIP_REPO_ID": clip_repo,
        "GANORIGIN_COMMFOR_REPO_ID": commfor_repo,
        "GANORIGIN_UFD_HEAD_URL": head_url,
        "GANORIGIN_UFD_HEAD_SHA256": weights_env["GANORIGIN_UFD_HEAD_SHA256"],
        "GANORIGIN_NETWORK_TIMEOUT": "60",
        "GANORIGIN_EXAMPLES_URL": "http://127.0.0.1:9",  # nothing listens there: no examples, at once
        "HF_ENDPOINT": hub.url,
        "HF_HOME": tempfile.mkdtemp(prefix="ganorigin-health-hf-home-"),
    }
    slow_seconds = hub.slow_seconds
    hub.slow_seconds, hub.fault = 5.0, "slow"
    try:
        server = shared_server("hub-weights", env)
        before = server.get_json("/health")
        assert before["status"] == "loading", before
        assert before["weights_loaded"] is False and before["weights"] == {} and before["device"] is None
    finally:
        hub.fault, hub.slow_seconds = None, slow_seconds
    after = server.wait_until_loaded()
    assert after["status"] == "ready", f"{after}\n{server.logs()[-3000:]}"
    assert after["weights_loaded"] is True and after["error"] is None
    assert after["weights"] == {
        E4E_FILE: f"{repo}@main", SVM_FILE: f"{repo}@main", SCALER_FILE: f"{repo}@main",
        LABEL_ENCODER_FILE: f"{repo}@main", "open_clip_model.safetensors": f"{clip_repo}@main",
        UFD_HEAD_FILE: head_url, COMMFOR_FILE: f"{commfor_repo}@main",
    }
    assert after["threshold"] == 0.89 and after["device"] == "cpu"
    assert after["test_weights"] is False, "weights from a Hub repo carry no test-weights marker"
    assert set(after["versions"]) >= {"ganorigin", "torch", "open_clip", "gradio"}


def test_schemathesis_finds_no_5xx_and_no_schema_violation(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    assert set(schema.raw_schema["paths"]) == {"/predict", "/predict/video", "/health"}, "only the REST routes are documented"
    ran: list[str] = []

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE))
    def check(case):
        # Not positive_data_acceptance: bytes that satisfy `format: binary` are almost never a
        # decodable image, and rejecting them with a documented 422 is the right answer.
        case.call_and_validate(base_url=server.url, timeout=120, excluded_checks=[positive_data_acceptance])
        ran.append(f"{case.method} {case.path}")

    check()
    print(f"schemathesis ran {len(ran)} cases: "
          + ", ".join(f"{op} x{ran.count(op)}" for op in sorted(set(ran))))
    assert {"POST /predict", "POST /predict/video", "GET /health"} <= set(ran)


# --- Hardening (issue 12) ----------------------------------------------------------------------

BOUNDARY = "ganorigin-test-boundary"
PART_HEAD = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"face.png\"\r\n"
             "Content-Type: image/png\r\n\r\n").encode()
PART_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
LAST_CHUNK = b"0\r\n\r\n"


def _request_head(port: int, content_length: int | None = None) -> bytes:
    """A raw ``POST /predict`` head: a declared length, or a chunked body when ``None``."""
    framing = "Transfer-Encoding: chunked" if content_length is None else f"Content-Length: {content_length}"
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing}\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _read_response(sock: socket.socket) -> tuple[http.client.HTTPResponse, bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response, response.read()


def _spooled_bytes(pid: int) -> int:
    """Bytes in the unnamed temporary files (upload spools) process ``pid`` holds open."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith("(deleted)"):
                total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
        except OSError:  # closed meanwhile
            pass
    return total


def _small_png(dev_images) -> bytes:
    return min((p for ps in dev_images.values() for p in ps if p.suffix == ".png"), key=lambda p: p.stat().st_size).read_bytes()


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_request_head(server.port, content_length=10 * 2**30))  # 10 GiB announced, none sent
        response, body = _read_response(sock)
        assert response.status == 413 and json.loads(body) == {"error": TOO_LARGE}
        assert response.getheader("connection") == "close"
        assert sock.recv(1) == b"", "the server closes the connection instead of reading the body"
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_a_chunked_body_is_cut_off_at_the_limit_and_never_spooled_past_it(server):
    baseline = _spooled_bytes(server.process.pid)
    peak, uploading = [0], threading.Event()

    def watch():
        while uploading.is_set():
            peak[0] = max(peak[0], _spooled_bytes(server.process.pid) - baseline)
            time.sleep(0.005)

    block, sent = _chunk(b"\0" * 2**20), 0
    uploading.set()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(_request_head(server.port) + _chunk(PART_HEAD))
            try:
                while sent < 4 * MAX_BODY_BYTES:
                    sock.sendall(block)
                    sent += 2**20
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server stopped reading and closed the connection
            response, body = _read_response(sock)
    finally:
        uploading.clear()
        watcher.join()
    assert response.status == 413 and json.loads(body) == {"error": TOO_LARGE}
    # What the kernel's socket buffers took before the close reached us is all that got past.
    assert sent < MAX_BODY_BYTES + 32 * 2**20, f"{sent / 2**20:.0f} MiB were accepted"
    assert peak[0] <= MAX_BODY_BYTES, f"the upload spool grew to {peak[0] / 2**20:.0f} MiB"
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_requests_past_the_in_flight_bound_get_503_and_the_admitted_ones_200(server, dev_images):
    """Hold the bound's worth of uploads open half-sent, fire more, then let the held ones finish."""
    image = _small_png(dev_images)
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(DEFAULT_MAX_INFLIGHT)]
    try:
        for sock in held:
            sock.sendall(_request_head(server.port) + _chunk(PART_HEAD))
        post = lambda _=None: _post(server, content=image)  # noqa: E731
        deadline = time.monotonic() + 30
        while (first := post()).status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.2)  # until the server has taken in the held requests' heads
        with ThreadPoolExecutor(6) as pool:
            refused = [first, *pool.map(post, range(6))]
        for response in refused:
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == str(RETRY_AFTER_S)
            assert list(response.json()) == ["error"] and "busy" in response.json()["error"]
        started = time.monotonic()
        assert httpx.get(f"{server.url}/health", timeout=5).json()["status"] == "ready"
        assert time.monotonic() - started < 3, "/health is not held up by the bound"

        for sock in held:
            sock.sendall(_chunk(image + PART_TAIL) + LAST_CHUNK)
        for sock in held:
            response, body = _read_response(sock)
            assert response.status == 200, body
            assert "prediction" in json.loads(body)
    finally:
        for sock in held:
            sock.close()
    assert post().status_code == 200


def test_other_methods_on_predict_get_405_json(server):
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        response = httpx.request(method, f"{server.url}/predict", timeout=10)
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == "POST"
        assert list(response.json()) == ["error"] and "POST" in response.json()["error"]


def test_other_methods_on_predict_video_get_405_json_like_predict(server):
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        response = httpx.request(method, f"{server.url}/predict/video", timeout=10)
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == "POST"
        assert response.json() == {"error": "Use POST /predict/video with the video in the multipart field 'video'."}


def test_a_flag_that_is_not_true_or_false_gets_a_plain_message(server, dev_sample):
    response = _post(server, dev_sample[0], extended="maybe")
    assert response.status_code == 422, response.text
    assert response.json() == {"error": "extended must be true or false."}


def test_an_image_posted_as_a_video_is_sent_to_predict(server, dev_images):
    """The other way round: a JPEG or PNG on /predict/video is pointed to /predict; bytes that are
    neither keep the video gate's own message."""
    for path in (next(p for p in dev_images["real"] if p.suffix == ".jpg"), _any_png(dev_images)):
        response = httpx.post(f"{server.url}/predict/video", files={"video": ("clip.mp4", path.read_bytes())},
                              timeout=120)
        assert response.status_code == 422 and response.json() == {"error": IMAGE_ON_VIDEO_ROUTE}, path.suffix
    response = httpx.post(f"{server.url}/predict/video", files={"video": ("clip.mp4", b"not a clip\n" * 40)},
                          timeout=120)
    assert response.status_code == 422 and response.json()["error"] != IMAGE_ON_VIDEO_ROUTE


def test_a_video_posted_as_an_image_is_sent_to_predict_video(server, dev_sample):
    from PIL import Image
    from video_files import write_clip

    clip = write_clip([((200, 40, 40), 1)], size=(64, 64))
    response = _post(server, content=clip)  # named upload.bin, sent as image/png: only its bytes say video
    assert response.status_code == 422, response.text
    assert response.json() == {"error": VIDEO_ON_IMAGE_ROUTE} and "POST /predict/video" in VIDEO_ON_IMAGE_ROUTE
    with tempfile.SpooledTemporaryFile() as f:  # a GIF is an image as well as a clip format: still analysed here
        Image.open(dev_sample[0]).convert("RGB").save(f, format="GIF")
        f.seek(0)
        gif = f.read()
    assert _post(server, content=gif).status_code == 200


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def _server_paths(text: str) -> list:
    """Absolute paths in ``text`` that start in a directory that exists on this machine."""
    candidates = re.findall(r"(?<![\w.:/$~>…-])/[\w.@+~-]+(?:/[\w.@+~-]+)*", text)
    return [p for p in candidates if os.path.exists("/" + p.split("/")[1])]


def test_health_shows_weight_sources_not_paths(server, weights_env):
    health = server.get_json("/health")
    assert health["weights"][E4E_FILE] == "local folder (GANORIGIN_WEIGHTS_DIR)"
    assert [s for s in _strings(health) if s.startswith("/") or _server_paths(s)] == []
    assert weights_env["GANORIGIN_WEIGHTS_DIR"] not in json.dumps(health)
    assert health["test_weights"] is True, "the test weights folder is marked: /health must say so"


def test_an_offline_server_without_weights_names_the_files_but_no_folder(dev_images):
    server = shared_server("offline-no-weights", {  # the same configuration as test_app's
        "GANORIGIN_WEIGHTS_DIR": tempfile.mkdtemp(prefix="ganorigin-no-weights-"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": tempfile.mkdtemp(prefix="ganorigin-empty-hf-home-"),
    })
    health = server.wait_until_loaded()
    assert health["status"] == "failed"
    error = health["error"]
    for name in (E4E_FILE, SVM_FILE, UFD_HEAD_FILE):
        assert name in error
    assert f"$GANORIGIN_WEIGHTS_DIR/{E4E_FILE}" in error
    assert _server_paths(error) == [] and tempfile.gettempdir() not in error
    response = _post(server, content=_small_png(dev_images))
    assert response.status_code == 503
    assert response.json()["error"] == "The model could not be loaded. GET /health says why."


def _tamper(weights_dir: Path, folder: Path, part: str) -> WeightSources:
    """A copy of the test weights with NaN in the e4e encoder or the UFD head, in their own formats."""
    shutil.copytree(weights_dir, folder)
    if part == "e4e":
        checkpoint = torch.load(folder / E4E_FILE, map_location="cpu", weights_only=True)
        key = next(k for k in checkpoint["state_dict"] if k.startswith("encoder.") and k.endswith(".weight"))
        checkpoint["state_dict"][key] = torch.full_like(checkpoint["state_dict"][key], float("nan"))
        torch.save(checkpoint, folder / E4E_FILE)
    elif part == "commfor":
        state = load_file(str(folder / COMMFOR_FILE))
        state = {k: torch.full_like(v, float("nan")) if k.endswith("head.weight") else v for k, v in state.items()}
        save_file(state, str(folder / COMMFOR_FILE), metadata={"format": "pt"})
    else:
        head = torch.load(folder / UFD_HEAD_FILE, map_location="cpu", weights_only=True)
        torch.save({name: torch.full_like(value, float("nan")) for name, value in head.items()}, folder / UFD_HEAD_FILE)
    head_sha = hashlib.sha256((folder / UFD_HEAD_FILE).read_bytes()).hexdigest()
    return WeightSources(weights_dir=str(folder), ufd_head_sha256=head_sha, local_files_only=True)


@pytest.mark.parametrize("part, precision, blamed", [
    ("e4e", "fp32", "e4e"), ("e4e", None, "e4e"), ("ufd head", None, UFD_HEAD_FILE),
    ("commfor", None, COMMFOR_FILE),
])
def test_weights_that_load_but_hold_nan_fail_the_load_and_health_says_why(weights_dir, tmp_path, dev_images,
                                                                           part, precision, blamed):
    sources = _tamper(weights_dir, tmp_path / "weights", part)
    service = ModelService(lambda: GANOrigin.from_pretrained(sources, device="cpu", precision=precision)).start()
    with ThreadedServer(create_rest_app(service)) as rest:
        assert service.wait(180) == "failed"
        health = httpx.get(f"{rest.url}/health", timeout=30).json()
        assert health["status"] == "failed" and health["weights_loaded"] is False
        assert blamed in health["error"] and ("NaN" in health["error"] or "nan" in health["error"])
        assert str(tmp_path) not in health["error"]
        response = httpx.post(f"{rest.url}/predict", files={"image": ("face.png", _small_png(dev_images), "image/png")},
                              timeout=60)
        assert response.status_code == 503
        assert response.json()["error"] == "The model could not be loaded. GET /health says why."


def test_a_program_fault_is_a_json_500_with_the_traceback_in_the_log(model, dev_images, caplog):
    broken = GANOrigin(model.detector, model.encoder, model.attributor, device="cpu", align=False)
    service = ModelService(lambda: broken).start()
    assert service.wait(60) == "ready"
    broken.attributor = None  # a bug that shows after start-up: every analysis raises AttributeError
    image = {"image": ("face.png", _small_png(dev_images), "image/png")}
    with caplog.at_level(logging.INFO), ThreadedServer(create_rest_app(service)) as rest:
        response = httpx.post(f"{rest.url}/predict", files=image, timeout=60)
        assert response.status_code == 500 and response.json() == {"error": INTERNAL_ERROR}
        not_an_image = httpx.post(f"{rest.url}/predict", files={"image": ("a.png", b"text", "image/png")}, timeout=60)
        assert not_an_image.status_code == 422
        assert httpx.get(f"{rest.url}/health", timeout=30).status_code == 200
    faults = [r for r in caplog.records if r.exc_info is not None]
    assert len(faults) == 1 and isinstance(faults[0].exc_info[1], AttributeError)
    user_errors = [r for r in caplog.records if r.name == "ganorigin.serving.rest" and r.getMessage().startswith("REST 422")]
    assert len(user_errors) == 1 and user_errors[0].exc_info is None and "\n" not in user_errors[0].getMessage()


def test_docs_page_loads_its_assets_from_this_server(server):
    page = httpx.get(f"{server.url}/docs", timeout=10)
    assert page.status_code == 200
    references = re.findall(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)["']""", page.text)
    assert any(r.endswith(".js") for r in references) and "/openapi.json" in references
    for reference in references:
        assert not re.match(r"(https?:)?//", reference), f"{reference} is not served by this server"
        assert httpx.get(f"{server.url}{reference}", timeout=10).status_code == 200, reference


def test_docs_render_in_a_browser_with_the_internet_cut_off(server):
    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        pytest.skip(f"{chromium} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    outside: list[str] = []

    def only_this_server(route):
        if route.request.url.startswith(server.url):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.route("**/*", only_this_server)
            page.goto(f"{server.url}/docs")
            page.locator(".opblock-summary-path[data-path=\"/predict\"]").wait_for(timeout=60_000)
            page.locator(".opblock-summary-path", has_text="/health").wait_for(timeout=10_000)
        finally:
            browser.close()
    assert outside == []
