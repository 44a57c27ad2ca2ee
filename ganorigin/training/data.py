"""Images on disk: files, folders and lists of paths; labelled class folders; the resolution augmentation."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
from PIL import Image

from ..errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
AUGMENT_SIDES = (64, 1024)  # the original's resolution augmentation: a random square side in this range
REAL_CLASS = "real"  # the class folder of real images (evaluate); never a GAN to attribute


def find_images(paths: Sequence[os.PathLike], extensions: Collection[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Files, folders (recursive, files with one of ``extensions``) and ``.txt`` lists of paths -> paths.

    Listed and named files are kept whatever their extension (so a bad file shows up as an error). A file
    reached twice (a folder and a list naming it, a link) is kept once, under the first name.
    """
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found += sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        elif entry.suffix.lower() == ".txt" and entry.is_file():
            lines = [line.strip() for line in entry.read_text().splitlines()]
            found += [(entry.parent / line) for line in lines if line and not line.startswith("#")]
        elif entry.exists():
            found.append(entry)
        else:
            raise DatasetError(f"{entry} does not exist; pass image files, folders or a .txt list of paths.")
    seen: set = set()
    return [path for path in found if not (path.resolve() in seen or seen.add(path.resolve()))]


def labelled_images(data_dir: os.PathLike) -> list[tuple[str, Path]]:
    """``(class, path)`` for every image under ``data_dir/<class>/``, sorted."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir} is not a folder; expected DATA_DIR/<class>/<images>.")
    items = [(d.name, p) for d in sorted(data_dir.iterdir()) if d.is_dir() for p in find_images([d])]
    if not items:
        raise DatasetError(f"No images in class folders under {data_dir}; expected DATA_DIR/<class>/<images>.")
    return items


def loose_images(data_dir: os.PathLike) -> list[Path]:
    """Images directly in ``data_dir``, outside every class folder: :func:`labelled_images` leaves them out."""
    data_dir = Path(data_dir)
    return sorted(p for p in data_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def check_gan_classes(labels: Collection[str]) -> None:
    """Refuse a ``real`` class among attribution classes: the detector, not the attributor, tells real from fake."""
    if any(str(label).lower() == REAL_CLASS for label in labels):
        raise DatasetError(f"A class folder is named '{REAL_CLASS}': attribution learns only GAN classes (the detector "
                           f"tells real from fake). Keep {REAL_CLASS}/ out of the folder you extract and train on; "
                           "it belongs in evaluate's test folder.")


def resolution_augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The original's training augmentation: resize to a random square side in [64, 1024]."""
    side = int(rng.integers(AUGMENT_SIDES[0], AUGMENT_SIDES[1] + 1))
    return image.resize((side, side), Image.BILINEAR)


def _item_rng(seed: int, key: str) -> np.random.Generator:
    """An RNG that depends only on the seed and the image's key, never on run order."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
