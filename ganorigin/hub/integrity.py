"""Digests of weight files, and the memo that spares a start from re-hashing gigabytes."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional

from huggingface_hub import constants as hf_constants

from ..errors import WeightsFormatError

MEMO_FILE = "ganorigin-verified-blobs.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file: the Hub's ETag for files not stored in LFS."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str, published: Optional[str] = None) -> None:
    """Raise unless ``path`` has sha256 ``expected``; ``what`` names the file in the message. ``published``: the
    digest of the published file, where ``expected`` may have been set otherwise (GANORIGIN_UFD_HEAD_SHA256)."""
    actual = sha256_file(path)
    if actual == expected:
        return
    if published is not None and expected != published:
        advice = ("That digest was set in place of the published one (GANORIGIN_UFD_HEAD_SHA256, or WeightSources' "
                  "ufd_head_sha256) for other weights" + (
                      "; this file is the published one: unset it to use this file." if actual == published
                      else "; set it to this file's digest, or unset it for the published file."))
    else:
        advice = ("Replace it with the published file; for random test weights made by `python -m ganorigin "
                  "demo-weights DIR`, use the command it prints.")
    raise WeightsFormatError(f"{what} has sha256 {actual}, expected {expected}. {advice}")


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """The download cache: ``cache_dir``, else ``GANORIGIN_CACHE_DIR``, else the Hugging Face hub
    cache. GANOrigin's own files (the UFD head, examples, precision checks) live in its
    ``ganorigin/`` folder."""
    return Path(cache_dir or os.environ.get("GANORIGIN_CACHE_DIR") or hf_constants.HF_HUB_CACHE).expanduser()


def cached_blob_problem(path: Path, cache_dir: Path) -> Optional[str]:
    """Check a Hub cache file against the digest its blob is named by; a reason string if it fails.

    The cache names each blob by the file's ETag: the sha256 for LFS files, the git blob sha1
    for the rest. Other names (no symlinks, custom servers) cannot be checked and pass. A blob
    that passed is remembered by its identity and change time (device, inode, size, mtime and
    ctime): any write changes the ctime, which no one but the clock can set back, so a flipped
    byte with its mtime restored is hashed again.
    """
    blob = Path(os.path.realpath(path))
    name = blob.name.lower()
    if re.fullmatch(r"[0-9a-f]{64}", name):
        digest = sha256_file
    elif re.fullmatch(r"[0-9a-f]{40}", name):
        digest = git_blob_sha1
    else:
        return None
    memo_file = cache_dir / MEMO_FILE
    st = blob.stat()
    stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    memo = read_json(memo_file)
    if memo.get(str(blob)) == stamp:
        return None
    actual = digest(blob)
    if actual != name:
        return f"the cached copy of {path.name} has digest {actual}, expected {name} (truncated or corrupt)"
    memo[str(blob)] = stamp
    write_json_atomic(memo_file, memo)
    return None


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; ``{}`` when missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_json_atomic(path: Path, value: dict) -> bool:
    """Write ``value`` as JSON through a temporary file and a rename; False if the folder is read-only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value, indent=1))
        os.replace(tmp, path)
    except OSError:
        return False
    return True
