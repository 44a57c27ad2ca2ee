"""What a scaled-out job reads: local paths as the local engine finds them, and URIs (``s3://``,
``gs://``, ``file://``, ``https://`` …) through pyarrow's filesystems, or fsspec's where pyarrow has none.

Listing returns names only; each image's bytes are read later, one file at a time, in a CPU stage.
"""

from __future__ import annotations

import posixpath
from typing import Sequence

from ..errors import DatasetError, InvalidImageError
from ..images import MAX_IMAGE_BYTES, read_image_bytes
from ..training import IMAGE_EXTENSIONS, find_images


def is_uri(name: str) -> bool:
    return "://" in name


def list_inputs(names: Sequence[str]) -> list[str]:
    """Image files, folders (recursive) and ``.txt`` lists, local or URIs -> image names, in order.

    Raises:
        DatasetError: a name that does not exist or cannot be listed.
    """
    found: list[str] = []
    local: list[str] = []
    for name in map(str, names):
        if not is_uri(name):
            local.append(name)
            continue
        found += [str(p) for p in find_images(local)]
        local = []
        found += _list_uri(name)
    return found + [str(p) for p in find_images(local)]


def _list_uri(uri: str) -> list[str]:
    from pyarrow import fs

    filesystem, path = filesystem_of(uri)
    scheme = uri.split("://", 1)[0]
    try:
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.Directory:
            entries = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
            return sorted(_uri(scheme, e.path) for e in entries
                          if e.type == fs.FileType.File and posixpath.splitext(e.path)[1].lower() in IMAGE_EXTENSIONS)
        if info.type == fs.FileType.NotFound:
            raise DatasetError(f"{uri} does not exist; pass image files, folders or a .txt list of paths.")
        if path.lower().endswith(".txt"):
            with filesystem.open_input_stream(path) as f:
                lines = [line.strip() for line in f.read().decode().splitlines()]
            folder = uri.rsplit("/", 1)[0]
            return [line if is_uri(line) else f"{folder}/{line}" for line in lines if line and not line.startswith("#")]
    except OSError as e:
        raise DatasetError(f"{uri} could not be listed ({e}).") from e
    return [uri]


def _uri(scheme: str, path: str) -> str:
    """A listed path as a URI again (fsspec's HTTP paths already are)."""
    return path if is_uri(path) else f"{scheme}://{path}"


def filesystem_of(uri: str):
    """``(filesystem, path)`` for ``uri``: pyarrow's filesystem, else fsspec's wrapped for pyarrow."""
    from pyarrow import ArrowInvalid, fs

    try:
        return fs.FileSystem.from_uri(uri)
    except (ArrowInvalid, ValueError):
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        try:
            filesystem, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as e:
            raise DatasetError(f"{uri}: no filesystem for this scheme ({e}).") from e
        return PyFileSystem(FSSpecHandler(filesystem)), path


def read_input(name: str) -> bytes:
    """The bytes of one image (a local path or a URI), within the byte limit.

    Raises:
        InvalidImageError: missing, unreadable, empty or over the limit.
    """
    if not is_uri(name):
        return read_image_bytes(name)
    filename = posixpath.basename(name)
    try:
        filesystem, path = filesystem_of(name)
        with filesystem.open_input_stream(path) as f:
            return read_image_bytes(_Capped(f))
    except FileNotFoundError as e:
        raise InvalidImageError(f"No image file named {filename!r}.") from e
    except (OSError, DatasetError) as e:
        raise InvalidImageError(f"The image file {filename!r} could not be read ({e}).") from e


class _Capped:
    """A stream whose reads stop one byte past the limit (the gate then refuses it)."""

    def __init__(self, stream):
        self.stream = stream

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(MAX_IMAGE_BYTES + 1 if n < 0 else min(n, MAX_IMAGE_BYTES + 1))
