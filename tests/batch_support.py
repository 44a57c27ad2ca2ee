"""The app server the batch, URL and feedback tests share: test weights, loopback URLs allowed (the
test-only switch), feedback in its own folder, no examples (nothing leaves 127.0.0.1)."""

from __future__ import annotations

import tempfile

from app_server import AppServer, shared_server


def batch_server(weights_env: dict, hub) -> AppServer:
    server = shared_server("batch", {
        **weights_env,
        "GANORIGIN_ALLOW_LOOPBACK_URLS": "1",
        "GANORIGIN_FEEDBACK_DIR": tempfile.mkdtemp(prefix="ganorigin-feedback-"),
        "GANORIGIN_CACHE_DIR": tempfile.mkdtemp(prefix="ganorigin-batch-cache-"),
        "GANORIGIN_EXAMPLES_URL": "http://127.0.0.1:9",
    })
    health = server.wait_until_loaded()
    if health["status"] != "ready":
        raise RuntimeError(f"the batch test server did not load its weights: {health}\n{server.logs()[-3000:]}")
    return server
