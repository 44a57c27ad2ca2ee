"""Shared fixtures: test weights in the real formats, the real dev images, the local Hub.

The environment is set before anything imports huggingface_hub (it reads HF_ENDPOINT and
HF_HUB_OFFLINE at import time): the whole session talks to the local Hub server, never the web.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEV_DATA = SHARED / "data" / "dev"
REAL_UFD_HEAD = SHARED / "reference" / "ufd_fc_weights.pth"
E4E_MANIFEST = SHARED / "reference" / "e4e_encoder_manifest.json"

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer  # noqa: E402

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="ganorigin-tests-"))
HUB = HubServer(_SESSION_TMP / "hub").start()
os.environ["HF_ENDPOINT"] = HUB.url
os.environ["HF_HOME"] = str(_SESSION_TMP / "hf_home")
os.environ["XDG_CACHE_HOME"] = str(_SESSION_TMP / "xdg_cache")  # e.g. the fast path's precision checks
os.environ.pop("HF_HUB_OFFLINE", None)
for _name in list(os.environ):  # the package's settings; the test run's own knobs (GANORIGIN_*FUZZ_N) stay
    if _name.startswith("GANORIGIN_") and not _name.endswith("FUZZ_N"):
        del os.environ[_name]

TEST_REPO = "ganorigin-tests/tiny-attribution"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def hub():
    """The local Hub-compatible server (HTTP on 127.0.0.1) every download in the tests goes to."""
    return HUB


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """A folder of tiny random weights in the real formats; the UFD head is the real one when
    ../shared is present."""
    from ganorigin.hub import TEST_WEIGHTS_MARKER
    from ganorigin.testing import write_test_weights

    head = REAL_UFD_HEAD if REAL_UFD_HEAD.is_file() else None
    folder = write_test_weights(_SESSION_TMP / "weights", size="tiny", seed=0, ufd_head=head)
    (folder / TEST_WEIGHTS_MARKER).write_text(json.dumps({"test_weights": True}))  # the app must say so
    return folder


@pytest.fixture(scope="session")
def weights_env(weights_dir) -> dict:
    """Environment variables that point GANOrigin (in this process or a child) at ``weights_dir``."""
    return {
        "GANORIGIN_WEIGHTS_DIR": str(weights_dir),
        "GANORIGIN_UFD_HEAD_SHA256": sha256_of(weights_dir / "fc_weights.pth"),
    }


@pytest.fixture(scope="session")
def sources(weights_dir, weights_env):
    from ganorigin import WeightSources

    return WeightSources(weights_dir=str(weights_dir), ufd_head_sha256=weights_env["GANORIGIN_UFD_HEAD_SHA256"],
                         local_files_only=True)


@pytest.fixture(scope="session")
def model(sources):
    """GANOrigin on the tiny test weights, CPU."""
    from ganorigin import GANOrigin

    return GANOrigin.from_pretrained(sources, device="cpu")


@pytest.fixture(scope="session")
def dev_manifest() -> list[dict]:
    """Rows of ../shared/data/dev/manifest.csv; skips when the shared data is absent."""
    import csv

    manifest = DEV_DATA / "manifest.csv"
    if not manifest.is_file():
        pytest.skip("../shared/data/dev is not present")
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def dev_images(dev_manifest) -> dict:
    """class -> sorted list of image paths in the dev set."""
    by_class: dict = {}
    for row in dev_manifest:
        by_class.setdefault(row["class"], []).append(DEV_DATA / row["path"])
    return {k: sorted(v) for k, v in by_class.items()}


@pytest.fixture
def two_dev_images(dev_sample, tmp_path) -> Path:
    """A folder holding two dev images in one class folder, as a benchmark's ``--images-dir``."""
    folder = tmp_path / "images" / "class"
    folder.mkdir(parents=True)
    for path in dev_sample[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder.parent


@pytest.fixture(scope="session")
def dev_sample(dev_images, dev_manifest) -> list[Path]:
    """A small, varied sample: per class a PNG and a JPEG, including the smallest and largest."""
    rows = sorted(dev_manifest, key=lambda r: int(r["width"]) * int(r["height"]))
    picked = {rows[0]["path"], rows[-1]["path"]}
    for cls in sorted(dev_images):
        for fmt in ("PNG", "JPEG"):
            match = [r["path"] for r in rows if r["class"] == cls and r["format"] == fmt]
            if match:
                picked.add(match[len(match) // 2])
    return [DEV_DATA / p for p in sorted(picked)]
