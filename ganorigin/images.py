"""The one decoding gate every entry point uses: anything image-like in, an RGB PIL image out.

Limits are checked on the header, before any pixel is decoded, so a decompression bomb costs
nothing. Every failure is an :class:`InvalidImageError` with a message a person can act on.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLargeError, InvalidImageError

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

MAX_IMAGE_BYTES = int(os.environ.get("GANORIGIN_MAX_IMAGE_BYTES", 50 * 1024 * 1024))
MAX_IMAGE_PIXELS = int(float(os.environ.get("GANORIGIN_MAX_MEGAPIXELS", 50)) * 1_000_000)
MIN_IMAGE_SIDE = 16
# Pillow opens some 40 formats; only these reach a decoder. The rest (EPS runs Ghostscript, WMF,
# PSD, FITS, ...) add attack surface and no faces.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
WEB_ADDRESS = ("A web address is not a file: fetch the image first (ganorigin.serving.urls.fetch_image_bytes(url) "
               "applies the server's rules) and pass its bytes.")
NOT_AN_IMAGE = "This file is not an image we can read (supported: PNG, JPEG, WebP, GIF, BMP, TIFF)."


def load_image(image: ImageInput) -> Image.Image:
    """Decode ``image`` (path, bytes, file object, PIL image or numpy array) into RGB: a new image,
    its pixels read (a PIL image from ``Image.open`` is read here, not lazily later on another thread).

    Raises:
        InvalidImageError: empty, not an image, truncated, too large or too small.
    """
    if isinstance(image, Image.Image):
        return _decoded(lambda: image)
    if isinstance(image, np.ndarray):
        return _from_array(image)
    data = read_image_bytes(image)
    return _decoded(lambda: Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS))


def not_a_file(path: Path, kind: str = "image") -> str:
    """Why ``path``, which is no regular file, cannot be read as a ``kind`` file: it does not exist, or it is
    a folder, pipe or device (never opened: a pipe would block). Names the file, never its folder."""
    if path.exists():
        return f"{path.name!r} is not a regular file (a folder, pipe or device); pass the {kind} file itself."
    return f"No {kind} file named {path.name!r}."


def read_image_bytes(image) -> bytes:
    """The bytes of a path, bytes-like or file object, within the byte limit.

    Raises:
        InvalidImageError: no such file, unreadable, empty or over the limit.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, str) and image.lower().startswith(("http://", "https://")):
        raise InvalidImageError(WEB_ADDRESS)
    elif isinstance(image, (str, os.PathLike)):
        # Messages name the file, never its folder: on a server that would reveal its paths.
        path = Path(image)
        if not path.is_file():
            raise InvalidImageError(not_a_file(path))
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise ImageTooLargeError(image_too_large())
            data = path.read_bytes()
        except OSError as e:
            raise InvalidImageError(f"The image file {path.name!r} could not be read ({e.strerror or type(e).__name__}).") from e
    elif hasattr(image, "read"):
        data = image.read(MAX_IMAGE_BYTES + 1)
    else:
        raise InvalidImageError(
            f"Cannot read an image from an object of type {type(image).__name__}; pass a file path, bytes, "
            "a PIL image or a numpy array."
        )
    if not data:
        raise InvalidImageError("The file is empty (0 bytes).")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageTooLargeError(image_too_large())
    return data


IMAGE_HEADER_BYTES = 64 * 1024  # enough for any accepted format's header (JPEG's markers before its frame)


def is_still_image(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first :data:`IMAGE_HEADER_BYTES`) opens as a still image: its
    header only, no pixel decoded. A GIF is not called one (the video gate reads animated GIFs)."""
    try:
        return image_extension(head) != "gif"
    except InvalidImageError:
        return False


def image_extension(data: bytes) -> str:
    """The file extension of image bytes the gate accepts (``png``, ``jpg``, ``webp``...), from their header."""
    try:
        kind = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS).format
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InvalidImageError(NOT_AN_IMAGE) from e
    return {"JPEG": "jpg", "TIFF": "tif"}.get(kind, kind.lower())


def _decoded(open_image) -> Image.Image:
    """The image ``open_image()`` gives, within the limits, its first frame read, EXIF orientation
    applied, as a new RGB image. Pillow's own words stay in the exception's cause, not the message."""
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; Pillow's own bomb warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = open_image()
            _check_size(img.size)
            img.seek(0)  # animated GIF/WebP, multi-page TIFF: the first frame
            img.load()
            img = ImageOps.exif_transpose(img)  # a copy where there is nothing to turn
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as e:
        declared = re.search(r"\((\d+) pixels\)", str(e))  # Pillow's words: "Image size (N pixels) exceeds ..."
        size = f" ({int(declared.group(1)) / 1e6:,.0f} megapixels)" if declared else ""
        raise ImageTooLargeError(
            f"The image declares far more pixels{size} than the {MAX_IMAGE_PIXELS / 1e6:g} megapixel limit. "
            "Downscale it first."
        ) from e
    except UnidentifiedImageError as e:
        raise InvalidImageError(NOT_AN_IMAGE) from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
            AttributeError, AssertionError) as e:  # the last two: a caller's lazy image whose file is closed or broken
        raise InvalidImageError("The image could not be decoded; it may be truncated or corrupt.") from e
    return _to_rgb(img)


def _check_size(size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(
            f"The image is {width}x{height} = {width * height / 1e6:.1f} megapixels; the limit is "
            f"{MAX_IMAGE_PIXELS / 1e6:g} megapixels. Downscale it first."
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InvalidImageError(
            f"The image is {width}x{height} pixels; at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} is needed."
        )


def image_too_large() -> str:
    """What every entry point says of an image file over the byte limit (a server that stops reading at the
    limit does not know by how much)."""
    return f"The file is larger than the {MAX_IMAGE_BYTES / 2**20:g} MiB limit."


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; alpha is dropped, as the original app did."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _from_array(np.asarray(img))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    """Numpy HxW, HxWx1, HxWx3 or HxWx4 (uint8, uint16, bool or float in [0, 1]) to RGB."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        a = a[..., :3] if a.shape[2] != 1 else a[..., 0]
    elif a.ndim != 2:
        raise InvalidImageError(f"An image array must be HxW or HxWxC with C in 1, 3, 4; got shape {a.shape}.")
    _check_size((a.shape[1], a.shape[0]))
    if a.dtype == np.uint8:
        pass
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InvalidImageError("The image array contains NaN or infinite values.")
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        a = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        # 16-bit sources (uint16, Pillow's "I" from 16-bit PNG) map 0..65535 onto 0..255.
        scale = 257.0 if a.max(initial=0) > 255 else 1.0
        a = np.clip(np.rint(a / scale), 0, 255).astype(np.uint8)
    else:
        raise InvalidImageError(f"Unsupported image array dtype {a.dtype}.")
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(a), "RGB")
