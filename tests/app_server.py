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
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zlib
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

    def get_json(self, path: str, timeout: float = 30) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as response:
            return json.loads(response.read())

    def upload(self, content: bytes, name: str) -> str:
        """Upload a file the way the page and gradio_client do; returns its server path."""
        boundary = uuid.uuid4().hex
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n")
        body = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{self.url}/gradio_api/upload", data=body,
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())[0]

    def call(self, api_name: str, data: list, timeout: float = 120) -> tuple[str, object]:
        """Gradio's raw HTTP API: POST /gradio_api/call/<name>, then read the event stream.
        Returns the last event's name (``"complete"`` or ``"error"``) and its data."""
        request = urllib.request.Request(f"{self.url}/gradio_api/call/{api_name}",
                                         data=json.dumps({"data": data}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            event_id = json.loads(response.read())["event_id"]
        with urllib.request.urlopen(f"{self.url}/gradio_api/call/{api_name}/{event_id}", timeout=timeout) as response:
            stream = response.read().decode()
        events = [block for block in stream.split("\n\n") if block.startswith("event:")]
        name, data_line = events[-1].split("\n", 1)
        return name.removeprefix("event:").strip(), json.loads(data_line.removeprefix("data:"))

    def rss_mb(self) -> float:
        """The server process's resident memory (VmRSS), in MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


_SHARED: dict[str, AppServer] = {}


def shared_server(key: str, env: dict) -> AppServer:
    """The session's server for configuration ``key``, started on first use."""
    server = _SHARED.get(key)
    if server is None:
        server = _SHARED[key] = AppServer(env, name=key).start()
        atexit.register(server.stop)
    return server


def offline_server() -> AppServer:
    """No weights anywhere, no network, an empty cache: the app must start and say what is missing."""
    return shared_server("offline-no-weights", {
        "GANORIGIN_WEIGHTS_DIR": tempfile.mkdtemp(prefix="ganorigin-no-weights-"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": tempfile.mkdtemp(prefix="ganorigin-empty-hf-home-"),
    })


def png_header(width: int, height: int, colour_type: int = 2) -> bytes:
    """A valid PNG that declares ``width`` x ``height`` pixels (8-bit RGB, or grayscale with
    ``colour_type=0``) and holds almost no data: a bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


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
