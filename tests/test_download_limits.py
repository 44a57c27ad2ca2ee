"""Downloads cannot hang or fill the disk (issue 12): real HTTP servers on 127.0.0.1 that send an
endless body, a body longer than declared, or drip bytes; each download is cut off, clearly, and
nothing is kept. Covers plain URLs (the UFD head) and huggingface_hub's HTTP client."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from ganorigin import WeightsFormatError
from ganorigin.hub import download
from ganorigin.hub.download import DownloadError, download_url


class Misbehaving:
    """Serves ``/endless`` (no length, never ends), ``/longer`` (declares 10 bytes, sends more) and
    ``/drip`` (a few bytes at a time, slowly); counts the bytes it managed to send."""

    def __init__(self):
        self.sent = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                if self.path == "/longer":
                    self.send_header("Content-Length", "10")
                self.end_headers()
                deadline = time.monotonic() + 20
                try:
                    while time.monotonic() < deadline:
                        chunk = b"x" * (16 if self.path == "/drip" else 65536)
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        owner.sent += len(chunk)
                        if self.path == "/drip":
                            time.sleep(0.2)
                except OSError:
                    pass  # the client hung up: what the limits should make it do

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def server():
    s = Misbehaving()
    yield s
    s.server.shutdown()


def test_an_endless_body_is_cut_off_at_the_published_size(server, tmp_path):
    dest = tmp_path / "cache" / "fc_weights.pth"
    with pytest.raises(WeightsFormatError, match="not the published"):
        download_url(server.url("/endless"), dest, "0" * 64, max_bytes=4083)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file left
    assert server.sent < 8 * 2**20, f"the server sent {server.sent} bytes before the client stopped reading"


def test_a_slow_drip_is_cut_off_by_the_minimum_rate(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "RATE_WINDOW_S", 1.0)
    monkeypatch.setattr(download, "MIN_RATE", 1000.0)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="bytes/s"):
        download_url(server.url("/drip"), tmp_path / "head.pth", "0" * 64)
    assert time.monotonic() - start < 15  # a liveness bound: the drip itself would last 20 s


def test_hub_client_bodies_are_capped_and_rate_guarded(server, monkeypatch):
    """The transport huggingface_hub's shared client gets from guard_hub_downloads()."""
    monkeypatch.setattr(download, "RATE_WINDOW_S", 1.0)
    monkeypatch.setattr(download, "MIN_RATE", 1000.0)
    monkeypatch.setattr(download, "MAX_HUB_FILE_BYTES", 2**20)
    with httpx2.Client(transport=download._GuardedTransport()) as client:
        with pytest.raises(DownloadError, match="bytes/s"):
            client.get(server.url("/drip"))
        with pytest.raises(DownloadError, match="more than 1048576 bytes"):
            client.get(server.url("/endless"))  # no declared length: the file cap
        assert client.get(server.url("/longer")).content == b"x" * 10  # never past the declared length
