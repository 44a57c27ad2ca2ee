"""Find, download and verify the weight files of :mod:`ganorigin.hub.registry`.

``GANORIGIN_WEIGHTS_DIR`` names a local folder holding any of the registry's file names; files
found there are used as they are, the rest come from their source into the cache
(``GANORIGIN_CACHE_DIR``, default the Hugging Face cache). ``HF_HUB_OFFLINE=1`` or
``local_files_only`` use only what is already local. Every download is size-capped and
rate-guarded (:mod:`ganorigin.hub.download`); every cached file is checked against its digest.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import urllib.error
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import EntryNotFoundError, HTTPError

from ..errors import WeightsFormatError, WeightsNotFoundError
from . import download
from .integrity import cache_root, cached_blob_problem, sha256_file, verify_sha256
from .registry import PICKLE_FILES, TRAINED_FILES, WEIGHTS, WeightFile, filenames
from .sources import ResolvedWeights, WeightSources

logger = logging.getLogger("ganorigin.weights")

# A weights folder holding this file was written by `python -m ganorigin demo-weights`: random
# test weights, which the app and the API say plainly.
TEST_WEIGHTS_MARKER = "TEST_WEIGHTS.json"


@dataclass
class _Lookup:
    sources: WeightSources
    offline: bool
    missing: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # not about one file, e.g. a weights folder that does not exist
    origins: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)  # file name -> why it could not be had
    unreachable: dict = field(default_factory=dict)  # URL -> why its host cannot be reached, or None


def resolve(sources: Optional[WeightSources] = None) -> ResolvedWeights:
    """Find or download every file the pipeline needs; raise one error naming all that are missing.

    Raises:
        WeightsNotFoundError: with each missing file, where it was looked for and how to fix it.
        WeightsFormatError: a file whose digest is wrong.
    """
    lookup = _start(sources)
    names = ["clip.vit_large_patch14_openai", "ufd.fc", "e4e.ffhq_encode", "commfor.vit_small_patch16_384"]
    paths = {name: _find(lookup, WEIGHTS[name]) for name in names}
    trained = _trained_model(lookup)
    if trained is not None:
        paths.update(zip(TRAINED_FILES, trained))
    else:
        paths.update((name, _find(lookup, WEIGHTS[name])) for name in PICKLE_FILES)
    if lookup.missing or lookup.problems:
        raise WeightsNotFoundError(_missing_message(lookup))
    return ResolvedWeights(paths, lookup.origins, test_weights=holds_test_weights(lookup.sources))


def holds_test_weights(sources: WeightSources) -> bool:
    """Whether the weights folder of ``sources`` holds random test weights (``ganorigin demo-weights``)."""
    folder = sources.weights_dir
    return bool(folder) and (Path(folder).expanduser() / TEST_WEIGHTS_MARKER).is_file()


def resolve_file(name: str, sources: Optional[WeightSources] = None) -> Path:
    """One registry file (e.g. ``"e4e.ffhq_encode"`` alone), found like :func:`resolve`."""
    lookup = _start(sources)
    path = _find(lookup, WEIGHTS[name])
    if lookup.missing or lookup.problems:
        raise WeightsNotFoundError(_missing_message(lookup))
    return path


def _start(sources: Optional[WeightSources]) -> _Lookup:
    sources = sources or WeightSources.from_env()
    download.guard_hub_downloads()
    lookup = _Lookup(sources, sources.local_files_only or hf_constants.HF_HUB_OFFLINE)
    if sources.weights_dir and not Path(sources.weights_dir).expanduser().is_dir():
        lookup.problems.append(f"The weights folder {sources.weights_dir} (GANORIGIN_WEIGHTS_DIR or --weights) "
                               "does not exist.")
    return lookup


def _trained_model(lookup: _Lookup) -> Optional[list]:
    """A trained model's two files, from the weights dir, else from the repo unless the dir has the pickles."""
    records = [WEIGHTS[name] for name in TRAINED_FILES]
    local = [_local(lookup, record.filename) for record in records]
    if all(local):
        return local
    if all(_local(lookup, WEIGHTS[name].filename) for name in PICKLE_FILES):
        return None
    found = [_from_hub(lookup, record.filename, record.source) for record in records]
    return found if all(found) else None


def _find(lookup: _Lookup, record: WeightFile) -> Optional[Path]:
    for filename in filenames(record):
        local = _local(lookup, filename)
        if local:
            if record.source == "ufd":
                verify_sha256(local, lookup.sources.ufd_head_sha256, f"{filename} in the weights folder",
                              published=record.sha256)
            return local
    if record.source == "ufd":
        return _url_file(lookup, record)
    for filename in filenames(record):
        path = _from_hub(lookup, filename, record.source)
        if path:
            return path
    repo_id, revision = lookup.sources.hub_location(record.source)
    where = _where_local(lookup, record) + [f"Hub repo {repo_id}@{revision or 'main'}"]
    reason = next((lookup.reasons[f] for f in filenames(record) if f in lookup.reasons), "not found")
    lookup.missing.append((" or ".join(filenames(record)), where, reason))
    return None


def _local(lookup: _Lookup, filename: str) -> Optional[Path]:
    if lookup.sources.weights_dir:
        path = Path(lookup.sources.weights_dir).expanduser() / filename
        if path.is_file():
            lookup.origins[filename] = "local folder (GANORIGIN_WEIGHTS_DIR)"
            return path
    return None


def _where_local(lookup: _Lookup, record: WeightFile) -> list:
    if not lookup.sources.weights_dir:
        return []
    return [str(Path(lookup.sources.weights_dir).expanduser() / name) for name in filenames(record)]


def _from_hub(lookup: _Lookup, filename: str, source: str) -> Optional[Path]:
    """A file of a Hub source: the cache first (checked against its digest), else a download."""
    repo_id, revision = lookup.sources.hub_location(source)
    kwargs = dict(repo_id=repo_id, filename=filename, revision=revision, cache_dir=lookup.sources.cache_dir)
    try:
        path = Path(hf_hub_download(**kwargs, local_files_only=True))
    except (EntryNotFoundError, FileNotFoundError, ValueError):
        path = None
    corrupt = path is not None and cached_blob_problem(path, cache_root(lookup.sources.cache_dir))
    if corrupt:
        logger.warning("%s: %s; fetching it again.", filename, corrupt)
        path = None
    if path is None and lookup.offline:
        lookup.reasons[filename] = (f"offline, and {corrupt}; run once online to fetch it again" if corrupt
                                    else "offline and not in the cache")
    elif path is None:
        path = _download_from_hub(lookup, kwargs, force=bool(corrupt))
    if path is not None:
        lookup.origins[filename] = f"{repo_id}@{revision or 'main'}"
    return path


def _download_from_hub(lookup: _Lookup, kwargs: dict, force: bool) -> Optional[Path]:
    filename, repo_id, revision = kwargs["filename"], kwargs["repo_id"], kwargs["revision"]
    reason = _unreachable(lookup, hf_constants.ENDPOINT) or _hub_file_problem(repo_id, filename, revision)
    path = None
    if reason is None:
        try:
            logger.info("Downloading %s from Hub repo %s", filename, repo_id)
            path = Path(hf_hub_download(**kwargs, etag_timeout=download.NETWORK_TIMEOUT_S, force_download=force))
        except (HTTPError, EntryNotFoundError, OSError, ValueError) as e:
            reason = _short(e)
    problem = path is not None and cached_blob_problem(path, cache_root(lookup.sources.cache_dir))
    if problem:
        _discard(path)
        raise WeightsFormatError(
            f"{filename} from Hub repo {repo_id}@{revision or 'main'} arrived corrupt ({problem}); it was "
            "deleted from the cache and not used. Retry; if it persists, the repo or a proxy serves bad bytes."
        )
    if path is None:
        lookup.reasons[filename] = reason
    return path


def _url_file(lookup: _Lookup, record: WeightFile) -> Optional[Path]:
    """A file published at a pinned URL (the UFD head), cached under its digest's name."""
    sources = lookup.sources
    sha256, url = sources.ufd_head_sha256, sources.ufd_head_url
    cache = cache_root(sources.cache_dir) / "ganorigin" / f"{Path(record.filename).stem}-{sha256[:16]}.pth"
    where = _where_local(lookup, record) + [url, str(cache)]
    reason = "offline and not in the cache"
    if cache.is_file():
        if sha256_file(cache) == sha256:
            lookup.origins[record.filename] = f"{url} (cached)"
            return cache
        reason = f"offline, and the cached copy {cache.name} is corrupt; run once online to fetch it again"
    if lookup.offline:
        lookup.missing.append((record.filename, where, reason))
        return None
    reason = _unreachable(lookup, url)
    if reason is None:
        try:
            logger.info("Downloading %s from %s", record.filename, url)
            max_bytes = record.size if sha256 == record.sha256 else None
            download.download_url(url, cache, sha256, max_bytes=max_bytes)
            lookup.origins[record.filename] = url
            return cache
        except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
            reason = _short(e)
    lookup.missing.append((record.filename, where, reason))
    return None


def _hub_file_problem(repo_id: str, filename: str, revision: Optional[str]) -> Optional[str]:
    """One HEAD request, no retries: a reason string if the Hub cannot serve the file now.

    Without it a slow or failing Hub costs minutes: huggingface_hub retries a failed HEAD five
    times with a 60 s timeout and backoff.
    """
    url = hf_hub_url(repo_id, filename, revision=revision)
    try:
        get_hf_file_metadata(url, timeout=download.NETWORK_TIMEOUT_S)
    except (HTTPError, EntryNotFoundError, OSError, ValueError) as e:
        return f"the Hub did not serve it: {_short(e)}"
    return None


def _discard(path: Path) -> None:
    """Remove a cache file and the blob it points to."""
    blob = Path(os.path.realpath(path))
    for p in (Path(path), blob):
        if p.is_symlink() or p.exists():
            p.unlink()


def _unreachable(lookup: _Lookup, url: str) -> Optional[str]:
    """Connect once to the host of ``url``; a reason string if it cannot be reached.

    huggingface_hub retries a dead connection for ~20 s; this makes "no network" fail in seconds.
    """
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if url not in lookup.unreachable:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((host, port), timeout=min(download.NETWORK_TIMEOUT_S, 5)).close()
            lookup.unreachable[url] = None
        except OSError as e:
            lookup.unreachable[url] = f"cannot reach {host} ({_short(e)})"
    return lookup.unreachable[url]


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def _missing_message(lookup: _Lookup) -> str:
    lines = list(lookup.problems)
    if lookup.missing:
        lines.append("GANOrigin could not find these weight files:")
    for filename, where, reason in lookup.missing:
        lines.append(f"  - {filename}: looked in {', '.join(where)} ({reason})")
    lines += [
        "To provide them, either:",
        "  - put the files in one folder and set GANORIGIN_WEIGHTS_DIR=/that/folder, or give a CLI command "
        "--weights /that/folder (which replaces the variable); file names as listed, see weights/README.md, or",
        "  - run once with network access so they download into the cache "
        f"({cache_root(lookup.sources.cache_dir)}), or",
        "  - point GANORIGIN_REPO_ID / GANORIGIN_CLIP_REPO_ID / GANORIGIN_COMMFOR_REPO_ID / GANORIGIN_UFD_HEAD_URL "
        "at copies you host, or",
        "  - try the app on random test weights: python -m ganorigin demo-weights DIR (prints the command).",
    ]
    return "\n".join(lines)
