"""Train and evaluate the attribution model: features, the SVM recipe, a safe model format, open-set.

* :func:`extract_features` encodes ``DATA_DIR/<class>/*`` with e4e into ``.npz`` shards. It is
  resumable (the shards are the index of done images) and bitwise reproducible: each image's
  resolution augmentation draws from its own seeded RNG, and batches are fixed slices of the
  sorted image list, so an interrupted run plus a re-run equals one uninterrupted run.
* :func:`train_attribution_model` is the original's recipe, a linear SVM on standardised W+
  codes, with Platt (sigmoid) calibration for probabilities and an open-set rule: a sample
  farther from every class centroid than ``coverage`` of held-out known samples is "Unknown GAN".
  Every split (hold-out, ``--cv`` folds, calibration folds) keeps all rows of one source image
  (its augmented copies, and identical files) on the same side: :func:`source_groups`.
* :func:`save_attribution_model` / :func:`load_attribution_model`: JSON metadata + ``.npz``
  arrays, read with ``allow_pickle=False``; nothing in the files can run code.
* :func:`predict_paths` and :func:`evaluate` back the ``predict`` and ``evaluate`` commands.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import sklearn
import torch
from matplotlib.figure import Figure
from PIL import Image
from sklearn import metrics
from sklearn.calibration import CalibratedClassifierCV, _CalibratedClassifier, _SigmoidCalibration
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.svm import LinearSVC
from tqdm import tqdm

from .encoder import E4EEncoder, e4e_transform
from .errors import GANOriginError, InvalidImageError, WeightsFormatError
from .images import load_image
from .pipeline import UNKNOWN_GAN, GANOrigin
from .svm import GANAttributor, display_name
from .weights import SAFE_ARRAYS_FILE, SAFE_MODEL_FILE, _sha256

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
AUGMENT_SIDES = (64, 1024)  # the original's resolution augmentation: a random square side in this range
LATENTS_MANIFEST = "latents.json"
MODEL_FORMAT = "ganorigin-attribution-model"
MODEL_FORMAT_VERSION = 1
REAL_CLASS = "real"
CALIBRATION_FOLDS = 3
# Shard columns added after the first release, with the value rows of older shards get.
OPTIONAL_COLUMNS = {"sources": ""}


class DatasetError(GANOriginError, ValueError):
    """A data folder, latents folder or trained-model folder is missing or inconsistent."""


# --------------------------------------------------------------------------------------------
# Images on disk


def find_images(paths: Sequence[os.PathLike]) -> list[Path]:
    """Files, folders (recursive, image extensions) and ``.txt`` lists of paths -> image paths.

    Listed and named files are kept whatever their extension (so a bad file shows up as an error).
    """
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found += sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif entry.suffix.lower() == ".txt" and entry.is_file():
            lines = [line.strip() for line in entry.read_text().splitlines()]
            found += [(entry.parent / line) for line in lines if line and not line.startswith("#")]
        elif entry.exists():
            found.append(entry)
        else:
            raise DatasetError(f"{entry} does not exist; pass image files, folders or a .txt list of paths.")
    return found


def labelled_images(data_dir: os.PathLike) -> list[tuple[str, Path]]:
    """``(class, path)`` for every image under ``data_dir/<class>/``, sorted."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir} is not a folder; expected DATA_DIR/<class>/<images>.")
    items = [(d.name, p) for d in sorted(data_dir.iterdir()) if d.is_dir() for p in find_images([d])]
    if not items:
        raise DatasetError(f"No images in class folders under {data_dir}; expected DATA_DIR/<class>/<images>.")
    return items


def resolution_augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The original's training augmentation: resize to a random square side in [64, 1024]."""
    side = int(rng.integers(AUGMENT_SIDES[0], AUGMENT_SIDES[1] + 1))
    return image.resize((side, side), Image.BILINEAR)


def _item_rng(seed: int, key: str) -> np.random.Generator:
    """An RNG that depends only on the seed and the image's key, never on run order."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# --------------------------------------------------------------------------------------------
# Feature extraction


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


@dataclass(frozen=True)
class Latents:
    """Features of a latents folder, sorted by key."""

    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) str
    keys: np.ndarray  # (N,) str
    paths: np.ndarray  # (N,) str
    sources: np.ndarray  # (N,) str: sha256 of the source image file; "" in shards that predate it
    aligned: Optional[bool] = None  # extracted with face alignment (from latents.json), None if unknown

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
    align: bool = False,
    device: Optional[torch.device] = None,
    progress: bool = True,
) -> ExtractSummary:
    """Encode every image of ``data_dir/<class>/`` (plus ``augment`` augmented copies) into shards.

    Re-running skips every image already in a shard. ``limit`` stops after about that many new
    images (whole batches), as an interruption would.

    Raises:
        DatasetError: the folder is empty, or ``out_dir`` holds latents made with other settings.
    """
    if augment < 0 or batch_size < 1 or shard_size < 1:
        raise DatasetError("--augment must be >= 0, --batch-size and --shard-size >= 1.")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    items = [
        _Item(f"{label}/{path.relative_to(data_dir / label).as_posix()}#{copy}", label, path, copy)
        for label, path in labelled_images(data_dir)
        for copy in range(augment + 1)
    ]
    settings = {"format": "ganorigin-latents", "augment": augment, "seed": seed, "align": bool(align)}
    _check_manifest(out_dir, settings)
    done = set(_read_shards(out_dir, "keys").get("keys", []))
    summary = ExtractSummary(total=len(items), already_done=sum(item.key in done for item in items))
    device = device or next(encoder.parameters()).device
    buffer: dict = {"keys": [], "labels": [], "paths": [], "sources": [], "copies": [], "features": []}
    bar = tqdm(total=len(items), initial=summary.already_done, desc="extract", unit="img", disable=not progress)
    try:
        for start in range(0, len(items), batch_size):
            if limit is not None and summary.encoded >= limit:
                return summary
            batch = [item for item in items[start : start + batch_size] if item.key not in done]
            images, kept, digests = [], [], []
            for item in batch:
                try:
                    images.append(_prepare(item, seed, align))
                    digests.append(_sha256(item.path))
                    kept.append(item)
                except InvalidImageError as e:
                    summary.failed.append((str(item.path), str(e)))
                    logger.warning("%s: %s", item.path, e)
            if kept:
                with torch.inference_mode():
                    codes = encoder(torch.stack(images).to(device)).flatten(1).float().cpu().numpy()
                buffer["keys"] += [i.key for i in kept]
                buffer["labels"] += [i.label for i in kept]
                buffer["paths"] += [str(i.path) for i in kept]
                buffer["sources"] += digests
                buffer["copies"] += [i.copy for i in kept]
                buffer["features"].append(codes)
                summary.encoded += len(kept)
            bar.update(len(batch))
            if len(buffer["keys"]) >= shard_size:
                _write_shard(out_dir, buffer)
        summary.complete = True
        return summary
    finally:
        _write_shard(out_dir, buffer)  # also on Ctrl-C: nothing encoded is lost
        bar.close()


def _prepare(item: _Item, seed: int, align: bool) -> torch.Tensor:
    image = load_image(item.path)
    if align:
        from .align import align_face

        aligned = align_face(image)
        image = aligned.image if aligned.used else image
    if item.copy:
        image = resolution_augment(image, _item_rng(seed, item.key))
    return e4e_transform(image)


def _check_manifest(out_dir: Path, settings: dict) -> None:
    manifest = out_dir / LATENTS_MANIFEST
    if manifest.is_file():
        existing = json.loads(manifest.read_text())
        if existing != settings:
            raise DatasetError(
                f"{out_dir} holds latents made with {existing}, not {settings}; use another --out folder "
                "or the same settings to resume."
            )
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(settings, indent=2) + "\n")


def _write_shard(out_dir: Path, buffer: dict) -> None:
    """Write the buffered rows as the next shard (atomically) and empty the buffer."""
    if not buffer["keys"]:
        return
    existing = sorted(out_dir.glob("shard-*.npz"))
    number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
    arrays = {
        "keys": np.array(buffer["keys"]),
        "labels": np.array(buffer["labels"]),
        "paths": np.array(buffer["paths"]),
        "sources": np.array(buffer["sources"]),
        "copies": np.array(buffer["copies"], dtype=np.int32),
        "features": np.concatenate(buffer["features"]).astype(np.float32),
    }
    with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".npz.part", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, out_dir / f"shard-{number:05d}.npz")
    for values in buffer.values():
        values.clear()


def _read_shards(folder: Path, *names: str) -> dict:
    columns: dict = {name: [] for name in names}
    for shard in sorted(Path(folder).glob("shard-*.npz")):
        try:
            with np.load(shard, allow_pickle=False) as data:
                for name in names:
                    if name not in data.files and name in OPTIONAL_COLUMNS:
                        columns[name].append(np.full(len(data["keys"]), OPTIONAL_COLUMNS[name]))
                    else:
                        columns[name].append(data[name])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise DatasetError(f"{shard} is not a readable latents shard ({e}); delete it and run extract again.") from e
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
        raise DatasetError(f"No shard-*.npz files in {folder}; run `ganorigin extract DATA_DIR --out {folder}` first.")
    order = np.argsort(columns["keys"], kind="stable")
    manifest = folder / LATENTS_MANIFEST
    aligned = json.loads(manifest.read_text()).get("align") if manifest.is_file() else None
    return Latents(*(columns[name][order] for name in names), aligned=aligned)


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    attributor: GANAttributor
    label_encoder: LabelEncoder
    report: str  # sklearn's classification report on held-out data
    confusion: np.ndarray
    accuracy: float
    n_train: int
    n_test: int
    recipe: dict
    n_train_sources: int  # distinct source images behind the n_train / n_test rows
    n_test_sources: int


def make_classifier(C: float = 1.0, seed: int = 0, cv=CALIBRATION_FOLDS) -> CalibratedClassifierCV:
    """Linear SVM with Platt-scaled probabilities: one SVM on all its data, calibrated out-of-fold.

    Args:
        cv: the calibration folds: a number, or ``(train, test)`` index pairs (see :func:`source_folds`).
    """
    svm = LinearSVC(C=C, max_iter=20_000, random_state=seed)
    return CalibratedClassifierCV(svm, method="sigmoid", cv=cv, ensemble=False)


def split_by_source(y: np.ndarray, groups: np.ndarray, test_size: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified hold-out split that never puts rows of one source image on both sides.

    Each class's source images are shuffled and ``round(test_size * n)`` of them are held out
    (at least one, and never so many that fewer than ``CALIBRATION_FOLDS`` are left to train on).
    A group's class is the class of its first row.

    Returns:
        ``(train, test)`` sorted row indices.
    """
    y, groups = np.asarray(y), np.asarray(groups)
    rng = np.random.default_rng(seed)
    group_ids, first_rows = np.unique(groups, return_index=True)
    group_labels = y[first_rows]
    held_out = []
    for label in np.unique(group_labels):
        members = rng.permutation(group_ids[group_labels == label])
        n_test = min(max(1, round(test_size * len(members))), len(members) - CALIBRATION_FOLDS)
        held_out.append(members[:n_test])
    test = np.isin(groups, np.concatenate(held_out))
    return np.flatnonzero(~test), np.flatnonzero(test)


def source_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` stratified folds, each source image entirely inside one fold."""
    splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def train_attribution_model(
    features: np.ndarray,
    labels: Sequence[str],
    *,
    groups: Optional[Sequence] = None,
    aligned: Optional[bool] = None,
    test_size: float = 0.2,
    cv: Optional[int] = None,
    C: float = 1.0,
    coverage: float = 0.95,
    seed: int = 0,
) -> TrainResult:
    """StandardScaler + calibrated linear SVM, evaluated on held-out data, with an open-set rule.

    With ``cv=None`` the model is fitted on a stratified ``1 - test_size`` split of the source
    images and reported on the rest. With ``cv=K`` the report is on out-of-fold predictions and
    the returned model is refitted on everything. Either way the rejection threshold is the
    ``coverage`` quantile of held-out known samples' distances to their nearest class centroid.

    Args:
        groups: one value per row, equal for rows of one source image (:attr:`Latents.groups`);
            no split ever separates them. Default: every row is its own image.
        aligned: whether the features were extracted from FFHQ-aligned faces; saved with the model.

    Raises:
        DatasetError: fewer than two classes, or too few source images per class for the split.
    """
    X = np.asarray(features, dtype=np.float32)
    label_encoder = LabelEncoder().fit(np.asarray(labels).astype(str))
    y = label_encoder.transform(np.asarray(labels).astype(str))
    groups = np.arange(len(y)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    if len(groups) != len(y):
        raise DatasetError(f"{len(groups)} groups for {len(y)} rows; give one group per row.")
    counts = np.bincount(y[np.unique(groups, return_index=True)[1]], minlength=len(label_encoder.classes_))
    if len(counts) < 2:
        raise DatasetError("Training needs at least two classes (one folder per GAN).")
    needed = max(cv or 2, 2) * CALIBRATION_FOLDS
    if counts.min() < needed:
        raise DatasetError(
            f"Class {label_encoder.classes_[counts.argmin()]!r} has {counts.min()} source images; at least {needed} "
            "are needed for the split and the calibration (augmented copies of one image count once). Add images."
        )
    if not 0.0 < coverage < 1.0:
        raise DatasetError(f"coverage must be within (0, 1), got {coverage}.")
    if not cv and not 0.0 < test_size < 1.0:
        raise DatasetError(f"test_size must be within (0, 1), got {test_size}.")
    if cv:
        held_out_pred, held_out_y, distances = [], [], []
        for train, test in source_folds(y, groups, cv, seed):
            fold = _fit(X[train], y[train], groups[train], label_encoder, C, seed)
            held_out_pred.append(fold.predict_proba(X[test]).argmax(1))
            held_out_y.append(y[test])
            distances.append(fold.centroid_distances(X[test]))
        attributor = _fit(X, y, groups, label_encoder, C, seed)
        y_test, y_pred, distances = map(np.concatenate, (held_out_y, held_out_pred, distances))
        train = test = np.arange(len(X))
    else:
        train, test = split_by_source(y, groups, test_size, seed)
        attributor = _fit(X[train], y[train], groups[train], label_encoder, C, seed)
        y_test = y[test]
        y_pred = attributor.predict_proba(X[test]).argmax(1)
        distances = attributor.centroid_distances(X[test])
    attributor.unknown_threshold = float(np.quantile(distances, coverage))
    attributor.trained_on_aligned = aligned
    names = list(label_encoder.classes_)
    report = metrics.classification_report(y_test, y_pred, labels=range(len(names)), target_names=names, digits=4,
                                           zero_division=0)
    recipe = {
        "scaler": "StandardScaler",
        "classifier": f"LinearSVC(C={C}) + CalibratedClassifierCV(method='sigmoid', cv={CALIBRATION_FOLDS} folds "
        "grouped by source image, ensemble=False)",
        "evaluation": (f"{cv}-fold cross-validation" if cv else f"stratified hold-out, test_size={test_size}")
        + ", split by source image",
        "open_set": f"nearest class centroid RMS distance, {coverage:.0%} of held-out known samples accepted",
        "seed": seed,
    }
    return TrainResult(
        attributor=attributor,
        label_encoder=label_encoder,
        report=report,
        confusion=metrics.confusion_matrix(y_test, y_pred, labels=range(len(names))),
        accuracy=float(metrics.accuracy_score(y_test, y_pred)),
        n_train=len(train),
        n_test=len(test),
        recipe=recipe,
        n_train_sources=len(np.unique(groups[train])),
        n_test_sources=len(np.unique(groups[test])),
    )


def _fit(X: np.ndarray, y: np.ndarray, groups: np.ndarray, label_encoder: LabelEncoder, C: float,
         seed: int) -> GANAttributor:
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    classifier = make_classifier(C, seed, cv=source_folds(y, groups, CALIBRATION_FOLDS, seed)).fit(Z, y)
    attributor = GANAttributor(scaler, classifier, list(label_encoder.inverse_transform(classifier.classes_)))
    attributor.centroids = np.stack([Z[y == k].mean(axis=0) for k in classifier.classes_]).astype(np.float64)
    return attributor


def save_attribution_model(result: TrainResult, folder: os.PathLike, *, export_joblib: bool = False) -> Path:
    """Write ``attribution_model.json`` + ``.npz`` (and the original three joblib files if asked).

    Returns:
        The JSON file's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    attributor = result.attributor
    scaler, classifier = attributor.scaler, attributor.classifier
    members = classifier.calibrated_classifiers_
    arrays = {
        "scaler_mean": scaler.mean_,
        "scaler_scale": scaler.scale_,
        "scaler_var": scaler.var_,
        "classes": np.asarray(classifier.classes_),
        "coef": np.stack([m.estimator.coef_ for m in members]),
        "intercept": np.stack([m.estimator.intercept_ for m in members]),
        "sigmoid_a": np.array([[c.a_ for c in m.calibrators] for m in members], dtype=np.float64),
        "sigmoid_b": np.array([[c.b_ for c in m.calibrators] for m in members], dtype=np.float64),
        "centroids": attributor.centroids,
    }
    np.savez(folder / SAFE_ARRAYS_FILE, **arrays)
    meta = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "labels": attributor.labels,
        "n_features": attributor.n_features,
        "n_samples_seen": int(scaler.n_samples_seen_),
        "calibration": "sigmoid",
        "unknown_threshold": attributor.unknown_threshold,
        "aligned": getattr(attributor, "trained_on_aligned", None),
        "unknown_rule": "reject when the RMS distance of the standardised features to the nearest class "
        "centroid exceeds unknown_threshold",
        "arrays": SAFE_ARRAYS_FILE,
        "sklearn_version": sklearn.__version__,
        "recipe": result.recipe,
        "held_out": {"accuracy": result.accuracy, "n_train": result.n_train, "n_test": result.n_test,
                     "n_train_sources": result.n_train_sources, "n_test_sources": result.n_test_sources},
    }
    path = folder / SAFE_MODEL_FILE
    path.write_text(json.dumps(meta, indent=2) + "\n")
    if export_joblib:
        _export_joblib(result, folder)
    return path


def _export_joblib(result: TrainResult, folder: Path) -> None:
    """The original project's three files: SVM (calibrated), scaler, label encoder."""
    import joblib

    from .weights import LABEL_ENCODER_FILE, SCALER_FILE, SVM_FILE

    joblib.dump(result.attributor.classifier, folder / SVM_FILE)
    joblib.dump(result.attributor.scaler, folder / SCALER_FILE)
    joblib.dump(result.label_encoder, folder / LABEL_ENCODER_FILE)


def load_attribution_model(path: os.PathLike) -> GANAttributor:
    """Rebuild a :class:`GANAttributor` from ``attribution_model.json`` and its ``.npz`` (no pickle).

    The scikit-learn objects are rebuilt with their fitted attributes, so their ``predict_proba``
    is the very computation the trained model did. ``trained_on_aligned`` says whether the
    features were extracted from aligned faces (None for models saved before it was recorded).

    Raises:
        WeightsFormatError: the files are missing, of another format, or inconsistent.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
        if meta.get("format") != MODEL_FORMAT or meta.get("format_version") != MODEL_FORMAT_VERSION:
            raise WeightsFormatError(
                f"{path} is not a {MODEL_FORMAT} v{MODEL_FORMAT_VERSION} file (format {meta.get('format')!r}, "
                f"version {meta.get('format_version')!r}); retrain it with this version of `ganorigin train`."
            )
        with np.load(path.parent / meta["arrays"], allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        labels = [str(label) for label in meta["labels"]]
        scaler = StandardScaler()
        scaler.mean_, scaler.scale_, scaler.var_ = arrays["scaler_mean"], arrays["scaler_scale"], arrays["scaler_var"]
        scaler.n_features_in_ = int(meta["n_features"])
        scaler.n_samples_seen_ = int(meta["n_samples_seen"])
        classes = arrays["classes"]
        classifier = CalibratedClassifierCV(LinearSVC(), method=meta["calibration"])
        members = []
        for coef, intercept, a_row, b_row in zip(arrays["coef"], arrays["intercept"], arrays["sigmoid_a"], arrays["sigmoid_b"]):
            svm = LinearSVC()
            svm.coef_, svm.intercept_, svm.classes_, svm.n_features_in_ = coef, intercept, classes, scaler.n_features_in_
            calibrators = []
            for a, b in zip(a_row, b_row):
                calibrator = _SigmoidCalibration()
                calibrator.a_, calibrator.b_ = a, b
                calibrators.append(calibrator)
            members.append(_CalibratedClassifier(svm, calibrators, classes=classes, method=meta["calibration"]))
        classifier.calibrated_classifiers_ = members
        classifier.classes_ = classes
        classifier.n_features_in_ = scaler.n_features_in_
        attributor = GANAttributor(scaler, classifier, labels)
        attributor.centroids = arrays["centroids"]
        attributor.unknown_threshold = meta.get("unknown_threshold")
        attributor.trained_on_aligned = meta.get("aligned")
        if attributor.trained_on_aligned not in (None, True, False):
            raise ValueError(f"'aligned' must be true, false or null, not {attributor.trained_on_aligned!r}")
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        if isinstance(e, WeightsFormatError):
            raise
        raise WeightsFormatError(f"{path} (with its {SAFE_ARRAYS_FILE}) is not a readable attribution model ({e}).") from e
    if meta.get("sklearn_version") != sklearn.__version__:
        logger.info("%s was trained with scikit-learn %s; running %s.", path.name, meta.get("sklearn_version"),
                    sklearn.__version__)
    return attributor


def alignment_mismatch(attributor: GANAttributor, align: bool) -> Optional[str]:
    """A warning when ``align`` differs from how the attribution model's training features were made.

    None when they agree or the model does not say (the original pickles).
    """
    trained = getattr(attributor, "trained_on_aligned", None)
    if trained is None or trained == bool(align):
        return None
    if align:
        return ("The attribution model was trained on unaligned images (`ganorigin extract` without --align), but "
                "face alignment is on: attribution may be off. Turn alignment off (align=False, --no-align, or the "
                "switch in the app), or retrain on latents extracted with --align.")
    return ("The attribution model was trained on FFHQ-aligned faces (`ganorigin extract --align`), but face "
            "alignment is off: attribution may be off. Turn alignment on (needs dlib: pip install dlib-bin "
            "face-recognition-models), or retrain on latents extracted without --align.")


def save_confusion_png(confusion: np.ndarray, names: Sequence[str], path: os.PathLike, title: str,
                       row_names: Optional[Sequence[str]] = None) -> Path:
    """A confusion matrix (rows: truth, columns: prediction) as a PNG."""
    row_names = list(row_names or names)
    fig = Figure(figsize=(1.6 + 1.1 * len(names), 1.4 + 0.9 * len(row_names)))
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(row_names)), row_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = confusion.max() if confusion.size else 0
    for (i, j), value in np.ndenumerate(confusion):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


# --------------------------------------------------------------------------------------------
# Prediction over files, and evaluation


def predict_paths(
    model: GANOrigin,
    paths: Sequence[os.PathLike],
    *,
    batch_size: int = 8,
    threshold: Optional[float] = None,
    progress: bool = True,
    on_row: Optional[Callable[[dict], None]] = None,
) -> list[dict]:
    """One row per path: the model's prediction, or ``error`` when the file could not be read.

    Each file is decoded on its own, so a bad file costs only its own row.
    """
    rows: list[dict] = []
    labels = list(model.attributor.labels)
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        decoded, errors = {}, {}
        for i, path in enumerate(chunk):
            try:
                decoded[i] = load_image(path)
            except InvalidImageError as e:
                errors[i] = str(e)
        predictions = dict(zip(decoded, model.predict_batch(list(decoded.values()), threshold=threshold,
                                                            batch_size=batch_size)))
        for i, path in enumerate(chunk):
            row = _row(path, predictions.get(i), labels, errors.get(i))
            rows.append(row)
            if on_row is not None:
                on_row(row)
        bar.update(len(chunk))
    bar.close()
    return rows


def _row(path, prediction, labels: list, error: Optional[str]) -> dict:
    row = {"path": str(path), "fake_probability": None, "is_fake": None, "attribution": None, "unknown": None}
    row.update({f"p_{label}": None for label in labels})
    if prediction is not None:
        row.update(
            fake_probability=prediction.fake_probability,
            is_fake=prediction.is_fake,
            attribution=prediction.attribution,
            unknown=prediction.unknown,
        )
        row.update({f"p_{label}": p for label, p in zip(prediction.labels, prediction.probabilities)})
    row["error"] = error
    return row


def evaluate(
    model: GANOrigin, data_dir: os.PathLike, out_dir: os.PathLike, *, batch_size: int = 8, progress: bool = True
) -> dict:
    """Detection and attribution metrics on ``data_dir/<class>/``; writes the report, CSV and PNGs.

    ``real/`` holds real images, folders named like one of the model's labels are known GANs, and
    any other folder is an unknown generator (used for the open-set rejection rate).

    Returns:
        The report (also written to ``out_dir/report.json``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = labelled_images(data_dir)
    rows = predict_paths(model, [p for _, p in items], batch_size=batch_size, progress=progress)
    known = {display_name(label): label for label in model.attributor.labels}
    for (cls, _), row in zip(items, rows):
        row["class"] = cls
        row["true_label"] = known.get(display_name(cls))
        row["y_fake"] = int(cls.lower() != REAL_CLASS)
    _write_rows(rows, out_dir / "predictions.csv", "csv")
    ok = [row for row in rows if row["error"] is None]
    report = {
        "data_dir": str(data_dir),
        "threshold": model.threshold,
        "images": len(rows),
        "failed": [{"path": row["path"], "error": row["error"]} for row in rows if row["error"] is not None],
        "per_class": {cls: sum(row["class"] == cls for row in ok) for cls in sorted({row["class"] for row in rows})},
        "detection": _detection_metrics(ok, model.threshold, out_dir / "roc.png"),
        "attribution": _attribution_metrics(ok, model, out_dir / "attribution_confusion.png"),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _detection_metrics(rows: list, threshold: float, roc_png: Path) -> dict:
    y = np.array([row["y_fake"] for row in rows])
    p = np.array([row["fake_probability"] for row in rows], dtype=np.float64)
    result: dict = {"n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum())}
    result["accuracy_at_threshold"] = float(np.mean((p >= threshold) == y)) if len(y) else None
    if len(set(y.tolist())) < 2:
        result["note"] = "AP, ROC AUC and the best threshold need both real and fake images."
        return result
    fpr, tpr, roc_thresholds = metrics.roc_curve(y, p)
    candidates = np.unique(p)
    accuracies = np.array([np.mean((p >= t) == y) for t in candidates])
    youden = int(np.argmax(tpr - fpr))
    result.update(
        average_precision=float(metrics.average_precision_score(y, p)),
        roc_auc=float(metrics.roc_auc_score(y, p)),
        best_threshold=float(candidates[accuracies.argmax()]),
        best_threshold_rule="maximum accuracy; predict fake when fake_probability >= best_threshold",
        accuracy_at_best_threshold=float(accuracies.max()),
        youden_threshold=float(min(roc_thresholds[youden], 1.0)),
        youden_j=float(tpr[youden] - fpr[youden]),
    )
    _roc_png(fpr, tpr, result["roc_auc"], roc_png)
    result["roc_png"] = str(roc_png)
    return result


def _roc_png(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: Path) -> None:
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.plot(fpr, tpr, label=f"UFD (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fake called fake)")
    ax.set_title("Detection ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _attribution_metrics(rows: list, model: GANOrigin, confusion_png: Path) -> dict:
    labels = list(model.attributor.labels)
    has_rule = model.attributor.unknown_threshold is not None
    known = [row for row in rows if row["y_fake"] and row["true_label"] is not None]
    unknown = [row for row in rows if row["y_fake"] and row["true_label"] is None]
    result: dict = {"labels": labels, "n_known_fake": len(known), "n_unknown_fake": len(unknown),
                    "open_set_rule": has_rule}
    if known:
        y_true = [labels.index(row["true_label"]) for row in known]
        y_pred = [int(np.argmax([row[f"p_{label}"] for label in labels])) for row in known]
        result["classification_report"] = metrics.classification_report(
            y_true, y_pred, labels=range(len(labels)), target_names=labels, digits=4, zero_division=0
        )
        result["accuracy"] = float(metrics.accuracy_score(y_true, y_pred))
        accepted = [not row["unknown"] for row in known]
        result["known_acceptance_rate"] = float(np.mean(accepted))
        result["known_accuracy_open_set"] = float(np.mean([a and t == p for a, t, p in zip(accepted, y_true, y_pred)]))
        columns = labels + ([UNKNOWN_GAN] if has_rule else [])
        confusion = np.zeros((len(labels), len(columns)), dtype=int)
        for t, p, a in zip(y_true, y_pred, accepted):
            confusion[t, p if a or not has_rule else len(labels)] += 1
        result["confusion"] = confusion.tolist()
        result["confusion_columns"] = columns
        save_confusion_png(confusion, columns, confusion_png, "Attribution (fake images of known GANs)", labels)
        result["confusion_png"] = str(confusion_png)
    if unknown:
        result["unknown_rejection_rate"] = float(np.mean([row["unknown"] for row in unknown]))
    return result


def _write_rows(rows: list, path: os.PathLike, fmt: str) -> None:
    with open(path, "w", newline="") as f:
        write_rows(rows, f, fmt)


def write_rows(rows: list, stream, fmt: str) -> None:
    """Rows as JSON lines or CSV (columns from the first row)."""
    if fmt == "jsonl":
        for row in rows:
            stream.write(json.dumps(row) + "\n")
        return
    if rows:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
