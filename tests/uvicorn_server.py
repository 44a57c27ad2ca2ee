"""Serve an ASGI app (e.g. ``create_rest_app(service)``) with uvicorn in this process, for real-HTTP tests
that need a service of their own (a broken model, a tampered weights folder) without starting ``app.py``.
"""

from __future__ import annotations

import threading
import time

import uvicorn

from app_server import free_port


class ThreadedServer:
    """``with ThreadedServer(app) as server: httpx.get(server.url + "/health")``.

    Uvicorn leaves logging alone (``log_config=None``), so its records reach pytest's ``caplog``.
    """

    def __init__(self, app):
        self.port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                     lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, name="uvicorn-test", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ThreadedServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
