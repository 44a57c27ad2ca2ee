"""The original's recipe: StandardScaler + linear SVM with Platt (sigmoid) probabilities, and an
open-set rule (a sample farther from every class centroid than ``coverage`` of held-out known
samples is "Unknown GAN"). Every split (hold-out, ``--cv`` folds, calibration folds) keeps all
rows of one source image on the same side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from sklearn import metrics
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.svm import LinearSVC

from ..errors import DatasetError
from ..models.attributor import GANAttributor
from .data import check_gan_classes

CALIBRATION_FOLDS = 3


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
    encoder: Optional[str] = None,
    test_size: float = 0.2,
    cv: Optional[int] = None,
    C: float = 1.0,
    coverage: float = 0.95,
    seed: int = 0,
    names: Optional[Sequence[str]] = None,
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
        encoder: the fingerprint of the e4e weights that extracted them (:attr:`Latents.encoder`); saved
            with the model, which then warns when loaded with other e4e weights.
        names: one per row (:attr:`Latents.paths`), for messages that name an image.

    Raises:
        DatasetError: fewer than two classes, or too few source images per class for the split.
    """
    X = np.asarray(features, dtype=np.float32)
    label_encoder = LabelEncoder().fit(np.asarray(labels).astype(str))
    y = label_encoder.transform(np.asarray(labels).astype(str))
    groups = np.arange(len(y)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    _check_training_data(y, groups, label_encoder, cv, test_size, coverage, names)
    if cv:
        attributor, y_test, y_pred, distances = _cross_validate(X, y, groups, label_encoder, cv, C, seed)
        train = test = np.arange(len(X))
    else:
        train, test = split_by_source(y, groups, test_size, seed)
        attributor = _fit(X[train], y[train], groups[train], label_encoder, C, seed)
        y_test = y[test]
        y_pred = attributor.predict_proba(X[test]).argmax(1)
        distances = attributor.centroid_distances(X[test])
    attributor.unknown_threshold = float(np.quantile(distances, coverage))
    attributor.trained_on_aligned = aligned
    attributor.trained_encoder = encoder
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


def check_folds(cv: Optional[int]) -> None:
    """Refuse a cross-validation with fewer than two folds (``None``: one hold-out split)."""
    if cv is not None and cv < 2:
        raise DatasetError(f"--cv needs at least 2 folds; got {cv} (leave it out for one hold-out split).")


def _check_training_data(y, groups, label_encoder, cv, test_size, coverage, names=None) -> None:
    check_folds(cv)
    if len(groups) != len(y):
        raise DatasetError(f"{len(groups)} groups for {len(y)} rows; give one group per row.")
    check_gan_classes(label_encoder.classes_)
    images, labels_per_image = np.unique(np.unique(np.stack([groups, y]), axis=1)[0], return_counts=True)
    if (labels_per_image > 1).any():
        first = images[labels_per_image > 1][0]
        example = "" if names is None else ", such as " + " and ".join(
            sorted({str(names[i]) for i in np.flatnonzero(groups == first)}))
        raise DatasetError(
            f"{(labels_per_image > 1).sum()} source image(s) have rows under two classes{example} (one file in two "
            "class folders, or moved from one to another: its old rows stay until `ganorigin extract DATA_DIR --out "
            "LATENTS --prune`). Give each image one class."
        )
    counts = np.bincount(y[np.unique(groups, return_index=True)[1]], minlength=len(label_encoder.classes_))
    if len(counts) < 2:
        raise DatasetError("Training needs at least two classes (one folder per GAN).")
    needed = max(cv or 2, 2) * CALIBRATION_FOLDS
    if counts.min() < needed:
        fewer = (f", or fewer folds (--cv K needs {CALIBRATION_FOLDS}×K source images per class; without --cv, "
                 f"{2 * CALIBRATION_FOLDS})") if cv and cv > 2 else ""
        raise DatasetError(
            f"Class '{label_encoder.classes_[counts.argmin()]}' has {counts.min()} source "
            f"image{'s' if counts.min() != 1 else ''}; at least {needed} "
            "are needed for the split and the calibration (augmented copies of one image count once). "
            f"Add images{fewer}."
        )
    if not 0.0 < coverage < 1.0:
        raise DatasetError(f"coverage must be within (0, 1), got {coverage}.")
    if not cv and not 0.0 < test_size < 1.0:
        raise DatasetError(f"test_size must be within (0, 1), got {test_size}.")


def _cross_validate(X, y, groups, label_encoder, cv: int, C: float, seed: int) -> tuple:
    """The model refitted on everything, and the out-of-fold truth, predictions and centroid distances."""
    held_out_pred, held_out_y, distances = [], [], []
    for train, test in source_folds(y, groups, cv, seed):
        fold = _fit(X[train], y[train], groups[train], label_encoder, C, seed)
        held_out_pred.append(fold.predict_proba(X[test]).argmax(1))
        held_out_y.append(y[test])
        distances.append(fold.centroid_distances(X[test]))
    y_test, y_pred, distances = map(np.concatenate, (held_out_y, held_out_pred, distances))
    return _fit(X, y, groups, label_encoder, C, seed), y_test, y_pred, distances


def _fit(X: np.ndarray, y: np.ndarray, groups: np.ndarray, label_encoder: LabelEncoder, C: float,
         seed: int) -> GANAttributor:
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    classifier = make_classifier(C, seed, cv=source_folds(y, groups, CALIBRATION_FOLDS, seed)).fit(Z, y)
    attributor = GANAttributor(scaler, classifier, list(label_encoder.inverse_transform(classifier.classes_)))
    attributor.centroids = np.stack([Z[y == k].mean(axis=0) for k in classifier.classes_]).astype(np.float64)
    return attributor
