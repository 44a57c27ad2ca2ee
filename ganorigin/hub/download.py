"""Downloads that cannot hang or fill the disk: a byte cap and a minimum rate on every body.

Plain URLs (the UFD head, the app's examples) are read by :func:`download_url`. Hub files go
through ``huggingface_hub``, whose HTTP client :func:`guard_hub_downloads` gives the same rules.
A server that drips bytes slower than ``GANORIGIN_MIN_DOWNLOAD_RATE`` (bytes/s, averaged over
``RATE_WINDOW_S``) or sends more than it declared is cut off with :class:`DownloadError`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import httpx2
from huggingface_hub import get_session, set_client_factory

from ..errors import WeightsFormatError

NETWORK_TIMEOUT_S = float(os.environ.get("GANORIGIN_NETWORK_TIMEOUT", 10))
MIN_RATE = float(os.environ.get("GANORIGIN_MIN_DOWNLOAD_RATE", 16 * 1024))
RATE_WINDOW_S = 30.0
# Hub files have no published size here; none of ours is near this (CLIP ViT-L/14: 1.7 GB).
MAX_HUB_FILE_BYTES = 8 * 2**30


class DownloadError(OSError):
    """A download was cut off: too slow, or longer than it may be."""


class RateGuard:
    """Counts the bytes of one body; raises :class:`DownloadError` past ``max_bytes`` or when the
    last ``RATE_WINDOW_S`` seconds brought less than ``MIN_RATE`` bytes per second."""

    def __init__(self, what: str, max_bytes: Optional[int], too_large: type = DownloadError):
        self.what, self.max_bytes, self.too_large = what, max_bytes, too_large
        self.total = 0
        self._window_start, self._window_bytes = time.monotonic(), 0

    def add(self, n: int) -> None:
        self.total += n
        self._window_bytes += n
        if self.max_bytes is not None and self.total > self.max_bytes:
            raise self.too_large(f"{self.what} sent more than {self.max_bytes} bytes, so it is not the published "
                                 "file; cut off, it was not used.")
        elapsed = time.monotonic() - self._window_start
        if elapsed >= RATE_WINDOW_S:
            if self._window_bytes < MIN_RATE * elapsed:
                raise DownloadError(
                    f"{self.what} arrived at {self._window_bytes / elapsed:.0f} bytes/s, under the "
                    f"{MIN_RATE:.0f} bytes/s minimum (GANORIGIN_MIN_DOWNLOAD_RATE); cut off."
                )
            self._window_start, self._window_bytes = time.monotonic(), 0


def give_default_permissions(path: Path) -> None:
    """Give ``path`` the permissions of a file created in the usual way (0666 less the umask): temporary
    files and safetensors' writer make them owner-only, which another user sharing the cache cannot read."""
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def download_url(url: str, dest: Path, sha256: str, *, max_bytes: Optional[int] = None) -> None:
    """Download to a temporary file beside ``dest``, check size and digest, then move into place.

    Raises:
        DownloadError: cut off (too slow, too long).
        WeightsFormatError: the digest is not ``sha256``; nothing is kept.
        OSError: the network failed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    guard = RateGuard(url, max_bytes, too_large=WeightsFormatError)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=NETWORK_TIMEOUT_S) as response:
                declared = response.headers.get("Content-Length")
                if max_bytes is not None and declared and declared.isdigit() and int(declared) > max_bytes:
                    raise WeightsFormatError(f"{url} declares {declared} bytes, more than the {max_bytes} of the "
                                             "published file, so it is not the published one. It was not used.")
                while chunk := response.read1(64 * 1024):  # what has arrived: a drip is measured as it comes
                    guard.add(len(chunk))
                    digest.update(chunk)
                    tmp.write(chunk)
            tmp.close()
            if digest.hexdigest() != sha256:
                raise WeightsFormatError(
                    f"{url} downloaded with sha256 {digest.hexdigest()}, expected {sha256}; "
                    "the file is corrupt or not the published one. It was not used."
                )
            give_default_permissions(Path(tmp.name))
            os.replace(tmp.name, dest)
        finally:
            if os.path.exists(tmp.name):
                os.unlink(tmp.name)


class _GuardedStream(httpx2.SyncByteStream):
    def __init__(self, stream, guard: RateGuard):
        self._stream, self._guard = stream, guard

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            self._guard.add(len(chunk))
            yield chunk

    def close(self) -> None:
        self._stream.close()


class _GuardedTransport(httpx2.BaseTransport):
    """Wraps every response body in a :class:`RateGuard`, capped at its declared length."""

    def __init__(self):
        self._inner = httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self._inner.handle_request(request)
        declared = response.headers.get("Content-Length", "")
        cap = int(declared) if declared.isdigit() else MAX_HUB_FILE_BYTES
        response.stream = _GuardedStream(response.stream, RateGuard(request.url.path.rsplit("/", 1)[-1], cap))
        return response

    def close(self) -> None:
        self._inner.close()


_installed = threading.Lock()
_done = False


def guard_hub_downloads() -> None:
    """Give ``huggingface_hub``'s shared HTTP client the byte cap and minimum rate (once)."""
    global _done
    with _installed:
        if _done:
            return
        hooks = get_session().event_hooks  # the library's own (its headers, its user agent)
        set_client_factory(lambda: httpx2.Client(event_hooks=hooks, transport=_GuardedTransport(),
                                                 follow_redirects=True, timeout=None))
        _done = True
