"""Files the page hands to Gradio (downloads, a fetched image): one private folder, old files removed.

Gradio copies a returned file into its own cache (which it cleans up); the original is removed here
once older than ``GANORIGIN_CACHE_LIFETIME`` seconds, checked whenever a new one is written.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

LIFETIME_S = int(os.environ.get("GANORIGIN_CACHE_LIFETIME", 3600))
_FOLDER = Path(tempfile.mkdtemp(prefix="ganorigin-page-files-"))


def output_file(name: str, data: bytes) -> str:
    """Write ``data`` as a new file called ``name`` (in a folder of its own); returns its path."""
    _remove_old()
    folder = _FOLDER / uuid.uuid4().hex
    folder.mkdir()
    path = folder / name
    path.write_bytes(data)
    return str(path)


def _remove_old() -> None:
    cutoff = time.time() - LIFETIME_S
    for folder in _FOLDER.iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                for file in folder.iterdir():
                    file.unlink(missing_ok=True)
                folder.rmdir()
        except OSError:
            pass  # another request removed it first
