"""Where every weight file comes from: the one place that finds, downloads and verifies them.

Defaults are the sources the original GANOrigin used, so its published weights load unchanged:

==============  =====================================================  ==========================
file            default source                                          override
==============  =====================================================  ==========================
e4e + 3 pickles Hub repo ``HAMIwithHugs/gan-attribution-model``          ``GANORIGIN_REPO_ID``,
                                                                        ``GANORIGIN_REVISION``
CLIP ViT-L/14   Hub repo ``timm/vit_large_patch14_clip_224.openai``     ``GANORIGIN_CLIP_REPO_ID``,
                (open_clip's source for ``ViT-L-14`` / ``openai``)      ``GANORIGIN_CLIP_REVISION``
UFD head        UniversalFakeDetect's GitHub copy (pinned commit),      ``GANORIGIN_UFD_HEAD_URL``,
                checked against the published sha256                    ``GANORIGIN_UFD_HEAD_SHA256``
==============  =====================================================  ==========================

``GANORIGIN_WEIGHTS_DIR`` names a local folder holding any of the same file names; files found
there are used as they are, the rest come from their source. ``GANORIGIN_CACHE_DIR`` moves the
cache (default: the Hugging Face cache). ``HF_HUB_OFFLINE=1`` or ``local_files_only`` use only
what is already local.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import EntryNotFoundError, HTTPError

from .errors import WeightsFormatError, WeightsNotFoundError

logger = logging.getLogger(__name__)

ATTRIBUTION_REPO_ID = "HAMIwithHugs/gan-attribution-model"
CLIP_REPO_ID = "timm/vit_large_patch14_clip_224.openai"
UFD_HEAD_URL = (
    "https://github.com/WisconsinAIVision/UniversalFakeDetect/raw/"
    "76a0e3e60a8a06458707a625d269ba815a2e5919/pretrained_weights/fc_weights.pth"
)
UFD_HEAD_SHA256 = "477100745713bcc957beb2b40859536859b6483fd6301b3b9293151b194c7847"

E4E_FILE = "e4e_ffhq_encode.pt"
SVM_FILE = "gan_attribution_model.pkl"
SCALER_FILE = "gan_scaler.pkl"
LABEL_ENCODER_FILE = "gan_label_encoder.pkl"
UFD_HEAD_FILE = "fc_weights.pth"
# A model trained by ``ganorigin train`` (JSON + arrays, no pickle); used instead of the pickles.
SAFE_MODEL_FILE = "attribution_model.json"
SAFE_ARRAYS_FILE = "attribution_model.npz"
# open_clip's own Hub file names, in the order open_clip tries them.
CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

NETWORK_TIMEOUT_S = float(os.environ.get("GANORIGIN_NETWORK_TIMEOUT", 10))


@dataclass(frozen=True)
class WeightSources:
    """Where to look for each weight file. ``WeightSources.from_env()`` applies the env vars."""

    weights_dir: Optional[str] = None
    repo_id: str = ATTRIBUTION_REPO_ID
    revision: Optional[str] = None
    clip_repo_id: str = CLIP_REPO_ID
    clip_revision: Optional[str] = None
    ufd_head_url: str = UFD_HEAD_URL
    ufd_head_sha256: str = UFD_HEAD_SHA256
    cache_dir: Optional[str] = None
    local_files_only: bool = False

    @classmethod
    def from_env(cls, **overrides) -> "WeightSources":
        env = os.environ.get
        values = dict(
            weights_dir=env("GANORIGIN_WEIGHTS_DIR") or None,
            repo_id=env("GANORIGIN_REPO_ID") or ATTRIBUTION_REPO_ID,
            revision=env("GANORIGIN_REVISION") or None,
            clip_repo_id=env("GANORIGIN_CLIP_REPO_ID") or CLIP_REPO_ID,
            clip_revision=env("GANORIGIN_CLIP_REVISION") or None,
            ufd_head_url=env("GANORIGIN_UFD_HEAD_URL") or UFD_HEAD_URL,
            ufd_head_sha256=env("GANORIGIN_UFD_HEAD_SHA256") or UFD_HEAD_SHA256,
            cache_dir=env("GANORIGIN_CACHE_DIR") or None,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def parse(cls, source: Union[None, str, os.PathLike, "WeightSources"] = None) -> "WeightSources":
        """Turn ``from_pretrained``'s ``source`` into sources.

        ``None`` means defaults plus environment; an existing folder is a weights dir;
        ``"org/name"`` or ``"org/name@revision"`` is a Hub repo for the e4e and SVM files.
        """
        if isinstance(source, WeightSources):
            return source
        if source is None:
            return cls.from_env()
        text = os.fspath(source)
        if Path(text).expanduser().is_dir():
            return cls.from_env(weights_dir=str(Path(text).expanduser()))
        repo_id, _, revision = text.partition("@")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise WeightsNotFoundError(
                f"{text!r} is neither an existing folder nor a Hub repo id like 'org/name[@revision]'."
            )
        return cls.from_env(repo_id=repo_id, revision=revision or None)


@dataclass(frozen=True)
class ResolvedWeights:
    """Local paths of every weight file, plus where each came from."""

    e4e: Path
    svm: Optional[Path]
    scaler: Optional[Path]
    label_encoder: Optional[Path]
    clip: Path
    ufd_head: Path
    origins: dict = field(default_factory=dict)
    safe_model: Optional[Path] = None  # attribution_model.json; when set, the three pickles are None


@dataclass
class _Lookup:
    sources: WeightSources
    offline: bool
    missing: list = field(default_factory=list)
    origins: dict = field(default_factory=dict)
    unreachable: dict = field(default_factory=dict)


def resolve(sources: Optional[WeightSources] = None) -> ResolvedWeights:
    """Find or download every file; raise one error naming all that are missing.

    Raises:
        WeightsNotFoundError: with each missing file, where it was looked for and how to fix it.
        WeightsFormatError: a downloaded or local UFD head whose sha256 is wrong.
    """
    sources = sources or WeightSources.from_env()
    offline = sources.local_files_only or hf_constants.HF_HUB_OFFLINE
    lookup = _Lookup(sources, offline)
    repo = (sources.repo_id, sources.revision)
    paths = {"e4e": _from_hub(lookup, E4E_FILE, *repo), "safe_model": _safe_model(lookup)}
    if paths["safe_model"] is not None:
        _from_hub(lookup, SAFE_ARRAYS_FILE, *repo)  # next to the JSON, where the loader reads it
        paths.update(svm=None, scaler=None, label_encoder=None)
    else:
        paths.update(
            svm=_from_hub(lookup, SVM_FILE, *repo),
            scaler=_from_hub(lookup, SCALER_FILE, *repo),
            label_encoder=_from_hub(lookup, LABEL_ENCODER_FILE, *repo),
        )
    paths.update(clip=_clip_file(lookup), ufd_head=_ufd_head(lookup))
    if lookup.missing:
        raise WeightsNotFoundError(_missing_message(lookup))
    return ResolvedWeights(**paths, origins=lookup.origins)


def resolve_file(filename: str, sources: Optional[WeightSources] = None) -> Path:
    """One file of the attribution repo (e.g. the e4e checkpoint alone), found like :func:`resolve`."""
    sources = sources or WeightSources.from_env()
    lookup = _Lookup(sources, sources.local_files_only or hf_constants.HF_HUB_OFFLINE)
    path = _from_hub(lookup, filename, sources.repo_id, sources.revision)
    if lookup.missing:
        raise WeightsNotFoundError(_missing_message(lookup))
    return path


def _safe_model(lookup: _Lookup) -> Optional[Path]:
    """A trained safe-format model in the weights dir, else in the repo unless the dir has the pickles."""
    local = _local(lookup, SAFE_MODEL_FILE)
    if local or all(_local(lookup, f) for f in (SVM_FILE, SCALER_FILE, LABEL_ENCODER_FILE)):
        return local
    return _from_hub(lookup, SAFE_MODEL_FILE, lookup.sources.repo_id, lookup.sources.revision, report=False)


def _local(lookup: _Lookup, filename: str) -> Optional[Path]:
    if lookup.sources.weights_dir:
        path = Path(lookup.sources.weights_dir).expanduser() / filename
        if path.is_file():
            lookup.origins[filename] = f"local file {path}"
            return path
    return None


def _where_local(lookup: _Lookup, filename: str) -> list[str]:
    if lookup.sources.weights_dir:
        return [f"{Path(lookup.sources.weights_dir).expanduser() / filename}"]
    return []


def _from_hub(lookup: _Lookup, filename: str, repo_id: str, revision: Optional[str], *, report: bool = True):
    local = _local(lookup, filename)
    if local:
        return local
    where = _where_local(lookup, filename) + [f"Hub repo {repo_id}@{revision or 'main'}"]
    kwargs = dict(repo_id=repo_id, filename=filename, revision=revision, cache_dir=lookup.sources.cache_dir)
    try:
        # The cache first: instant, and it works offline.
        path = Path(hf_hub_download(**kwargs, local_files_only=True))
    except (EntryNotFoundError, FileNotFoundError, ValueError):
        path = None
    offline_reason = "offline and not in the cache"
    corrupt = path is not None and _cached_blob_problem(path, _cache_root(lookup.sources))
    if corrupt:
        logger.warning("%s: %s; fetching it again.", filename, corrupt)
        offline_reason, path = f"offline, and {corrupt}; run once online to fetch it again", None
    if path is None and not lookup.offline:
        reason = _unreachable(lookup, hf_constants.ENDPOINT) or _hub_file_problem(repo_id, filename, revision)
        if reason is None:
            try:
                logger.info("Downloading %s from Hub repo %s", filename, repo_id)
                path = Path(hf_hub_download(**kwargs, etag_timeout=NETWORK_TIMEOUT_S, force_download=bool(corrupt)))
            except (HTTPError, EntryNotFoundError, OSError, ValueError) as e:
                reason = _short(e)
        problem = path is not None and _cached_blob_problem(path, _cache_root(lookup.sources))
        if problem:
            _discard(path)
            raise WeightsFormatError(
                f"{filename} from Hub repo {repo_id}@{revision or 'main'} arrived corrupt ({problem}); it was "
                "deleted from the cache and not used. Retry; if it persists, the repo or a proxy serves bad bytes."
            )
        if path is None and report:
            lookup.missing.append((filename, where, reason))
    elif path is None and report:
        lookup.missing.append((filename, where, offline_reason))
    if path is not None:
        lookup.origins[filename] = f"{repo_id}@{revision or 'main'}"
    return path


def _clip_file(lookup: _Lookup) -> Optional[Path]:
    for filename in CLIP_FILES:
        local = _local(lookup, filename)
        if local:
            return local
    sources = lookup.sources
    for filename in CLIP_FILES:
        path = _from_hub(lookup, filename, sources.clip_repo_id, sources.clip_revision, report=False)
        if path:
            return path
    where = [w for f in CLIP_FILES for w in _where_local(lookup, f)]
    where.append(f"Hub repo {sources.clip_repo_id}@{sources.clip_revision or 'main'}")
    reason = "offline and not in the cache" if lookup.offline else lookup.unreachable.get(hf_constants.ENDPOINT)
    lookup.missing.append((" or ".join(CLIP_FILES), where, reason or "not found"))
    return None


def _ufd_head(lookup: _Lookup) -> Optional[Path]:
    sources = lookup.sources
    local = _local(lookup, UFD_HEAD_FILE)
    if local:
        _verify_sha256(local, sources.ufd_head_sha256)
        return local
    cache = _cache_root(sources) / "ganorigin" / f"fc_weights-{sources.ufd_head_sha256[:16]}.pth"
    where = _where_local(lookup, UFD_HEAD_FILE) + [sources.ufd_head_url, str(cache)]
    offline_reason = "offline and not in the cache"
    if cache.is_file():
        if _sha256(cache) == sources.ufd_head_sha256:
            lookup.origins[UFD_HEAD_FILE] = f"{sources.ufd_head_url} (cached)"
            return cache
        offline_reason = f"offline, and the cached copy {cache} is corrupt; run once online to fetch it again"
    if lookup.offline:
        lookup.missing.append((UFD_HEAD_FILE, where, offline_reason))
        return None
    reason = _unreachable(lookup, sources.ufd_head_url)
    if reason is None:
        try:
            logger.info("Downloading %s from %s", UFD_HEAD_FILE, sources.ufd_head_url)
            _download(sources.ufd_head_url, cache, sources.ufd_head_sha256)
            lookup.origins[UFD_HEAD_FILE] = sources.ufd_head_url
            return cache
        except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
            reason = _short(e)
    lookup.missing.append((UFD_HEAD_FILE, where, reason))
    return None


def _download(url: str, dest: Path, sha256: str) -> None:
    """Download to a temporary file, check the digest, then move into place atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=NETWORK_TIMEOUT_S) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    tmp.write(chunk)
            tmp.close()
            if digest.hexdigest() != sha256:
                raise WeightsFormatError(
                    f"{url} downloaded with sha256 {digest.hexdigest()}, expected {sha256}; "
                    "the file is corrupt or not the published one. It was not used."
                )
            os.replace(tmp.name, dest)
        finally:
            if os.path.exists(tmp.name):
                os.unlink(tmp.name)


def _hub_file_problem(repo_id: str, filename: str, revision: Optional[str]) -> Optional[str]:
    """One HEAD request, no retries: a reason string if the Hub cannot serve the file now.

    Without it a slow or failing Hub costs minutes: huggingface_hub retries a failed HEAD five
    times with a 60 s timeout and backoff.
    """
    url = hf_hub_url(repo_id, filename, revision=revision)
    try:
        get_hf_file_metadata(url, timeout=NETWORK_TIMEOUT_S)
    except (HTTPError, EntryNotFoundError, OSError, ValueError) as e:
        return f"the Hub did not serve it: {_short(e)}"
    return None


def _cached_blob_problem(path: Path, cache_root: Path) -> Optional[str]:
    """Check a Hub cache file against the digest its blob is named by; a reason string if it fails.

    The cache names each blob by the file's ETag: the sha256 for LFS files, the git blob sha1
    for the rest. Other names (no symlinks, custom servers) cannot be checked and pass. A blob
    that passed is remembered with its size and mtime, so a start does not re-hash gigabytes;
    any write to it (truncation, a flipped byte) changes those and re-checks it.
    """
    blob = Path(os.path.realpath(path))
    name = blob.name.lower()
    if re.fullmatch(r"[0-9a-f]{64}", name):
        digest = _sha256
    elif re.fullmatch(r"[0-9a-f]{40}", name):
        digest = _git_blob_sha1
    else:
        return None
    memo_file = cache_root / "ganorigin-verified-blobs.json"
    stat = blob.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo.get(str(blob)) == stamp:
        return None
    actual = digest(blob)
    if actual != name:
        return f"the cached copy {path} has digest {actual}, expected {name} (truncated or corrupt)"
    memo[str(blob)] = stamp
    try:
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)
    except OSError:  # a read-only cache still works; it is just re-hashed next time
        pass
    return None


def _discard(path: Path) -> None:
    """Remove a cache file and the blob it points to."""
    blob = Path(os.path.realpath(path))
    for p in (Path(path), blob):
        if p.is_symlink() or p.exists():
            p.unlink()


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_sha256(path: Path, expected: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise WeightsFormatError(
            f"{path} has sha256 {actual}, expected {expected} (the published UFD head). "
            "Replace it with the published fc_weights.pth."
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_root(sources: WeightSources) -> Path:
    return Path(sources.cache_dir or hf_constants.HF_HUB_CACHE).expanduser()


def _unreachable(lookup: _Lookup, url: str) -> Optional[str]:
    """Connect once to the host of ``url``; a reason string if it cannot be reached.

    huggingface_hub retries a dead connection for ~20 s; this makes "no network" fail in seconds.
    """
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if url not in lookup.unreachable:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((host, port), timeout=min(NETWORK_TIMEOUT_S, 5)).close()
            lookup.unreachable[url] = None
        except OSError as e:
            lookup.unreachable[url] = f"cannot reach {host} ({_short(e)})"
    return lookup.unreachable[url]


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def _missing_message(lookup: _Lookup) -> str:
    lines = ["GANOrigin could not find these weight files:"]
    for filename, where, reason in lookup.missing:
        lines.append(f"  - {filename}: looked in {', '.join(where)} ({reason})")
    lines += [
        "To provide them, either:",
        "  - put the files in a folder and set GANORIGIN_WEIGHTS_DIR=/that/folder "
        "(file names as listed; see weights/README.md), or",
        "  - run once with network access so they download into the cache "
        f"({_cache_root(lookup.sources)}), or",
        "  - point GANORIGIN_REPO_ID / GANORIGIN_CLIP_REPO_ID / GANORIGIN_UFD_HEAD_URL at copies you host.",
    ]
    return "\n".join(lines)

