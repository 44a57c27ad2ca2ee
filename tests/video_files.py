"""Test clips made by the real encoder (PyAV's FFmpeg): any images or colours, for any number of seconds, in any
container and codec, seekable or written to a stream that cannot seek back."""

from __future__ import annotations

import io
import os
import tempfile

import av
from PIL import Image

SIDE = 256
RATE = 5  # frames per second of the test clips: few frames, quick to encode and decode


def write_clip(segments, *, fmt="mp4", codec="libx264", pix_fmt="yuv420p", rate=RATE, size=(SIDE, SIDE),
               rotation=None, seekable=True, faststart=False) -> bytes:
    """A clip of ``segments``: (RGB image or colour, seconds) shown one after the other. ``faststart``: an MP4's
    index (``moov``) before its frames, as web videos have it (the muxer rewrites a real file for it)."""
    if faststart:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "clip.mp4")
            _write(path, segments, fmt, codec, pix_fmt, rate, size, rotation, {"movflags": "faststart"})
            with open(path, "rb") as f:
                return f.read()
    buffer = io.BytesIO()
    _write(buffer if seekable else _Unseekable(buffer), segments, fmt, codec, pix_fmt, rate, size, rotation, {})
    return buffer.getvalue()


def _write(target, segments, fmt, codec, pix_fmt, rate, size, rotation, options) -> None:
    with av.open(target, "w", format=fmt, options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        for picture, seconds in segments:
            if not isinstance(picture, Image.Image):
                picture = Image.new("RGB", size, picture)
            frame = av.VideoFrame.from_image(picture.convert("RGB").resize(size))
            for _ in range(round(seconds * rate)):
                container.mux(stream.encode(frame))
        container.mux(stream.encode())


class _Unseekable(io.RawIOBase):
    """A write-only stream, as a browser's recorder gives: the muxer cannot go back to write the duration."""

    def __init__(self, sink):
        self.sink = sink

    def writable(self):
        return True

    def write(self, data):
        return self.sink.write(data)


def grey_seconds(seconds: int) -> list:
    """One second per grey level 0, 40, 80, ...: a frame's level tells its second."""
    return [((40 * s,) * 3, 1) for s in range(seconds)]
