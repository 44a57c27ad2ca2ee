"""The video gate: a clip in, evenly sampled RGB frames out, streaming.

Only files whose first bytes are one of a few known containers reach FFmpeg (through PyAV), and
then only through the demuxer named by those bytes, from a Python file object (no FFmpeg
protocols, so no playlist or reference can make it open anything else). Size, duration, frame
size and frame count are checked on the header before a frame is decoded, and again while
decoding (a header can lie). Frames stream: only the sampled ones are converted, one at a time.
Every failure is an :class:`InvalidVideoError` a person can act on.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Union

import av
from PIL import Image

from ..errors import InvalidVideoError, VideoTooLargeError
from ..images import not_a_file

VideoInput = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

MAX_VIDEO_BYTES = int(os.environ.get("GANORIGIN_MAX_VIDEO_BYTES", 200 * 1024 * 1024))
MAX_VIDEO_SECONDS = float(os.environ.get("GANORIGIN_MAX_VIDEO_SECONDS", 300))
MAX_VIDEO_PIXELS = int(float(os.environ.get("GANORIGIN_MAX_VIDEO_MEGAPIXELS", 8.3)) * 1_000_000)  # 3840x2160
MAX_VIDEO_FRAMES = int(os.environ.get("GANORIGIN_MAX_VIDEO_FRAMES", 18_000))  # 5 min at 60 frames/s
MIN_FRAME_SIDE = 16
DEFAULT_FPS = 1.0
DEFAULT_MAX_FRAMES = 60
CUT_SHORT_SECONDS = 1.0  # frames ending this much before the declared duration (or more) mean a cut-off file

SUPPORTED = "MP4, MOV, WebM, MKV, AVI or GIF"
# What the CLI reads as video (a .gif stays an image there; predict_video reads animated GIFs too).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".3gp", ".webm", ".mkv", ".avi"})
CORRUPT = "The video could not be decoded; it may be truncated or corrupt."
ZERO_LENGTH = "The video holds no frames (zero length, or cut off before its first frame)."
STILL_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"mif1", b"avif"})  # ISO files that hold pictures, not clips
CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "gif", "prores", "mpeg2video"})
_FORMAT_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError, IndexError, KeyError, TypeError,
                  MemoryError, OverflowError, ZeroDivisionError, RuntimeError)


@dataclass(frozen=True)
class VideoInfo:
    """What the container's header says about the clip (duration measured when it says nothing)."""

    container: str
    codec: str
    width: int
    height: int
    duration: float  # seconds
    frame_rate: Optional[float]

    def to_dict(self) -> dict:
        return {"container": self.container, "codec": self.codec, "width": self.width, "height": self.height,
                "duration": self.duration, "frame_rate": self.frame_rate}


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: its time from the clip's first frame (seconds) and its pixels, upright."""

    time: float
    image: Image.Image


def container_format(head: bytes) -> Optional[str]:
    """The FFmpeg demuxer for a file starting with ``head`` (its first 16 bytes), or None."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mov"  # MP4, MOV, 3GP: the same ISO family and demuxer
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # also WebM
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    return None


def container_name(head: bytes) -> Optional[str]:
    """The file's own kind of container ("mp4", "mov", "3gp", "webm", "matroska", "gif", "avi"), from its
    first 64 bytes: FFmpeg's demuxer name covers a family ("mov" reads MP4 too)."""
    fmt = container_format(head[:16])
    if fmt == "mov":
        brand = head[8:12] if head[4:8] == b"ftyp" else b"qt  "
        return "mov" if brand == b"qt  " else "3gp" if brand.startswith(b"3g") else "mp4"
    if fmt == "matroska":
        return "webm" if b"webm" in head else "matroska"  # the EBML header's DocType
    return fmt


def is_video(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first 16 bytes) is a video container: a GIF, or an ISO
    file branded as a still image (HEIC, AVIF), is an image."""
    return container_format(head) not in (None, "gif") and head[8:12] not in STILL_IMAGE_BRANDS


def sample_frames(video: VideoInput, *, fps: float = DEFAULT_FPS,
                  max_frames: int = DEFAULT_MAX_FRAMES) -> tuple[VideoInfo, Iterator[SampledFrame]]:
    """Check ``video`` against the limits and return its header and an iterator of evenly spaced frames:
    the first frame, then one every ``1 / fps`` seconds, spread wider when that would give more than
    ``max_frames``. The iterator decodes as it goes and closes the file when done.

    Raises:
        InvalidVideoError: not a video, no video stream, truncated or corrupt (also while iterating).
        VideoTooLargeError: over the byte, duration, frame size or frame count limit.
    """
    if not fps > 0 or max_frames < 1:
        raise ValueError(f"fps must be > 0 and max_frames >= 1; got {fps} and {max_frames}.")
    file = _open_file(video)
    close = (lambda: None) if file is video else file.close  # a caller's file object stays open
    try:
        _check_size(file)
        container, info = _open_container(file)
    except BaseException:
        close()
        raise
    return info, _frames(close, container, info, sampling_interval(info.duration, fps, max_frames), max_frames)


def sampling_interval(duration: float, fps: float, max_frames: int) -> float:
    """Seconds between sampled frames: ``1 / fps``, or wider so that ``duration`` gives at most ``max_frames``."""
    return max(1.0 / fps, duration / max_frames)


def _open_file(video: VideoInput) -> BinaryIO:
    """A seekable binary file object of ``video``. Messages name a file, never its folder."""
    if isinstance(video, (bytes, bytearray, memoryview)):
        file: BinaryIO = io.BytesIO(bytes(video))
    elif isinstance(video, (str, os.PathLike)):
        path = Path(video)
        if not path.is_file():
            raise InvalidVideoError(not_a_file(path, "video"))
        try:
            file = open(path, "rb")
        except OSError as e:
            raise InvalidVideoError(f"The video file {path.name!r} could not be read ({e.strerror or type(e).__name__}).") from e
    elif hasattr(video, "read") and hasattr(video, "seek"):
        file = video
    else:
        raise InvalidVideoError(f"Cannot read a video from a {type(video).__name__}; pass a file path, bytes or a "
                                "binary file.")
    return file


def _check_size(file: BinaryIO) -> None:
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    if size == 0:
        raise InvalidVideoError("The file is empty (0 bytes).")
    if size > MAX_VIDEO_BYTES:
        raise VideoTooLargeError(video_too_large())


def _open_container(file: BinaryIO) -> tuple[av.container.InputContainer, VideoInfo]:
    head = file.read(64)
    file.seek(0)
    fmt = container_format(head[:16])
    if fmt is None:
        raise InvalidVideoError(f"This file is not a video we can read (supported: {SUPPORTED}).")
    try:
        container = av.open(file, mode="r", format=fmt, options={"probesize": "5000000", "analyzeduration": "5000000"})
    except _FORMAT_ERRORS as e:
        raise _corrupt(e) from e
    try:
        return container, _check_header(container, container_name(head))
    except BaseException:
        container.close()
        raise


def _check_header(container, name: str) -> VideoInfo:
    if not container.streams:
        raise InvalidVideoError(ZERO_LENGTH)
    if not container.streams.video:
        if not container.streams.audio:  # e.g. an MP4 cut off inside its index
            raise InvalidVideoError(CORRUPT)
        raise InvalidVideoError("The file has no video stream (audio only?); nothing to analyse.")
    stream = container.streams.video[0]
    codec = stream.codec_context.name if stream.codec_context is not None else "unknown"
    if codec not in CODECS:
        raise InvalidVideoError(f"The video is encoded as {codec!r}, which is not supported "
                                f"(supported: {', '.join(sorted(CODECS))}).")
    width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
        raise InvalidVideoError("The video does not declare a usable frame size; it may be corrupt, or its frames "
                                "may be too large to decode.")
    if width * height > MAX_VIDEO_PIXELS:
        raise VideoTooLargeError(f"The video's frames are {width}x{height} = {width * height / 1e6:.1f} megapixels; "
                                 f"the limit is {MAX_VIDEO_PIXELS / 1e6:g} megapixels. Downscale it first.")
    if min(width, height) < MIN_FRAME_SIDE:
        raise InvalidVideoError(f"The video's frames are {width}x{height} pixels; at least "
                                f"{MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} is needed.")
    if stream.frames > MAX_VIDEO_FRAMES:
        raise VideoTooLargeError(_too_many_frames(stream.frames))
    duration = _declared_duration(container, stream)
    if duration is None:
        duration = _measured_duration(container, stream)
    if duration > MAX_VIDEO_SECONDS:
        raise VideoTooLargeError(_too_long(duration))
    rate = stream.average_rate or stream.guessed_rate
    return VideoInfo(container=name, codec=codec, width=width, height=height,
                     duration=duration, frame_rate=float(rate) if rate else None)


def _declared_duration(container, stream) -> Optional[float]:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _measured_duration(container, stream) -> float:
    """The clip's length from its packets' times (no decoding), for headers that do not say
    (e.g. WebM recorded in a browser); stops at the limits."""
    first = last = None
    packets = 0
    try:
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            packets += 1
            if packets > MAX_VIDEO_FRAMES:
                raise VideoTooLargeError(_too_many_frames(packets))
            begin = float(packet.pts * stream.time_base)
            end = float((packet.pts + (packet.duration or 0)) * stream.time_base)
            first = begin if first is None else min(first, begin)
            last = end if last is None else max(last, end)
            if last - first > MAX_VIDEO_SECONDS:
                raise VideoTooLargeError(_too_long(last - first))
        container.seek(0, stream=stream)
    except InvalidVideoError:
        raise
    except _FORMAT_ERRORS as e:
        raise _corrupt(e) from e
    if first is None:
        raise InvalidVideoError(ZERO_LENGTH)
    return last - first


def _frames(close, container, info: VideoInfo, interval: float, max_frames: int) -> Iterator[SampledFrame]:
    """The first frame, then the first frame at or after each sampling time. A frame held on screen across a
    sampling time with no other frame before the next one (a GIF's or slideshow's long frame) is that time's
    frame, rather than none."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    start, next_time, sampled, decoded, held = None, 0.0, 0, 0, None
    step = 1 / info.frame_rate if info.frame_rate else 0.0
    # the video's own length: a container's (no stream's) also covers audio, which may run on after the picture
    own_duration = bool(stream.duration) or not container.streams.audio
    try:
        for frame in container.decode(stream):
            decoded += 1
            if decoded > MAX_VIDEO_FRAMES:
                raise VideoTooLargeError(_too_many_frames(decoded))
            if frame.width * frame.height > MAX_VIDEO_PIXELS or min(frame.width, frame.height) < MIN_FRAME_SIDE:
                raise InvalidVideoError(f"A frame changes size to {frame.width}x{frame.height} pixels, outside "
                                        "the limits.")
            time = _frame_time(frame, decoded, info)
            start = time if start is None else start
            time -= start
            shown_until = time + (float(frame.duration * frame.time_base) if frame.duration and frame.time_base
                                  else step)
            if time > MAX_VIDEO_SECONDS:
                raise VideoTooLargeError(_too_long(time))
            if time + 1e-6 < next_time:
                held = (frame, time)
                continue
            # the held frame, where next_time would otherwise get none
            due = [held] if held is not None and time + 1e-6 >= next_time + interval else []
            held = None
            for shown, at in [*due, (frame, time)]:
                yield SampledFrame(round(at, 6), _upright(shown))
                sampled += 1
                if sampled >= max_frames:
                    return
            while next_time <= time + 1e-6:
                next_time += interval
        if held is not None and next_time + 1e-6 < info.duration:  # the last frame stays on screen past next_time
            yield SampledFrame(round(held[1], 6), _upright(held[0]))
    except InvalidVideoError:
        raise
    except _FORMAT_ERRORS as e:
        raise _corrupt(e) from e
    finally:
        container.close()
        close()
    if decoded == 0:
        raise InvalidVideoError(ZERO_LENGTH)
    if own_duration and info.duration - shown_until > max(CUT_SHORT_SECONDS, 2 * step, 0.05 * info.duration):
        raise InvalidVideoError(f"The video stops at {shown_until:.1f} s of the {info.duration:.1f} s its header "
                                "declares; it may be truncated or corrupt.")


def _frame_time(frame, index: int, info: VideoInfo) -> float:
    if frame.pts is not None and frame.time_base:
        return float(frame.pts * frame.time_base)
    rate = info.frame_rate or 1.0  # no timestamps: count frames
    return float(Fraction(index - 1) / Fraction(rate))


def _upright(frame) -> Image.Image:
    """The frame as RGB, turned as its display matrix says (``rotation`` is counter-clockwise)."""
    image = frame.to_image()
    rotation = round(frame.rotation / 90) * 90 % 360
    return image.rotate(rotation, expand=True) if rotation else image


def _corrupt(e: BaseException) -> InvalidVideoError:
    """Our words only; the decoder's stay in the cause (``raise ... from e``)."""
    return InvalidVideoError(CORRUPT)


def video_too_large() -> str:
    """What every entry point says of a video over the byte limit."""
    return f"The video is larger than the {MAX_VIDEO_BYTES / 2**20:g} MiB limit."


def _too_long(seconds: float) -> str:
    return f"The video is {seconds:.0f} s long; the limit is {MAX_VIDEO_SECONDS:g} s. Cut it first."


def _too_many_frames(frames: int) -> str:
    return f"The video has more than {MAX_VIDEO_FRAMES} frames ({frames} or more); cut it first."
