"""Attacks on the Gradio layer of a real ``python app.py`` server, over plain HTTP.

Proves that a client can make the app read only files it uploaded: every endpoint, called through
Gradio's raw API (``POST /gradio_api/call/<name>`` then its event stream) with a server path
(absolute, relative, /dev/zero, a FIFO, /proc/self/..., a symlink out of the upload folder, a URL)
in any input, is refused at once with one message that names no path, copies nothing into
Gradio's folder, and leaves ``/health`` answering within a second. Proves that Gradio never
decodes an upload: hostile files (EPS with a stand-in Ghostscript, a GIF with a huge canvas, a
PNG bomb header, JPEG 2000, a float TIFF of NaNs) get the decoding gate's own message, Ghostscript
never runs, and memory stays bounded. And that uploads do not pile up: rejected ones are deleted
at once, the rest after ``GANORIGIN_CACHE_LIFETIME``.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_server import ROOT, png_header, shared_server

CACHE_LIFETIME_S = 6
FILE = {"_type": "gradio.FileData"}
# Each endpoint's inputs around the file under test.
ENDPOINTS = {
    "predict": lambda file: [file, 0.5],
    "analyse": lambda file: [file, 0.5, False, 0.5],
    "explain": lambda file: [file],
}
# The batch endpoints take lists of files; a file that is not an image costs only its own row.
BATCH_ENDPOINTS = {
    "predict_batch": lambda file: [[file], "", 0.5],
    "analyse_batch": lambda file: [[file], ""],
}


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gradio-security")
    (root / "bin").mkdir()
    gs = root / "bin" / "gs"
    gs.write_text(f'#!/bin/sh\necho "$@" >> {root / "gs-calls.log"}\n')
    gs.chmod(0o755)
    return {"root": root, "uploads": root / "uploads", "gs_calls": root / "gs-calls.log", "bin": root / "bin"}


@pytest.fixture(scope="module")
def server(weights_env, paths):
    """Its own upload folder, a short cache lifetime, and a stand-in ``gs`` first on PATH that logs its calls."""
    server = shared_server("gradio-security", {
        **weights_env,
        "GRADIO_TEMP_DIR": str(paths["uploads"]),
        "GANORIGIN_CACHE_DIR": str(paths["root"] / "cache"),
        "GANORIGIN_CACHE_LIFETIME": str(CACHE_LIFETIME_S),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{paths['bin']}{os.pathsep}{os.environ['PATH']}",
    })
    assert server.wait_until_loaded()["status"] == "ready", server.logs()[-3000:]
    return server


def _face_png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _uploaded(server, content: bytes, name: str) -> dict:
    """What the page and gradio_client send for an uploaded file."""
    return {"path": server.upload(content, name), "orig_name": name, "meta": FILE}


def _files(folder: Path) -> set:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


class HealthWatch:
    """Polls ``/health`` in the background; records the slowest answer and the requests that took
    longer than ``limit`` seconds or failed."""

    def __init__(self, server, limit: float = 1.0):
        self.server, self.limit, self.slowest, self.failures = server, limit, 0.0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self.server.get_json("/health", timeout=self.limit)
            except OSError as e:
                self.failures.append(repr(e))
            self.slowest = max(self.slowest, time.monotonic() - start)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_every_endpoint_refuses_server_paths_at_once_with_one_message(server, paths, tmp_path):
    from ganorigin.serving.uploads import NOT_AN_UPLOAD

    outside = tmp_path / "private-face.png"  # a readable image the server could analyse
    outside.write_bytes(_face_png())
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    planted = paths["uploads"] / "planted"  # inside the upload folder: a symlink out of it, and a FIFO
    planted.mkdir(parents=True)
    (planted / "face.png").symlink_to(outside)
    os.mkfifo(planted / "fifo.png")
    attacks = [str(outside), "docs/screenshot.png", "app.py", "/dev/zero", str(fifo), "/proc/self/environ",
               "/proc/self/fd/1", str(planted / "face.png"), str(planted / "fifo.png"), str(tmp_path / "missing.png"),
               f"{server.url}/health", ""]
    assert (ROOT / "docs" / "screenshot.png").is_file(), "the relative path must name a real image"
    before = _files(paths["uploads"])

    with HealthWatch(server) as health:
        for path in attacks:
            file = {"path": path, "meta": FILE}
            for endpoint, inputs in {**ENDPOINTS, **BATCH_ENDPOINTS}.items():
                start = time.monotonic()
                event, data = server.call(endpoint, inputs(file), timeout=10)
                assert event == "error" and data["error"] == NOT_AN_UPLOAD, (endpoint, path, data)
                assert time.monotonic() - start < 5, (endpoint, path, "not refused at once")
            # A file named in another input is refused too.
            event, data = server.call("predict", [None, file], timeout=10)
            assert event == "error" and data["error"] == NOT_AN_UPLOAD, (path, data)

    assert not health.failures and health.slowest < 1.0, (health.failures, health.slowest)
    assert _files(paths["uploads"]) <= before, "a refused path was copied into Gradio's folder"
    # Real uploads still work, through the same raw API.
    event, data = server.call("predict", [_uploaded(server, _face_png(1), "face.png"), 0.5])
    assert event == "complete" and data[0]["prediction"], data


# The hostile files are grayscale or float: Gradio's image input converts such files to RGB, so
# these are the ones it would decode (the EPS through Ghostscript).
def _eps() -> bytes:
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n%%Page: 1 1\n"
            b"%ImageData: 64 64 8 1 0 64 1 \"beginimage\"\nnewpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n")


def _jpeg2000() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(_face_png())).convert("L").save(buffer, "JPEG2000")
    return buffer.getvalue()


def _nan_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64), np.nan, np.float32), "F").save(buffer, "TIFF")
    return buffer.getvalue()


def _gif_canvas(side: int = 7000, frames: int = 45) -> bytes:
    """A GIF whose 7000x7000 canvas holds ``frames`` one-pixel frames (about 1 KB)."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", side, side, 0xF0, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    for i in range(frames):
        out += b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control extension: 10 ms per frame
        out += b"\x2c" + struct.pack("<HHHHB", i, i, 1, 1, 0) + b"\x02\x02\x44\x01\x00"  # one pixel, LZW
    return bytes(out + b"\x3b")


HOSTILE = {
    "drawing.eps": _eps,
    "bomb.png": lambda: png_header(13_000, 13_000, colour_type=0),
    "face.jp2": _jpeg2000,
    "nan.tif": _nan_tiff,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_uploads_get_the_decoding_gate_message_and_never_reach_another_decoder(server, paths, name):
    from ganorigin import InvalidImageError, load_image

    content = HOSTILE[name]()
    with pytest.raises(InvalidImageError) as library:
        load_image(content)
    for endpoint, inputs in ENDPOINTS.items():
        event, data = server.call(endpoint, inputs(_uploaded(server, content, name)), timeout=30)
        assert event == "error" and data["error"] == str(library.value), (endpoint, data)
    upload = _uploaded(server, content, name)
    event, data = server.call("predict_batch", BATCH_ENDPOINTS["predict_batch"](upload), timeout=30)
    assert event == "complete" and data[0][0]["error"] == str(library.value), data
    assert not Path(upload["path"]).exists(), "a rejected upload was kept"
    assert not paths["gs_calls"].exists(), "Ghostscript was run on an upload"


def test_a_gif_with_a_huge_canvas_costs_bounded_memory(server, paths):
    """The 1 KB GIF that drove Gradio's own decoder from 1.9 to 11 GB (it copied all 45 frames at
    full canvas size): here the gate decodes the first frame only. A 49 megapixel image
    legitimately costs a few full-size copies in the pipeline, well under 1.5 GB."""
    content = _gif_canvas()
    with HealthWatch(server, limit=5.0) as health:  # a liveness check while the CPU decodes 49 megapixels
        before = server.rss_mb()
        for endpoint, inputs in ENDPOINTS.items():
            event, data = server.call(endpoint, inputs(_uploaded(server, content, "canvas.gif")))
            assert event == "complete", (endpoint, data)
        grown = server.rss_mb() - before
    assert grown < 1500, f"the server grew by {grown:.0f} MB"
    assert not health.failures, health.failures


def test_rejected_uploads_are_deleted_at_once(server, paths):
    """Deleted at once, yet a request naming the same upload later (another client who sent the
    same bytes, or the page's Explain after Analyse) still gets the gate's message."""
    rejected = [b"not an image %d\n" % i for i in range(5)]
    for i, content in enumerate(rejected):
        upload = _uploaded(server, content, f"notes{i}.png")
        path = Path(upload["path"])
        assert path.is_file()
        endpoints = list(ENDPOINTS)[i % 3:] + list(ENDPOINTS)[:i % 3]
        event, data = server.call(endpoints[0], ENDPOINTS[endpoints[0]](upload))
        assert event == "error" and "not an image we can read" in data["error"], data
        assert not path.exists() and not path.parent.exists(), (endpoints[0], "a rejected upload was kept")
        for endpoint in endpoints[1:]:
            assert server.call(endpoint, ENDPOINTS[endpoint](upload)) == ("error", data), endpoint
    assert not any(p.read_bytes() in rejected for p in _files(paths["uploads"]) if p.is_file())


def test_uploads_are_deleted_after_the_cache_lifetime(server):
    upload = _uploaded(server, _face_png(2), "kept-for-a-while.png")
    path = Path(upload["path"])
    event, _ = server.call("predict", [upload, 0.5])
    assert event == "complete" and path.is_file()
    deadline = time.monotonic() + 3 * CACHE_LIFETIME_S + 10
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not path.exists(), f"an upload outlived GANORIGIN_CACHE_LIFETIME={CACHE_LIFETIME_S} s"


def test_mount_arms_gradios_own_upload_check_and_withholds_its_text(tmp_path):
    """The second layer on its own: a plain ``gr.Blocks`` served by ``ganorigin.serving.uploads.mount``
    (no pre-check of ours) still refuses a server path (``gr.mount_gradio_app`` alone reads it),
    and the client does not see Gradio's text, which names the path."""
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ganorigin.serving.uploads import mount

    secret = tmp_path / "secret.txt"
    secret.write_text("the secret")
    with gr.Blocks() as blocks:
        file, text = gr.File(), gr.Textbox()
        file.change(lambda path: Path(path).read_text(), file, text, api_name="read", queue=False)
    with TestClient(mount(FastAPI(), blocks)) as client:
        answer = client.post("/gradio_api/run/read", json={"data": [{"path": str(secret), "meta": FILE}]})
    assert answer.json() == {"error": None}
    assert "the secret" not in answer.text and str(tmp_path) not in answer.text


def test_a_file_deleted_while_it_is_served_ends_its_answer_without_a_server_error(tmp_path):
    """The race a refused upload meets when a browser fetches its preview: Gradio's file route checked
    the file and Starlette's FileResponse made its headers, the gate deleted the file, then the response
    opened it. Unguarded that is a FileNotFoundError (a traceback in the server log) after the headers went
    out; guarded, the headers are held back and the answer is a whole 404 (uvicorn logs no unfinished answer)."""
    import asyncio
    import json

    import gradio as gr
    from fastapi import FastAPI
    from starlette.responses import FileResponse
    from starlette.routing import Mount

    from ganorigin.serving.uploads import NOT_AN_UPLOAD, GoneFiles, mount

    path = tmp_path / "notes.mp4"
    path.write_bytes(b"not a clip\n" * 10)
    checked = os.stat(path)  # what the file route saw
    path.unlink()  # what the gate did meanwhile
    scope = {"type": "http", "method": "GET", "path": "/gradio_api/file=" + str(path), "headers": [],
             "query_string": b"", "http_version": "1.1"}

    async def receive():  # the client stays connected
        await asyncio.Event().wait()

    def serve(app, path: str = scope["path"]) -> list:
        sent = []

        async def send(message):
            sent.append(message)

        asyncio.run(app({**scope, "path": path}, receive, send))
        return sent

    with pytest.raises(FileNotFoundError):
        serve(FileResponse(path, stat_result=checked))
    sent = serve(GoneFiles(FileResponse(path, stat_result=checked)))  # its headers held back: a whole 404 instead
    assert sent[0]["status"] == 404 and json.loads(sent[1]["body"]) == {"error": NOT_AN_UPLOAD} and len(sent) == 2
    stream = serve(GoneFiles(FileResponse(path, stat_result=checked)), "/gradio_api/queue/data")
    assert [m["type"] for m in stream] == ["http.response.start"], "other routes' headers are not held back"
    served = tmp_path / "kept.png"
    served.write_bytes(b"x" * 100)
    sent = serve(GoneFiles(FileResponse(served)))  # a file that stays is served as it is
    assert sent[0]["status"] == 200 and b"".join(m.get("body", b"") for m in sent[1:]) == b"x" * 100

    with pytest.raises(RuntimeError, match="does not exist"):  # gone before its own stat (seen in CI)
        serve(FileResponse(path))
    sent = serve(GoneFiles(FileResponse(path)))
    assert sent[0]["status"] == 404 and json.loads(sent[1]["body"]) == {"error": NOT_AN_UPLOAD}

    async def fails(scope, receive, send):  # a RuntimeError of another cause is not hidden
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        serve(GoneFiles(fails))

    async def opens_first(scope, receive, send):  # a route that opens the file before answering
        open(path, "rb")

    sent = serve(GoneFiles(opens_first))
    assert sent[0]["status"] == 404 and json.loads(sent[1]["body"]) == {"error": NOT_AN_UPLOAD}

    with gr.Blocks() as blocks:
        gr.Markdown("x")
    mounted = mount(FastAPI(), blocks)
    [gradio_app] = [route.app for route in mounted.routes if isinstance(route, Mount)]
    assert any(m.cls is GoneFiles for m in gradio_app.user_middleware), "mount guards Gradio's own routes"
