"""e4e features of ``DATA_DIR/<class>/*`` in resumable ``.npz`` shards.

:func:`extract_features` is resumable (the shards are the index of done images) and reproducible:
each image's resolution augmentation draws from its own seeded RNG, and batches are fixed slices of
the sorted image list, so an interrupted run plus a re-run equals one uninterrupted run (to the last
bits of float rounding where the encoder's threads split work differently). Every row records its
source image, so splits keep copies together (:func:`source_groups`).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..align import align_face, alignment_setting
from ..errors import DatasetError, InvalidImageError
from ..hub.download import give_default_permissions
from ..hub.integrity import sha256_file
from ..hub.registry import E4E_PREPROCESS
from ..images import load_image
from ..models.encoder import E4EEncoder, encoder_fingerprint
from .data import IMAGE_EXTENSIONS, _item_rng, check_gan_classes, labelled_images, resolution_augment

LATENTS_MANIFEST = "latents.json"
# Shard columns added after the first release, with the value rows of older shards get.
OPTIONAL_COLUMNS = {"sources": ""}


@dataclass(frozen=True)
class _Item:
    key: str  # "<class>/<path relative to the class folder>#<copy>"
    label: str
    path: Path
    copy: int  # 0: the image as it is; 1..K: resolution-augmented copies


@dataclass
class ExtractSummary:
    total: int
    already_done: int
    encoded: int = 0
    failed: list = field(default_factory=list)  # (path, message)
    complete: bool = False
    changed: int = 0  # rows dropped because their image changed since it was encoded (encoded again)
    gone: int = 0  # rows of images no longer in DATA_DIR: dropped with ``prune``, else kept (and trained on)
    pruned: bool = False


@dataclass(frozen=True)
class ExtractPlan:
    """What an extract run does: every image copy in order, those already in a shard, and what the
    shards held that no longer matches DATA_DIR."""

    items: list
    done: set
    changed: int
    gone: int
    pruned: bool

    def summary(self) -> ExtractSummary:
        return ExtractSummary(total=len(self.items), already_done=sum(item.key in self.done for item in self.items),
                              changed=self.changed, gone=self.gone, pruned=self.pruned)


@dataclass(frozen=True)
class Latents:
    """Features of a latents folder, sorted by key."""

    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) str
    keys: np.ndarray  # (N,) str
    paths: np.ndarray  # (N,) str
    sources: np.ndarray  # (N,) str: sha256 of the source image file; "" in shards that predate it
    aligned: Optional[bool] = None  # extracted with face alignment (from latents.json), None if unknown
    encoder: Optional[str] = None  # fingerprint of the e4e weights that extracted them (latents.json), None if unknown

    @property
    def groups(self) -> np.ndarray:
        """(N,) int: rows with equal values come from one source image."""
        return source_groups(self.keys, self.sources)


def source_groups(keys: Sequence[str], sources: Optional[Sequence[str]] = None) -> np.ndarray:
    """One integer per row; rows of one source image share it.

    A row's key is ``"<class>/<path>#<copy>"``: the copies of an image share everything before
    the last ``#``. Rows whose ``sources`` digest is equal (the same file under two names) are
    joined too. Older shards have no digest (``""``); their keys alone decide.
    """
    stems = [str(key).rsplit("#", 1)[0] for key in keys]
    digests = [""] * len(stems) if sources is None else [str(digest) for digest in sources]
    digest_of = {stem: digest for stem, digest in zip(stems, digests) if digest}
    names = [digest_of.get(stem) or f"key:{stem}" for stem in stems]
    return np.unique(names, return_inverse=True)[1].astype(np.int64)


def extract_features(
    data_dir: os.PathLike,
    out_dir: os.PathLike,
    encoder: E4EEncoder,
    *,
    augment: int = 0,
    seed: int = 0,
    batch_size: int = 8,
    shard_size: int = 512,
    limit: Optional[int] = None,
    align: Optional[bool] = None,
    prune: bool = False,
    device: Optional[torch.device] = None,
    progress: bool = True,
) -> ExtractSummary:
    """Encode every image of ``data_dir/<class>/`` (plus ``augment`` augmented copies) into shards.

    Re-running skips every image already in a shard, and encodes again those whose file changed
    since. ``limit`` stops after about that many new images (whole batches), as an interruption
    would. ``align`` (default: as inference, on when alignment is available) FFHQ-aligns the
    largest face first. ``prune`` drops the rows of images no longer in ``data_dir``.

    Raises:
        DatasetError: the folder is empty or has a ``real`` class, or ``out_dir`` holds latents
            made with other settings or other e4e weights.
    """
    check_extract_settings(augment, batch_size, shard_size, limit)
    out_dir, align = Path(out_dir), alignment_setting(align)
    plan = extraction_plan(data_dir, out_dir, augment=augment, seed=seed, align=align,
                           encoder=encoder_fingerprint(encoder), prune=prune)
    summary = plan.summary()
    device = device or next(encoder.parameters()).device
    buffer: dict = {"keys": [], "labels": [], "paths": [], "sources": [], "copies": [], "features": []}
    bar = tqdm(total=len(plan.items), initial=summary.already_done, desc="extract", unit="img", disable=not progress)
    try:
        for start in range(0, len(plan.items), batch_size):
            if limit is not None and summary.encoded >= limit:
                return summary
            batch = [item for item in plan.items[start : start + batch_size] if item.key not in plan.done]
            _encode_batch(batch, encoder, device, seed, align, buffer, summary)
            bar.update(len(batch))
            if len(buffer["keys"]) >= shard_size:
                _write_shard(out_dir, buffer)
        summary.complete = True
        return summary
    finally:
        _write_shard(out_dir, buffer)  # also on Ctrl-C: nothing encoded is lost
        bar.close()


def check_extract_settings(augment: int, batch_size: int, shard_size: int, limit: Optional[int] = None) -> None:
    """Refuse settings that cannot work, naming the flag."""
    for flag, value, least in (("--augment", augment, 0), ("--batch-size", batch_size, 1),
                               ("--shard-size", shard_size, 1), ("--limit", limit, 1)):
        if value is not None and value < least:
            raise DatasetError(f"{flag} must be at least {least}; got {value}.")


def extraction_plan(data_dir: os.PathLike, out_dir: os.PathLike, *, augment: int, seed: int, align: bool,
                    encoder: str, prune: bool = False) -> ExtractPlan:
    """Every image copy to encode, in order, and those already in a shard of ``out_dir`` (whose
    settings and ``encoder`` fingerprint must be these). Rows of images changed since are dropped
    first, and with ``prune`` rows of images no longer in ``data_dir``.

    Raises:
        DatasetError: the folder is empty or has a ``real`` class, or ``out_dir`` holds latents
            made with other settings or other e4e weights.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    images = labelled_images(data_dir)
    check_gan_classes({label for label, _ in images})
    items = [
        _Item(f"{label}/{path.relative_to(data_dir / label).as_posix()}#{copy}", label, path, copy)
        for label, path in images
        for copy in range(augment + 1)
    ]
    _check_manifest(out_dir, {"format": "ganorigin-latents", "augment": augment, "seed": seed, "align": bool(align),
                              "encoder": encoder})
    changed, gone = _drop_stale_rows(out_dir, {item.key: item.path for item in items}, prune)
    done = set(_read_shards(out_dir, "keys").get("keys", []))
    return ExtractPlan(items, done, changed, gone, prune)


def _drop_stale_rows(out_dir: Path, current: dict, prune: bool) -> tuple[int, int]:
    """Drop shard rows whose image changed since it was encoded (and, with ``prune``, rows whose
    image is gone from ``current``, a key -> path map); returns (changed, gone) row counts."""
    digests: dict = {}

    def status(key: str, recorded: str) -> str:
        path = current.get(key)
        if path is None:
            return "gone"
        if recorded:  # shards that predate digests cannot tell
            digests.setdefault(path, sha256_file(path))
            if digests[path] != recorded:
                return "changed"
        return "kept"

    counts = {"changed": 0, "gone": 0}
    for shard in sorted(out_dir.glob("shard-*.npz")):
        rows = _shard_columns(shard, ("keys", "sources"))
        states = np.array([status(key, recorded) for key, recorded in zip(rows["keys"], rows["sources"])])
        for state in counts:
            counts[state] += int((states == state).sum())
        keep = (states == "kept") | ((states == "gone") & (not prune))
        if keep.all():
            continue
        if keep.any():
            _save_shard(shard, {name: values[keep] for name, values in _shard_columns(shard).items()})
        else:
            shard.unlink()
    return counts["changed"], counts["gone"]


def _encode_batch(batch: list, encoder: E4EEncoder, device, seed: int, align: bool, buffer: dict,
                  summary: ExtractSummary) -> None:
    """Encode the readable items of ``batch`` into ``buffer``; unreadable ones go to ``summary.failed``."""
    images, kept, digests = [], [], []
    for item in batch:
        try:
            images.append(_prepare(item, seed, align))
            digests.append(sha256_file(item.path))
            kept.append(item)
        except InvalidImageError as e:
            summary.failed.append((str(item.path), str(e)))
    if not kept:
        return
    with torch.inference_mode():
        codes = encoder(torch.stack(images).to(device)).flatten(1).float().cpu().numpy()
    buffer["keys"] += [i.key for i in kept]
    buffer["labels"] += [i.label for i in kept]
    buffer["paths"] += [str(i.path) for i in kept]
    buffer["sources"] += digests
    buffer["copies"] += [i.copy for i in kept]
    buffer["features"].append(codes)
    summary.encoded += len(kept)


def _prepare(item: _Item, seed: int, align: bool) -> torch.Tensor:
    image = load_image(item.path)
    if align:
        aligned = align_face(image)
        image = aligned.image if aligned.used else image
    if item.copy:
        image = resolution_augment(image, _item_rng(seed, item.key))
    return E4E_PREPROCESS(image)


def _check_manifest(out_dir: Path, settings: dict) -> None:
    manifest = out_dir / LATENTS_MANIFEST
    if manifest.is_file():
        try:
            existing = json.loads(manifest.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            existing = None
        if not isinstance(existing, dict) or existing.get("format") != settings["format"]:
            raise DatasetError(f"{out_dir} is not a folder of latents written by extract ({LATENTS_MANIFEST} is "
                               "unreadable); use another --out folder.")
        existing.setdefault("encoder", settings["encoder"])  # older manifests did not record it
        if existing["encoder"] != settings["encoder"]:
            raise DatasetError(f"{out_dir} holds latents of other e4e weights (fingerprint {existing['encoder'][:12]}, "
                               f"these weights: {settings['encoder'][:12]}); use another --out folder, or the "
                               "--weights that made them to resume.")
        if existing != settings:
            raise DatasetError(f"{out_dir} holds latents extracted with {_as_flags(existing)}, not "
                               f"{_as_flags(settings)}; use another --out folder, or those settings to resume.")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(settings, indent=2) + "\n")


def _as_flags(settings: dict) -> str:
    """A latents manifest's settings as the command-line flags that make them."""
    align = {True: "--align", False: "--no-align"}.get(settings.get("align"), f"align={settings.get('align')!r}")
    return f"--augment {settings.get('augment')} --seed {settings.get('seed')} {align}"


def _write_shard(out_dir: Path, buffer: dict) -> None:
    """Write the buffered rows as the next shard and empty the buffer."""
    if not buffer["keys"]:
        return
    existing = sorted(out_dir.glob("shard-*.npz"))
    number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
    _save_shard(out_dir / f"shard-{number:05d}.npz", {
        "keys": np.array(buffer["keys"]),
        "labels": np.array(buffer["labels"]),
        "paths": np.array(buffer["paths"]),
        "sources": np.array(buffer["sources"]),
        "copies": np.array(buffer["copies"], dtype=np.int32),
        "features": np.concatenate(buffer["features"]).astype(np.float32),
    })
    for values in buffer.values():
        values.clear()


def _save_shard(path: Path, arrays: dict) -> None:
    """Write (or replace) one shard atomically."""
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz.part", delete=False) as tmp:
        np.savez(tmp, **arrays)
    give_default_permissions(Path(tmp.name))
    os.replace(tmp.name, path)


def _shard_columns(shard: Path, names: Optional[Sequence[str]] = None) -> dict:
    """Columns of one shard (``None``: all); columns it predates get their default value."""
    try:
        with np.load(shard, allow_pickle=False) as data:
            wanted = data.files if names is None else names
            columns = {name: data[name] for name in wanted if name in data.files}
            rows = len(data["keys"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{shard} is not a readable latents shard ({e}); delete it and run extract again.") from e
    for name in wanted:
        if name not in columns and name not in OPTIONAL_COLUMNS:
            raise DatasetError(f"{shard} is not a readable latents shard (it has no {name}); delete it and run "
                               "extract again.")
        columns.setdefault(name, np.full(rows, OPTIONAL_COLUMNS.get(name)))
    return columns


def _read_shards(folder: Path, *names: str) -> dict:
    columns: dict = {name: [] for name in names}
    for shard in sorted(Path(folder).glob("shard-*.npz")):
        for name, values in _shard_columns(shard, names).items():
            columns[name].append(values)
    return {name: np.concatenate(parts) for name, parts in columns.items() if parts}


def load_latents(folder: os.PathLike) -> Latents:
    """Every shard of a latents folder, sorted by key.

    Raises:
        DatasetError: no shards in ``folder``, or a shard that cannot be read.
    """
    folder = Path(folder)
    names = ("features", "labels", "keys", "paths", "sources")
    columns = _read_shards(folder, *names)
    if not columns:
        if not folder.is_dir():
            raise DatasetError(f"{folder} is not a folder of latents; run `ganorigin extract DATA_DIR --out LATENTS` "
                               "first, then train on LATENTS.")
        if any(path.suffix.lower() in IMAGE_EXTENSIONS for path in folder.rglob("*") if path.is_file()):
            raise DatasetError(f"{folder} holds images, not latents: run `ganorigin extract {folder} --out LATENTS` "
                               "first, then train on LATENTS.")
        raise DatasetError(f"No shard-*.npz files in {folder}; run `ganorigin extract DATA_DIR --out {folder}` first.")
    order = np.argsort(columns["keys"], kind="stable")
    manifest = folder / LATENTS_MANIFEST
    settings = json.loads(manifest.read_text()) if manifest.is_file() else {}
    return Latents(*(columns[name][order] for name in names), aligned=settings.get("align"),
                   encoder=settings.get("encoder"))
