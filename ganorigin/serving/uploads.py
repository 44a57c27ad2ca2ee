"""Only files a client uploaded reach the web app's handlers.

A Gradio client can name any server path as an input file (``{"path": "/etc/passwd", "meta":
{"_type": "gradio.FileData"}}``). Gradio copies that file into its cache before a handler runs,
and checks where it comes from only once ``launch()`` has armed the check. Here, three layers
stand in the way:

- :class:`UploadsOnlyBlocks` refuses every event whose input names a file that is not a regular
  file in Gradio's upload folder, before Gradio touches it, with one message (:data:`NOT_AN_UPLOAD`);
- :func:`mount` serves the app like ``gr.mount_gradio_app`` and arms Gradio's own check;
- :func:`read_upload` applies the same rule where a handler reads the bytes.

An upload the decoding gate refuses is deleted at once (:func:`reject_upload`). Gradio stores each
upload at ``<upload folder>/<sha256 of its bytes>/<name>``, so concurrent requests naming that path
are for the same bytes: they get the same refusal, remembered by path.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections import OrderedDict
from typing import BinaryIO

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from gradio.utils import get_upload_folder
from gradio_client.utils import is_file_obj, traverse
from pydantic import ValidationError
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import InvalidImageError
from ..images import MAX_IMAGE_BYTES
from ..video import MAX_VIDEO_BYTES

# Gradio's own cap on any upload; each handler then applies its kind's limit (images, videos).
MAX_UPLOAD_BYTES = max(MAX_IMAGE_BYTES, MAX_VIDEO_BYTES)

logger = logging.getLogger(__name__)

# The same answer for every refused path: it says nothing about whether a file exists there.
NOT_AN_UPLOAD = "This file is not among the uploads the app holds; upload the image again."
SEND_FILES = ("Send each file with gradio_client's handle_file: client.predict(handle_file(\"face.png\"), ...), "
              "or a list of them where the endpoint takes several files.")
REMEMBERED_REJECTIONS = 4096

_rejected: OrderedDict = OrderedDict()  # resolved path of a deleted upload -> why the gate refused it
_rejected_lock = threading.Lock()


def _upload_path(path: object) -> str | None:
    """The resolved path of ``path`` if it names a regular file inside the upload folder, else None."""
    if not isinstance(path, str) or not os.path.isabs(path):
        return None
    folder = os.path.realpath(get_upload_folder())
    try:
        real = os.path.realpath(path)
        inside = real != folder and os.path.commonpath([real, folder]) == folder
        return real if inside and stat.S_ISREG(os.stat(real).st_mode) else None
    except (OSError, ValueError):  # e.g. a NUL byte in the path
        return None


def _rejection(path: object) -> str | None:
    """Why the gate refused the upload that was at ``path``, if it did (the file is gone)."""
    if not isinstance(path, str) or not os.path.isabs(path):
        return None
    try:
        real = os.path.realpath(path)
    except ValueError:
        return None
    with _rejected_lock:
        return _rejected.get(real)


def _refused(path: object) -> gr.Error:
    logger.warning("Refused an input file that was not uploaded: %r", path)
    return gr.Error(NOT_AN_UPLOAD, title="Not an uploaded file", print_exception=False)


def _require_upload(file: dict) -> dict:
    if _upload_path(file["path"]) is None and _rejection(file["path"]) is None:
        raise _refused(file["path"])
    return file


def read_upload(file: dict | str) -> bytes:
    """The bytes of an uploaded file (Gradio's file dict or its path), at most one byte over the
    size limit (so the decoding gate can say the file is too large).

    Raises:
        gradio.Error: :data:`NOT_AN_UPLOAD` for anything but a regular file in the upload folder.
        InvalidImageError: the upload was already refused by the gate (and deleted).
    """
    with open_upload(file, InvalidImageError) as f:
        return f.read(MAX_IMAGE_BYTES + 1)


def open_upload(file: dict | str, refused_as: type = InvalidImageError) -> BinaryIO:
    """An uploaded file (Gradio's file dict or its path) opened for reading, under the same rule as
    :func:`read_upload`; for inputs read as they stream (videos).

    Raises:
        gradio.Error: :data:`NOT_AN_UPLOAD` for anything but a regular file in the upload folder.
        refused_as: the upload was already refused by its gate (and deleted); the gate's reason.
    """
    path = file.get("path") if isinstance(file, dict) else file
    real = _upload_path(path)
    if real is None:
        reason = _rejection(path)
        if reason is not None:
            raise refused_as(reason)
        raise _refused(path)
    try:
        # O_NONBLOCK: should a FIFO take the file's place after the check, opening it cannot hang.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        raise _refused(path) from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise _refused(path)
    return f


def reject_upload(file: dict | str, reason: str) -> None:
    """Delete an upload the decoding gate refused, and its folder if that is now empty; requests
    that name it later get ``reason``."""
    path = file.get("path") if isinstance(file, dict) else file
    real = _upload_path(path)
    if real is None:
        return
    with _rejected_lock:
        _rejected[real] = reason
        while len(_rejected) > REMEMBERED_REJECTIONS:
            _rejected.popitem(last=False)
    try:
        os.unlink(real)
    except FileNotFoundError:
        return  # another request deleted the same upload first
    folder = os.path.dirname(real)
    if folder != os.path.realpath(get_upload_folder()):
        try:
            os.rmdir(folder)
        except OSError:
            pass  # still holds another upload


class UploadsOnlyBlocks(gr.Blocks):
    """``gr.Blocks`` whose events accept as input files only files a client uploaded.

    The check runs before Gradio's own preprocessing, on every route (queue, ``/call``, ``/run``)
    and every input, so a refused path is never opened, copied or decoded.
    """

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        if len(inputs) < len(block_fn.inputs):  # a raw API call; gradio_client sends every value
            raise gr.Error(f"This endpoint takes {len(block_fn.inputs)} values; {len(inputs)} were sent.",
                           title="Missing values", print_exception=False)
        traverse(inputs, _require_upload, is_file_obj)
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except ValidationError:  # a file input given something else, e.g. a path string
            raise gr.Error(SEND_FILES, title="Not a file", print_exception=False) from None


def mount(app: FastAPI, blocks: gr.Blocks, **kwargs) -> FastAPI:
    """``gr.mount_gradio_app(app, blocks, path="/", **kwargs)`` with Gradio's upload-folder check
    armed as ``launch()`` arms it, only ``gr.Error`` messages shown to clients (never the text
    of an unexpected exception), and a refused upload deleted while it is served no traceback (:class:`GoneFiles`)."""
    mounted = gr.mount_gradio_app(app, blocks, path="/", show_error=False, **kwargs)
    blocks.has_launched = True
    for route in mounted.routes:
        if isinstance(route, Mount) and isinstance(route.app, FastAPI):  # Gradio's own app
            route.app.add_middleware(GoneFiles)
    return mounted


class GoneFiles:
    """A file that disappears between a file route's check and its opening (an upload the gate
    refused, deleted while a browser fetched its preview) ends that answer with a 404 and one log line:
    not a server error with a traceback. A file route's headers are held back until its first bytes, so a
    file gone when it is opened (after its headers were made) still gets the 404; one gone later is closed.
    Other answers (the queue's event streams) pass as they come."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, headers, holds = False, None, "/file=" in scope.get("path", "")

        async def tracked(message: dict) -> None:
            nonlocal started, headers
            if message["type"] == "http.response.start" and holds:
                headers = message
                return
            started = started or message["type"] == "http.response.start"
            if headers is not None:
                await send(headers)
                started, headers = True, None
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except (FileNotFoundError, RuntimeError) as error:
            # Starlette's FileResponse says a file gone before its stat as a RuntimeError raised while
            # handling the FileNotFoundError; any other RuntimeError is not ours to hide.
            if isinstance(error, RuntimeError) and not isinstance(error.__context__, FileNotFoundError):
                raise
            logger.info("A file was deleted while it was being served (a refused upload): %s", scope.get("path"))
            if not started:
                await JSONResponse({"error": NOT_AN_UPLOAD}, status_code=404)(scope, receive, send)
