"""The original GANOrigin REST API, served by ``python app.py`` beside the Gradio UI (issue 8).

Proves, against real servers: a multipart ``POST /predict`` of real dev images returns exactly
the library's original JSON (both branches, ``threshold`` form field), and the same JSON as the
Gradio ``/predict`` endpoint (one code path, one model); missing, bad, oversized files and bad
thresholds get the documented status and ``{"error": ...}`` body; ``GET /health`` is truthful
while weights are still downloading from the (slowed) local Hub and after they load; CORS is off
by default and on when configured; and a schemathesis property-based run over the app's own
OpenAPI spec finds no 5xx and no schema violation.
"""

from __future__ import annotations

import tempfile

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from gradio_client import Client, handle_file
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app_server import assert_same_prediction, main_server, shared_server

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


def test_no_file_is_400(server):
    for form in ({}, {"threshold": 0.5}):
        response = _post(server, **form)
        assert response.status_code == 400
        assert response.json() == {"error": "No image uploaded"}


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
    assert "MiB" in response.json()["error"]


def test_threshold_out_of_range_is_422_json(server, dev_sample):
    for value in (1.5, -0.1, "high"):
        response = _post(server, dev_sample[0], threshold=value)
        assert response.status_code == 422, response.text
        assert list(response.json()) == ["error"] and "threshold" in response.json()["error"]


def test_cors_is_off_on_the_real_server_by_default(server):
    response = httpx.get(f"{server.url}/health", headers={"Origin": "https://frontend.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_cors_follows_the_environment(model, monkeypatch):
    from ganorigin.rest import create_rest_app
    from ganorigin.service import ModelService

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
    from ganorigin.weights import E4E_FILE, LABEL_ENCODER_FILE, SCALER_FILE, SVM_FILE, UFD_HEAD_FILE

    repo, clip_repo = "ganorigin-tests/app-health-attribution", "ganorigin-tests/app-health-clip"
    hub.add_repo(repo, {f: weights_dir / f for f in (E4E_FILE, SVM_FILE, SCALER_FILE, LABEL_ENCODER_FILE)})
    hub.add_repo(clip_repo, {"open_clip_model.safetensors": weights_dir / "open_clip_model.safetensors"})
    head_url = hub.add_raw("app-health-fc_weights.pth", weights_dir / UFD_HEAD_FILE)
    env = {
        "GANORIGIN_REPO_ID": repo,
        "GANORIGIN_CLIP_REPO_ID": clip_repo,
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
        UFD_HEAD_FILE: head_url,
    }
    assert after["threshold"] == 0.89 and after["device"] == "cpu"
    assert set(after["versions"]) >= {"ganorigin", "torch", "open_clip", "gradio"}


def test_schemathesis_finds_no_5xx_and_no_schema_violation(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    assert set(schema.raw_schema["paths"]) == {"/predict", "/health"}, "only the REST routes are documented"
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
    assert {"POST /predict", "GET /health"} <= set(ran)
