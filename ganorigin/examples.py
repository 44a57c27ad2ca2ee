"""Example images for the app. The project ships none (their licences are not ours to grant):
they are downloaded on first launch from their public sources, checked against a recorded
sha256, and cached beside the weights. Offline, there are simply no examples."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from huggingface_hub import constants as hf_constants

from .errors import GANOriginError
from .hub import WeightSources
from .hub.download import download_url
from .hub.integrity import cache_root

MAX_EXAMPLE_BYTES = 8 * 2**20  # each example is a few hundred KB

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    filename: str
    url: str
    sha256: str
    caption: str
    licence: str


_LAGO = "https://raw.githubusercontent.com/Flake22/perception-experiment/d9a8f11152a5fcaf240175b437940191a10a744e/Datasets"
EXAMPLES = (
    Example("real_ffhq_107.jpg", f"{_LAGO}/REAL/107.jpg",
            "79430569765b6d791731e741ccc3a4162b56c9421f03b83aef56f18f685830cc",
            "Real photo (FFHQ)", "FFHQ: CC BY / public domain per image, dataset CC BY-NC-SA 4.0"),
    Example("stylegan2_003.jpg", f"{_LAGO}/AI-19/003.jpg",
            "ecc9e10aa2c1b0da62d5c4b7187e9adc53eafe49e8bfd27e9b20efd3b4ad169d",
            "StyleGAN2 (Lago et al. 2022)", "research use; cite Lago et al. 2022"),
    Example("progan_015.jpg", f"{_LAGO}/AI-17/015.jpg",
            "1be69d0fc11872f7087e6b1518d506c16fdaefd8a54642d71a59d7e807325c78",
            "ProGAN (Lago et al. 2022)", "research use; cite Lago et al. 2022"),
    Example("stylegan3_seed0745.png",
            "https://raw.githubusercontent.com/KataTech/stylegan3/06a1bc672cc8c59098d932fef3c7a41f36531ee2/out/seed0745.png",
            "1d5cc2ea272ed4ec9c306779a10c5caa7fe0dbf3a8c9585711c70c321452c6f6",
            "StyleGAN3 (FFHQ-U 256)", "NVIDIA Source Code License-NC"),
)


def fetch_examples(sources: Optional[WeightSources] = None, base_url: Optional[str] = None) -> list[Path]:
    """Paths of the cached examples, downloading the missing ones; those that fail are skipped.

    ``base_url`` (or ``GANORIGIN_EXAMPLES_URL``) serves every example as ``{base_url}/{filename}``
    instead of its source, e.g. from a mirror.
    """
    sources = sources or WeightSources.from_env()
    base_url = base_url or os.environ.get("GANORIGIN_EXAMPLES_URL")
    folder = cache_root(sources.cache_dir) / "ganorigin" / "examples"
    paths, failed = [], []
    for example in EXAMPLES:
        path = folder / example.filename
        if not path.is_file():
            if sources.local_files_only or hf_constants.HF_HUB_OFFLINE:
                continue
            url = f"{base_url.rstrip('/')}/{example.filename}" if base_url else example.url
            try:
                download_url(url, path, example.sha256, max_bytes=MAX_EXAMPLE_BYTES)
            except (OSError, GANOriginError) as e:
                failed.append(f"{example.filename} ({e})")
                continue
        paths.append(path)
    if failed:  # one line: offline, every example fails the same way
        logger.info("%d of %d example images could not be downloaded, so the page shows %d: %s", len(failed),
                    len(EXAMPLES), len(paths), "; ".join(failed))
    return paths
