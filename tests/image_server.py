"""A real HTTP server on 127.0.0.1 that serves images and misbehaves on request, for the URL tests.

Routes: ``/img/<name>`` (a registered file, with its image content type), ``/as/<type>/<name>`` (the
same bytes under another content type), ``/redirect/<n>/<name>`` (n redirects, then the image),
``/to?url=...`` (one redirect to ``url``), ``/endless`` (an image type, no length, bytes forever),
``/declared-huge`` (declares 10 GiB, sends nothing), ``/drip`` (an image type, one byte every
``drip_every`` seconds), ``/status/<code>``. ``on_request`` (if set) is called with each path first.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import parse_qs, urlparse

TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class ImageServer:
    def __init__(self, host: str = "127.0.0.1"):
        self.files: dict[str, bytes] = {}
        self.on_request: Optional[Callable[[str], None]] = None
        self.drip_every = 0.2
        self.httpd = ThreadingHTTPServer((host, 0), _handler_for(self))
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # a client that hangs up early is expected
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.httpd.server_address[1]}"

    def add(self, path: Path, name: Optional[str] = None) -> str:
        """Serve ``path`` as ``/img/<name>``; returns its URL."""
        name = name or Path(path).name
        self.files[name] = Path(path).read_bytes()
        return f"{self.url}/img/{name}"

    def start(self) -> "ImageServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler_for(server: ImageServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            if server.on_request is not None:
                server.on_request(self.path)
            parts = urlparse(self.path).path.strip("/").split("/")
            route = getattr(self, f"_{parts[0].replace('-', '_')}", None)
            try:
                route(*parts[1:]) if route else self._send(b"no such route", "text/plain", 404)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as it should

        def _img(self, name):
            self._send(server.files[name], TYPES.get(Path(name).suffix.lower(), "application/octet-stream"))

        def _as(self, major, minor, name):
            self._send(server.files[name], f"{major}/{minor}")

        def _redirect(self, n, name):
            n = int(n)
            self._redirect_to(f"/redirect/{n - 1}/{name}" if n > 1 else f"/img/{name}")

        def _to(self):
            self._redirect_to(parse_qs(urlparse(self.path).query)["url"][0])

        def _status(self, code):
            self._send(b"nothing here", "text/plain", int(code))

        def _endless(self):
            self._headers("image/png", close=True)
            chunk = b"\0" * 65536
            while True:
                self.wfile.write(chunk)

        def _declared_huge(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(10 * 2**30))
            self.end_headers()
            time.sleep(5)

        def _drip(self):
            self._headers("image/png", close=True)
            while True:
                self.wfile.write(b"\x89")
                self.wfile.flush()
                time.sleep(server.drip_every)

        def _redirect_to(self, location):
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _headers(self, content_type, close=False):
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            if close:  # no length: the body ends when the connection does
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()

        def _send(self, body, content_type, status=200):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
