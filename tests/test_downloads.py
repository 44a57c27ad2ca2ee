"""Downloads are verified, cached files are checked, and a broken Hub fails clearly and recovers.

Everything talks to the real local Hub server (tests/hub_server.py): the e4e checkpoint and the
three pickles come from a Hub repo, the UFD head from a plain URL, CLIP from a local folder.
Proves: a UFD head with the wrong digest is refused and nothing is cached; a truncated or
corrupted cached file is re-fetched when online and named when offline; a Hub that is slow,
answers 500, or drops the connection mid-file gives a clear error within a bounded time (a
watchdog thread, not a timing assertion) and a later retry succeeds; an offline start with an
empty cache fails at once without a single request.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

from ganorigin import WeightSources, WeightsFormatError, WeightsNotFoundError
from ganorigin.hub import download as download_module
from ganorigin.hub import resolve
from ganorigin.testing import CLIP_FILE, COMMFOR_FILE, E4E_FILE, LABEL_ENCODER_FILE, SCALER_FILE, SVM_FILE, UFD_HEAD_FILE

REPO = "ganorigin-tests/downloads"
HUB_FILES = (E4E_FILE, SVM_FILE, SCALER_FILE, LABEL_ENCODER_FILE)
HANG_LIMIT_S = 120  # a hang, not a slow run: the watchdog's only job is to catch "never returns"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def published(hub, weights_dir, tmp_path_factory):
    """Publish the test weights: four files in a Hub repo, the UFD head at a URL, CLIP and Community Forensics local."""
    hub.add_repo(REPO, {name: weights_dir / name for name in HUB_FILES})
    head_url = hub.add_raw("downloads-fc_weights.pth", weights_dir / UFD_HEAD_FILE)
    clip_only = tmp_path_factory.mktemp("clip_only")
    shutil.copyfile(weights_dir / CLIP_FILE, clip_only / CLIP_FILE)
    shutil.copyfile(weights_dir / COMMFOR_FILE, clip_only / COMMFOR_FILE)
    return WeightSources(
        weights_dir=str(clip_only),
        repo_id=REPO,
        ufd_head_url=head_url,
        ufd_head_sha256=_sha256(weights_dir / UFD_HEAD_FILE),
    )


@pytest.fixture
def sources(published, tmp_path):
    """The published sources with a fresh, empty cache."""
    return replace(published, cache_dir=str(tmp_path / "cache"))


def _check_published(files, weights_dir: Path) -> None:
    for name, path in ((E4E_FILE, files.e4e), (SVM_FILE, files.svm), (SCALER_FILE, files.scaler),
                       (LABEL_ENCODER_FILE, files.label_encoder), (UFD_HEAD_FILE, files.ufd_head)):
        assert _sha256(path) == _sha256(weights_dir / name), f"{name} differs from the published file"


def _resolve_with_watchdog(sources: WeightSources):
    """Run ``resolve`` in a thread; returns (result, error). Fails the test if it never returns."""
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = resolve(sources)
        except Exception as e:  # handed back to the test, which checks its type
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_LIMIT_S)
    assert not thread.is_alive(), f"resolve() still running after {HANG_LIMIT_S} s: it hangs"
    return outcome.get("result"), outcome.get("error")


def _gets(hub, filename: str) -> int:
    return sum(1 for method, path in hub.requests if method == "GET" and path.endswith("/" + filename))


def test_download_is_verified_and_cached(sources, weights_dir, hub):
    files = resolve(sources)
    _check_published(files, weights_dir)
    # The cache names each blob by its sha256 ETag, which is what cached files are checked against.
    assert Path(os.path.realpath(files.e4e)).name == _sha256(weights_dir / E4E_FILE)
    before = len(hub.requests)
    offline = resolve(replace(sources, local_files_only=True))
    assert len(hub.requests) == before
    _check_published(offline, weights_dir)


def test_a_downloaded_file_gets_the_permissions_the_umask_allows(sources):
    """Not the owner-only mode of the temporary file it was written to: another user sharing the cache
    (a Space's or a container's) can read it."""
    umask = os.umask(0o022)
    try:
        files = resolve(sources)
    finally:
        os.umask(umask)
    assert files.ufd_head.stat().st_mode & 0o777 == 0o644


def test_ufd_head_with_wrong_digest_is_refused_and_not_cached(sources):
    wrong = replace(sources, ufd_head_sha256="0" * 64)
    with pytest.raises(WeightsFormatError, match="sha256") as raised:
        resolve(wrong)
    assert "not used" in str(raised.value)
    cached = list((Path(sources.cache_dir) / "ganorigin").iterdir())
    assert cached == [], f"a refused download left {cached}"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.parametrize("filename", [E4E_FILE, SVM_FILE])
def test_corrupt_cached_hub_file_is_refetched_online(sources, weights_dir, hub, damage, filename):
    files = resolve(sources)
    cached = files.e4e if filename == E4E_FILE else files.svm
    _damage(Path(os.path.realpath(cached)), damage)
    gets = _gets(hub, filename)
    again = resolve(sources)
    assert _gets(hub, filename) == gets + 1, "the corrupt file was not downloaded again"
    _check_published(again, weights_dir)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_cached_hub_file_is_reported_offline(sources, hub, damage):
    files = resolve(sources)
    _damage(Path(os.path.realpath(files.svm)), damage)
    before = len(hub.requests)
    with pytest.raises(WeightsNotFoundError) as raised:
        resolve(replace(sources, local_files_only=True))
    message = str(raised.value)
    print(message)
    assert SVM_FILE in message and "corrupt" in message and "online" in message
    assert len(hub.requests) == before


def test_corrupt_cached_ufd_head_is_refetched_online_and_reported_offline(sources, weights_dir, hub):
    files = resolve(sources)
    _damage(files.ufd_head, "truncate")
    with pytest.raises(WeightsNotFoundError, match=f"(?s){UFD_HEAD_FILE}.*corrupt"):
        resolve(replace(sources, local_files_only=True))
    _check_published(resolve(sources), weights_dir)


@pytest.mark.parametrize("fault", ["slow", "error", "drop"])
def test_faulty_hub_fails_clearly_then_retry_succeeds(sources, weights_dir, hub, monkeypatch, fault):
    hub.slow_seconds = 3.0
    hub.fault = fault
    with monkeypatch.context() as short_timeouts:
        # What GANORIGIN_NETWORK_TIMEOUT=1 and HF_HUB_DOWNLOAD_TIMEOUT=2 set at import time; the
        # retry below runs with the defaults, so a busy CI box cannot make it time out.
        short_timeouts.setattr(download_module, "NETWORK_TIMEOUT_S", 1.0)
        short_timeouts.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 2)
        try:
            result, error = _resolve_with_watchdog(sources)
        finally:
            hub.fault = None
    assert result is None
    assert isinstance(error, (WeightsNotFoundError, WeightsFormatError)), f"unclear error: {error!r}"
    message = str(error)
    print(f"[{fault}] {message}")
    assert E4E_FILE in message or UFD_HEAD_FILE in message
    retry, error = _resolve_with_watchdog(sources)
    assert error is None, f"retry after the fault cleared failed: {error!r}"
    _check_published(retry, weights_dir)


def test_offline_start_with_empty_cache_fails_fast_without_network(sources, hub, tmp_path):
    before = len(hub.requests)
    with pytest.raises(WeightsNotFoundError, match="offline and not in the cache"):
        resolve(replace(sources, local_files_only=True))
    assert len(hub.requests) == before

    # The same through the environment, in a fresh process: HF_HUB_OFFLINE=1 is read at import.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANORIGIN_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty_hf_home"), PYTHONPATH=str(Path(__file__).parents[1]))
    code = (
        "from ganorigin import GANOrigin, WeightsNotFoundError\n"
        "try:\n    GANOrigin.from_pretrained()\nexcept WeightsNotFoundError as e:\n    print(e)\n"
        "else:\n    raise SystemExit('loaded without weights')\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=HANG_LIMIT_S)
    print(f"offline start with an empty cache explained itself in {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, done.stderr
    assert "offline and not in the cache" in done.stdout and "GANORIGIN_WEIGHTS_DIR" in done.stdout
    assert len(hub.requests) == before


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])


def test_examples_that_cannot_be_downloaded_are_one_log_line(tmp_path, caplog):
    import logging

    from ganorigin.examples import EXAMPLES, fetch_examples

    with caplog.at_level(logging.INFO, logger="ganorigin.examples"):
        paths = fetch_examples(WeightSources(cache_dir=str(tmp_path)), base_url="http://127.0.0.1:9")  # refused
    lines = [r.getMessage() for r in caplog.records if r.name == "ganorigin.examples"]
    assert paths == [] and len(lines) == 1, lines
    assert lines[0].startswith(f"{len(EXAMPLES)} of {len(EXAMPLES)} example images could not be downloaded")
    assert all(example.filename in lines[0] for example in EXAMPLES)
