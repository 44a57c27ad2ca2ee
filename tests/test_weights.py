"""Weight resolution against a real local Hub server: files download through huggingface_hub and the
UFD head over plain HTTP, are cached, and load again in a fresh HF_HUB_OFFLINE=1 process without a
single request; "org/name@revision" and GANORIGIN_WEIGHTS_DIR are honoured; missing weights (offline,
or the Hub unreachable) give one error naming every file, where it was looked for and the fix; a
UFD head with the wrong sha256 and a corrupt local checkpoint are WeightsFormatErrors."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ROOT, sha256_of
from ganorigin import GANOrigin, WeightsFormatError, WeightsNotFoundError, WeightSources
from ganorigin.hub import resolve
from ganorigin.testing import CLIP_FILE, COMMFOR_FILE, E4E_FILE, LABEL_ENCODER_FILE, SCALER_FILE, SVM_FILE, UFD_HEAD_FILE

ATTRIBUTION_REPO = "ganorigin-tests/weights-attribution"
CLIP_REPO = "ganorigin-tests/weights-clip"
COMMFOR_REPO = "ganorigin-tests/weights-commfor"
REPO_FILES = (E4E_FILE, SVM_FILE, SCALER_FILE, LABEL_ENCODER_FILE)
ALL_FILES = (*REPO_FILES, CLIP_FILE, UFD_HEAD_FILE, COMMFOR_FILE)


@pytest.fixture(scope="module")
def published(hub, weights_dir) -> dict:
    """The tiny weights served as three Hub repos and a raw URL; returns what a client needs."""
    commit = hub.add_repo(ATTRIBUTION_REPO, {name: weights_dir / name for name in REPO_FILES})
    hub.add_repo(CLIP_REPO, {CLIP_FILE: weights_dir / CLIP_FILE})
    hub.add_repo(COMMFOR_REPO, {COMMFOR_FILE: weights_dir / COMMFOR_FILE})
    url = hub.add_raw("ufd_fc_weights.pth", weights_dir / UFD_HEAD_FILE)
    return {"commit": commit, "url": url, "sha256": sha256_of(weights_dir / UFD_HEAD_FILE)}


def _sources(published, cache_dir: Path, **changes) -> WeightSources:
    return WeightSources(repo_id=ATTRIBUTION_REPO, clip_repo_id=CLIP_REPO, commfor_repo_id=COMMFOR_REPO,
                         ufd_head_url=published["url"],
                         ufd_head_sha256=published["sha256"], cache_dir=str(cache_dir), **changes)


def _env(sources: WeightSources, **extra) -> dict:
    """This process's environment plus ``sources`` as GANORIGIN_* variables, for a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANORIGIN_") and k != "HF_HUB_OFFLINE"}
    env.update(GANORIGIN_REPO_ID=sources.repo_id, GANORIGIN_CLIP_REPO_ID=sources.clip_repo_id,
               GANORIGIN_COMMFOR_REPO_ID=sources.commfor_repo_id,
               GANORIGIN_UFD_HEAD_URL=sources.ufd_head_url, GANORIGIN_UFD_HEAD_SHA256=sources.ufd_head_sha256,
               GANORIGIN_CACHE_DIR=sources.cache_dir, PYTHONPATH=str(ROOT), **extra)
    return env


def _run_child(code: str, env: dict) -> subprocess.CompletedProcess:
    # The timeout only stops a hung child from hanging the suite; nothing asserts on speed.
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


LOAD_IN_CHILD = """
from ganorigin import GANOrigin
model = GANOrigin.from_pretrained(device="cpu")
print(sorted(model.weights.origins.items()))
print("fake probability", model.predict(bytes.fromhex({png!r})).fake_probability)
"""


def _tiny_png() -> str:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 90, 60)).save(buffer, "PNG")
    return buffer.getvalue().hex()


def test_download_cache_then_offline_load_in_a_new_process(hub, published, tmp_path):
    sources = _sources(published, tmp_path / "cache")
    before = len(hub.requests)
    model = GANOrigin.from_pretrained(sources, device="cpu")
    requests = hub.requests[before:]
    gets = [path for method, path in requests if method == "GET"]
    for name in REPO_FILES:
        assert any(p.startswith(f"/{ATTRIBUTION_REPO}/resolve/") and p.endswith(f"/{name}") for p in gets), name
    assert any(p.startswith(f"/{CLIP_REPO}/resolve/") and p.endswith(f"/{CLIP_FILE}") for p in gets)
    assert any(p.startswith(f"/{COMMFOR_REPO}/resolve/") and p.endswith(f"/{COMMFOR_FILE}") for p in gets)
    assert "/raw/ufd_fc_weights.pth" in gets
    assert model.weights.origins[E4E_FILE] == f"{ATTRIBUTION_REPO}@main"
    for path in (model.weights.e4e, model.weights.clip, model.weights.ufd_head, model.weights.commfor):
        assert Path(path).is_file() and (tmp_path / "cache") in Path(path).parents

    before = len(hub.requests)
    child = _run_child(LOAD_IN_CHILD.format(png=_tiny_png()), _env(sources, HF_HUB_OFFLINE="1"))
    assert child.returncode == 0, child.stderr
    assert "fake probability" in child.stdout
    assert hub.requests[before:] == []


def test_repo_at_revision_string(hub, published, tmp_path, monkeypatch):
    parsed = WeightSources.parse("org/name@v1.2")
    assert (parsed.repo_id, parsed.revision) == ("org/name", "v1.2")
    assert WeightSources.parse("org/name").revision is None
    assert WeightSources.parse(str(tmp_path)).weights_dir == str(tmp_path)
    monkeypatch.setenv("GANORIGIN_WEIGHTS_DIR", str(tmp_path))
    assert WeightSources.parse("org/name").weights_dir is None, "a named repo replaces the folder, as a folder does"
    assert WeightSources.parse(None).weights_dir == str(tmp_path)
    monkeypatch.delenv("GANORIGIN_WEIGHTS_DIR")
    for bad in ("just-a-name", "a/b/c", "/org@rev"):
        with pytest.raises(WeightsNotFoundError, match="Hub repo id like 'org/name"):
            WeightSources.parse(bad)

    for key, value in _env(_sources(published, tmp_path / "cache")).items():
        if key.startswith("GANORIGIN_"):
            monkeypatch.setenv(key, value)
    before = len(hub.requests)
    model = GANOrigin.from_pretrained(f"{ATTRIBUTION_REPO}@{published['commit']}", device="cpu")
    assert model.weights.origins[E4E_FILE] == f"{ATTRIBUTION_REPO}@{published['commit']}"
    assert any(published["commit"] in path and path.endswith(E4E_FILE) for _, path in hub.requests[before:])


def test_weights_dir_takes_precedence(hub, weights_dir, published, tmp_path, monkeypatch):
    monkeypatch.setenv("GANORIGIN_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setenv("GANORIGIN_REPO_ID", "ganorigin-tests/not-published")
    monkeypatch.setenv("GANORIGIN_UFD_HEAD_SHA256", published["sha256"])
    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path / "cache"))
    before = len(hub.requests)
    files = resolve(WeightSources.from_env())
    for path in (files.e4e, files.svm, files.scaler, files.label_encoder, files.clip, files.ufd_head, files.commfor):
        assert path.parent == weights_dir
    # Origins name the source, never a server path (they are shown by /health).
    assert set(files.origins.values()) == {"local folder (GANORIGIN_WEIGHTS_DIR)"}
    assert hub.requests[before:] == []


def _assert_names_every_file_and_the_fix(message: str) -> None:
    for name in ALL_FILES:
        assert name in message, name
    assert f"Hub repo {ATTRIBUTION_REPO}@main" in message and f"Hub repo {CLIP_REPO}@main" in message
    assert f"Hub repo {COMMFOR_REPO}@main" in message
    assert "GANORIGIN_WEIGHTS_DIR" in message


def test_missing_weights_offline(hub, published, tmp_path):
    sources = _sources(published, tmp_path / "empty-cache", local_files_only=True, weights_dir=str(tmp_path / "none"))
    before = len(hub.requests)
    with pytest.raises(WeightsNotFoundError) as info:
        GANOrigin.from_pretrained(sources, device="cpu")
    message = str(info.value)
    _assert_names_every_file_and_the_fix(message)
    assert str(tmp_path / "none" / E4E_FILE) in message and published["url"] in message
    assert "offline and not in the cache" in message
    assert f"The weights folder {tmp_path / 'none'} (GANORIGIN_WEIGHTS_DIR or --weights) does not exist." in message
    assert hub.requests[before:] == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_weights_when_the_hub_is_unreachable(hub, published, tmp_path):
    port = _closed_port()
    dead = f"http://127.0.0.1:{port}"
    sources = replace(_sources(published, tmp_path / "empty-cache"), ufd_head_url=f"{dead}/fc_weights.pth")
    code = (
        "from ganorigin import GANOrigin, WeightsNotFoundError\n"
        "try:\n    GANOrigin.from_pretrained(device='cpu')\n"
        "except WeightsNotFoundError as e:\n    print(e)\n    raise SystemExit(3)\n"
    )
    before = len(hub.requests)
    child = _run_child(code, _env(sources, HF_ENDPOINT=dead))
    assert child.returncode == 3, child.stderr
    _assert_names_every_file_and_the_fix(child.stdout)
    assert "cannot reach 127.0.0.1" in child.stdout and str(port) in child.stdout
    assert hub.requests[before:] == []


def test_ufd_head_with_wrong_sha256_is_refused_and_not_cached(hub, published, weights_dir, tmp_path):
    wrong = tmp_path / "not_the_head.pth"
    head = bytearray((weights_dir / UFD_HEAD_FILE).read_bytes())
    head[len(head) // 2] ^= 0xFF  # the published size, another digest
    wrong.write_bytes(bytes(head))
    sources = replace(_sources(published, tmp_path / "cache"), ufd_head_url=hub.add_raw("tampered_fc_weights.pth", wrong))
    with pytest.raises(WeightsFormatError, match=published["sha256"]) as info:
        resolve(sources)
    assert "tampered_fc_weights.pth" in str(info.value) and sha256_of(wrong) in str(info.value)
    head_cache = tmp_path / "cache" / "ganorigin"
    assert not head_cache.exists() or list(head_cache.iterdir()) == []


def test_a_head_digest_set_in_place_of_the_published_one_is_named_in_the_refusal(tmp_path):
    """With GANORIGIN_UFD_HEAD_SHA256 set (for demo weights) and the published head in the folder, the
    message must not say to replace the published file with the published file."""
    from ganorigin.hub.integrity import verify_sha256

    head = tmp_path / "fc_weights.pth"
    head.write_bytes(b"the published head")
    published, other = sha256_of(head), "0" * 64
    advice = {published: "this file is the published one: unset it to use this file.",
              "f" * 64: "set it to this file's digest, or unset it for the published file.",
              None: "Replace it with the published file"}
    for known, words in advice.items():
        with pytest.raises(WeightsFormatError) as info:
            verify_sha256(head, other, "fc_weights.pth in the weights folder", published=known)
        assert words in str(info.value) and f"has sha256 {published}, expected {other}" in str(info.value)
        assert ("GANORIGIN_UFD_HEAD_SHA256" in str(info.value)) == (known is not None)
    verify_sha256(head, published, "fc_weights.pth", published=published)  # the right file passes


def test_corrupt_local_e4e_checkpoint(weights_dir, published, tmp_path):
    folder = tmp_path / "weights"
    shutil.copytree(weights_dir, folder)
    data = (folder / E4E_FILE).read_bytes()
    (folder / E4E_FILE).write_bytes(data[: len(data) // 3])
    sources = WeightSources(weights_dir=str(folder), ufd_head_sha256=published["sha256"], local_files_only=True)
    with pytest.raises(WeightsFormatError, match=E4E_FILE):
        GANOrigin.from_pretrained(sources, device="cpu")
