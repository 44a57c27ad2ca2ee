"""Run ``python app.py`` as a real server for tests: a free port, a chosen environment, its log.

Servers are costly to start on a small box, so :func:`shared_server` starts each distinct
configuration once per test session and stops them all when the session ends;
:func:`main_server` is the one most app tests share.
"""

from __future__ import annotations

import atexit
import csv
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV_DATA = ROOT.parent / "shared" / "data" / "dev"
START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """One ``python app.py`` subprocess; ``env`` is added to this process's environment."""

    def __init__(self, env: dict, name: str = "app"):
        self.name = name
        self.port = free_port()
        self.env = {
            **os.environ,
            "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GANORIGIN_LOG_LEVEL": "info",
            **env,
            "GRADIO_SERVER_PORT": str(self.port),
        }
        self.log_path = Path(tempfile.mkstemp(prefix=f"ganorigin-{name}-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> "AppServer":
        """Start the server and wait until the Gradio page answers; raise with the log if it does not."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "app.py"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.process.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/config", timeout=5) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} server did not answer within {timeout:.0f} s:\n{self.logs()}")

    def wait_until_loaded(self, timeout: float = START_TIMEOUT_S) -> dict:
        """Poll ``/health`` until the model is no longer loading; returns the last answer."""
        deadline = time.monotonic() + timeout
        while (health := self.get_json("/health"))["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.5)
        return health

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return json.loads(response.read())


_SHARED: dict[str, AppServer] = {}


def shared_server(key: str, env: dict) -> AppServer:
    """The session's server for configuration ``key``, started on first use."""
    server = _SHARED.get(key)
    if server is None:
        server = _SHARED[key] = AppServer(env, name=key).start()
        atexit.register(server.stop)
    return server


def example_sources() -> dict:
    """``{filename: dev image path}`` for each app example whose exact bytes (by sha256) are in the
    dev set; empty when ../shared is absent."""
    from ganorigin.examples import EXAMPLES

    manifest = DEV_DATA / "manifest.csv"
    if not manifest.is_file():
        return {}
    with open(manifest, newline="") as f:
        by_sha = {hashlib.sha256((DEV_DATA / r["path"]).read_bytes()).hexdigest(): DEV_DATA / r["path"]
                  for r in csv.DictReader(f)}
    return {e.filename: by_sha[e.sha256] for e in EXAMPLES if e.sha256 in by_sha}


def main_server(weights_env: dict, hub) -> AppServer:
    """The shared server: test weights from a local folder, a fresh cache, and the examples served
    by the local Hub's raw files (the matching dev images), so nothing leaves 127.0.0.1."""
    if "main" not in _SHARED:
        for filename, path in example_sources().items():
            hub.add_raw(filename, path)
        env = {
            **weights_env,
            "GANORIGIN_CACHE_DIR": tempfile.mkdtemp(prefix="ganorigin-app-cache-"),
            "GANORIGIN_EXAMPLES_URL": f"{hub.url}/raw",
        }
        shared_server("main", env)
    server = _SHARED["main"]
    health = server.wait_until_loaded()
    if health["status"] != "ready":
        raise RuntimeError(f"the main test server did not load its weights: {health}\n{server.logs()[-3000:]}")
    return server


def assert_same_prediction(got: dict, want: dict) -> None:
    """The original /predict JSON: same keys, identical strings, floats equal to 1e-6."""
    import pytest

    assert set(got) == set(want)
    assert got["prediction"] == want["prediction"]
    assert list(got["probabilities"]) == list(want["probabilities"])
    assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
    assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-6)
    if "deepfake_score" in want:
        assert got["deepfake_score"] == pytest.approx(want["deepfake_score"], abs=1e-6)
