"""Golden scores of the real Community Forensics weights (issue 17).

The authors' notebook (``eval_using_huggingface.ipynb`` in JeongsooP/Community-Forensics) records
the 384 px model's probabilities on the five DALL·E 2 images of the repository's ``test_images/``;
GANOrigin's detector must give the same to 1e-3 (exact fp32), and its fast path must stay within
the probe's bound of them.

Runs only where huggingface.co is reachable (the weights, OwensLab/commfor-model-384, are
downloaded) and the images are in the folder named by ``GANORIGIN_COMMFOR_TEST_IMAGES`` (the
repository's ``test_images/``; MIT, 7 MB, so not committed here).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import hf_hub_download

from ganorigin import accel
from ganorigin.accel.probe import MAX_COMMFOR_PROBABILITY_DELTA
from ganorigin.factory import commfor_scores, load_commfor
from ganorigin.hub.registry import SOURCES, WEIGHTS
from ganorigin.images import load_image

GOLDEN = {"00000274.png": 0.9988, "00000420.png": 0.9878, "00000845.png": 0.9569, "00000916.png": 0.9516,
          "00000989.png": 0.7860}
HUB = "huggingface.co"


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    if not _reachable(HUB):
        pytest.skip(f"{HUB} is not reachable from here, so the real Community Forensics weights "
                    f"({SOURCES['commfor'].repo_id}) cannot be downloaded")
    folder = Path(os.environ.get("GANORIGIN_COMMFOR_TEST_IMAGES", "")).expanduser()
    if not all((folder / name).is_file() for name in GOLDEN):
        pytest.skip("GANORIGIN_COMMFOR_TEST_IMAGES does not name a folder with the five test_images/*.png "
                    "of JeongsooP/Community-Forensics")
    path = hf_hub_download(SOURCES["commfor"].repo_id, WEIGHTS["commfor.vit_small_patch16_384"].filename,
                           endpoint=f"https://{HUB}", cache_dir=tmp_path_factory.mktemp("hub-cache"))
    return load_commfor(Path(path)), [load_image(folder / name) for name in GOLDEN]


def test_real_weights_give_the_notebooks_scores(golden):
    model, images = golden
    np.testing.assert_allclose(commfor_scores(model, images), list(GOLDEN.values()), rtol=0, atol=1e-3)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_the_fast_path_stays_within_its_bound_of_the_notebooks_scores(golden):
    model, images = golden
    fast = accel.fast_commfor(model, torch.device("cpu"), "bf16")
    np.testing.assert_allclose(commfor_scores(fast, images), list(GOLDEN.values()), rtol=0,
                               atol=1e-3 + MAX_COMMFOR_PROBABILITY_DELTA)
