"""The server's model service: loads in the background, reports what it is doing, recovers.

Proves that while weights load, ``ModelService.step`` shows the current download (the message
the weight resolver logs); that a failed load reports the error and refuses predictions with
``ModelUnavailableError``, and ``reload`` then succeeds without a restart; that a load past its
deadline (``GANORIGIN_LOAD_TIMEOUT``) — a loader that sleeps, or the real resolver against a
Hub that stalls — ends as "failed" with a message naming the deadline and the last step, and a
late result is dropped; that ``cancel`` does the same at once; that a fault of the program is
reported without details and logged with its traceback, and the loading steps are logged at INFO;
and that what the service shows (errors, steps, weight sources) names files and settings but no
server directory. (Weights that load but hold NaN: tests/test_rest.py, through ``/health``.)
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ganorigin import GANOrigin, WeightSources, WeightsNotFoundError
from ganorigin import ModelUnavailableError
from ganorigin.serving.redact import public_text
from ganorigin.serving.service import ModelService
from ganorigin.testing import E4E_FILE, LABEL_ENCODER_FILE, SCALER_FILE, SVM_FILE, UFD_HEAD_FILE


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_loading_step_failure_and_reload(model, dev_sample):
    release = threading.Event()
    attempts = []

    def loader():
        attempts.append(1)
        logging.getLogger("ganorigin.weights").info("Downloading %s from Hub repo %s", "e4e_ffhq_encode.pt", "org/x")
        release.wait(30)
        if len(attempts) == 1:
            raise WeightsNotFoundError("GANOrigin could not find these weight files: e4e_ffhq_encode.pt")
        return model

    service = ModelService(loader).start()
    _wait_for(lambda: service.step is not None and service.step.startswith("Downloading"))
    assert service.state == "loading" and service.step == "Downloading e4e_ffhq_encode.pt from Hub repo org/x"
    assert service.health()["step"] == service.step
    with pytest.raises(ModelUnavailableError, match="still loading"):
        service.predict(dev_sample[0])

    release.set()
    assert service.wait(30) == "failed" and service.step is None
    assert "e4e_ffhq_encode.pt" in service.error and service.health()["weights_loaded"] is False
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        service.predict(dev_sample[0])

    assert service.reload().wait(30) == "ready"
    assert service.predict(dev_sample[0]) == model.predict(dev_sample[0])
    assert service.health()["weights_loaded"] is True


def test_a_load_past_its_deadline_fails_and_its_late_result_is_dropped(model, monkeypatch):
    monkeypatch.setenv("GANORIGIN_LOAD_TIMEOUT", "0.5")
    release = threading.Event()
    calls = []

    def sleepy_loader():
        calls.append(1)
        logging.getLogger("ganorigin.weights").info("Downloading %s from Hub repo %s", E4E_FILE, "org/slow")
        if len(calls) == 1:
            release.wait(60)
        return model

    service = ModelService(sleepy_loader)
    assert service.load_timeout == 0.5
    started = time.monotonic()
    assert service.start().wait(10) == "failed"
    assert time.monotonic() - started < 5
    assert "did not finish within 0.5 s (GANORIGIN_LOAD_TIMEOUT)" in service.error
    assert f"The last step was: Downloading {E4E_FILE} from Hub repo org/slow" in service.error
    health = service.health()
    assert health["status"] == "failed" and health["error"] == service.error and health["step"] is None

    release.set()  # the abandoned load now returns a model: it must not bring the service back
    time.sleep(0.5)
    assert service.state == "failed" and service.health()["weights_loaded"] is False

    assert service.reload().wait(30) == "ready"
    assert len(calls) == 2


def test_cancel_ends_the_load_at_once_and_reload_starts_afresh(model):
    release = threading.Event()
    calls = []

    def blocked_loader():
        calls.append(1)
        if len(calls) == 1:
            release.wait(60)
        return model

    service = ModelService(blocked_loader, load_timeout=600).start()
    assert service.state == "loading"
    assert service.cancel() is True
    assert service.state == "failed" and "cancelled" in service.error
    assert service.cancel() is False  # nothing left to cancel
    release.set()
    time.sleep(0.3)
    assert service.state == "failed"
    assert service.reload().wait(30) == "ready" and len(calls) == 2
    assert service.cancel() is False


def test_a_stalled_hub_is_given_up_at_the_deadline(hub, weights_dir):
    """The attack: a Hub that answers far too slowly. The real resolver, the real local Hub."""
    repo = "ganorigin-tests/stalled-hub"
    hub.add_repo(repo, {f: weights_dir / f for f in (E4E_FILE, SVM_FILE, SCALER_FILE, LABEL_ENCODER_FILE)})
    sources = WeightSources(repo_id=repo, weights_dir=None, cache_dir=tempfile.mkdtemp(prefix="ganorigin-stalled-"))
    slow_seconds = hub.slow_seconds
    hub.slow_seconds, hub.fault = 8.0, "slow"
    try:
        service = ModelService(lambda: GANOrigin.from_pretrained(sources), load_timeout=2).start()
        assert service.wait(20) == "failed"
        assert "did not finish within 2 s" in service.error
    finally:
        hub.fault, hub.slow_seconds = None, slow_seconds


def test_a_program_fault_while_loading_is_logged_with_its_traceback(caplog):
    def faulty_loader():
        raise RuntimeError("a bug, not the weights")

    with caplog.at_level(logging.INFO, logger="ganorigin"):
        service = ModelService(faulty_loader).start()
        assert service.wait(10) == "failed"
    assert service.error == ("Loading the model failed with an internal error (RuntimeError); "
                             "the server log has the details.")
    faults = [r for r in caplog.records if r.exc_info is not None]
    assert faults and "a bug, not the weights" in str(faults[0].exc_info[1])


def test_loading_steps_are_logged_at_info_on_the_package_logger(model, caplog):
    with caplog.at_level(logging.INFO, logger="ganorigin"):
        assert ModelService(lambda: model).start().wait(60) == "ready"
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("ganorigin") and r.levelno == logging.INFO]
    assert any(m.startswith("Loading the model") for m in messages)
    assert "Checking the model on a test image" in messages
    assert any(m.startswith("Model ready in") for m in messages)


def test_missing_weights_are_named_without_server_folders(tmp_path, monkeypatch):
    empty = tmp_path / "no-weights-here"
    empty.mkdir()
    monkeypatch.setenv("GANORIGIN_WEIGHTS_DIR", str(empty))
    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path / "cache"))
    service = ModelService(lambda: GANOrigin.from_pretrained(local_files_only=True)).start()
    assert service.wait(60) == "failed"
    error = service.error
    for name in (E4E_FILE, SVM_FILE, UFD_HEAD_FILE):
        assert name in error
    assert f"$GANORIGIN_WEIGHTS_DIR/{E4E_FILE}" in error and "$GANORIGIN_CACHE_DIR" in error
    assert str(tmp_path) not in error and _server_paths(error) == []


def test_health_names_weight_sources_not_paths(model, weights_env, monkeypatch):
    monkeypatch.setenv("GANORIGIN_WEIGHTS_DIR", weights_env["GANORIGIN_WEIGHTS_DIR"])
    service = ModelService(lambda: model).start()
    assert service.wait(60) == "ready"
    weights = service.health()["weights"]
    assert weights[E4E_FILE] == "local folder (GANORIGIN_WEIGHTS_DIR)"
    assert all(_server_paths(origin) == [] for origin in weights.values())


@pytest.mark.parametrize(
    "text, shown",
    [
        ("{weights}/e4e_ffhq_encode.pt has sha256 0, expected 1", "$GANORIGIN_WEIGHTS_DIR/e4e_ffhq_encode.pt has sha256 0, expected 1"),
        ("looked in '{weights}/gan_scaler.pkl', Hub repo org/name@main", "looked in '$GANORIGIN_WEIGHTS_DIR/gan_scaler.pkl', Hub repo org/name@main"),
        ("the cached copy {tmp}/x/blobs/abc is corrupt", "the cached copy <temp>/x/blobs/abc is corrupt"),
        ("{home}/.cache/y.pt", "~/.cache/y.pt"),
        ("from http://127.0.0.1:9/raw/fc_weights.pth (cached)", "from http://127.0.0.1:9/raw/fc_weights.pth (cached)"),
        ("set GANORIGIN_WEIGHTS_DIR=/that/folder", "set GANORIGIN_WEIGHTS_DIR=/that/folder"),
        ("read /proc/self/environ", "read …/environ"),
    ],
)
def test_public_text_replaces_server_folders(text, shown, tmp_path, monkeypatch):
    weights = tmp_path / "w"
    monkeypatch.setenv("GANORIGIN_WEIGHTS_DIR", str(weights))
    text = text.format(weights=weights, tmp=tempfile.gettempdir(), home=Path.home())
    assert public_text(text) == shown


def _server_paths(text: str) -> list:
    """Absolute paths in ``text`` that start in a directory that exists on this machine."""
    candidates = re.findall(r"(?<![\w.:/$~>…-])/[\w.@+~-]+(?:/[\w.@+~-]+)*", text)
    return [p for p in candidates if os.path.exists("/" + p.split("/")[1])]
