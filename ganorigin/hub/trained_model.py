"""The attribution model format of ``ganorigin train``: JSON metadata + ``.npz`` arrays, no pickle.

The arrays are read with ``allow_pickle=False``; nothing in the files can run code.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import sklearn
from scipy.special import expit
from sklearn.preprocessing import StandardScaler

from ..errors import WeightsFormatError
from ..models.attributor import GANAttributor
from .registry import WEIGHTS

logger = logging.getLogger(__name__)

MODEL_FORMAT = "ganorigin-attribution-model"
MODEL_FORMAT_VERSION = 1
SAFE_MODEL_FILE = WEIGHTS["svm.trained"].filename
SAFE_ARRAYS_FILE = WEIGHTS["svm.trained_arrays"].filename


class SigmoidCalibratedSVM:
    """What ``CalibratedClassifierCV(LinearSVC(), method="sigmoid")`` computes once fitted, from its
    saved numbers and public APIs only: per member, the linear decision values, a Platt sigmoid per
    class, normalised; the members' probabilities averaged (scikit-learn 1.x's arithmetic, bit for bit).

    Arrays: ``coef`` (members, n_columns, n_features), ``intercept`` (members, n_columns),
    ``sigmoid_a`` / ``sigmoid_b`` (members, n_columns); two classes have one column.
    """

    def __init__(self, coef, intercept, sigmoid_a, sigmoid_b, classes):
        self.coef_, self.intercept_ = np.asarray(coef), np.asarray(intercept)
        self.sigmoid_a_, self.sigmoid_b_ = np.asarray(sigmoid_a), np.asarray(sigmoid_b)
        self.classes_ = np.asarray(classes)
        self.n_features_in_ = int(self.coef_.shape[-1])
        if not (self.coef_.ndim == 3 and self.intercept_.shape == self.coef_.shape[:2]
                and self.sigmoid_a_.shape == self.sigmoid_b_.shape == self.coef_.shape[:2]):
            raise ValueError(f"inconsistent array shapes: coef {self.coef_.shape}, intercept {self.intercept_.shape}, "
                             f"sigmoid {self.sigmoid_a_.shape} / {self.sigmoid_b_.shape}")

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        n_classes = len(self.classes_)
        mean = np.zeros((len(X), n_classes))
        for coef, intercept, a, b in zip(self.coef_, self.intercept_, self.sigmoid_a_, self.sigmoid_b_):
            decision = X @ coef.T + intercept  # LinearSVC.decision_function, one column per class
            proba = np.zeros((len(X), n_classes))
            if n_classes == 2:
                proba[:, 1] = expit(-(a[0] * decision[:, 0] + b[0]))
                proba[:, 0] = 1.0 - proba[:, 1]
            else:
                for k in range(n_classes):
                    proba[:, k] = expit(-(a[k] * decision[:, k] + b[k]))
                denominator = proba.sum(axis=1)[:, np.newaxis]
                proba = np.divide(proba, denominator, out=np.full_like(proba, 1 / n_classes), where=denominator != 0)
            proba[(1.0 < proba) & (proba <= 1.0 + 1e-5)] = 1.0
            mean += proba
        return mean / len(self.coef_)


def save_attribution_model(result, folder: os.PathLike, *, export_joblib: bool = False) -> Path:
    """Write a :class:`~ganorigin.training.TrainResult` as ``attribution_model.json`` + ``.npz`` (and
    the original three joblib files if asked).

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
        "encoder": getattr(attributor, "trained_encoder", None),
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


def _export_joblib(result, folder: Path) -> None:
    """The original project's three files: SVM (calibrated), scaler, label encoder."""
    import joblib

    for name, obj in (("svm.gan_attribution", result.attributor.classifier), ("svm.scaler", result.attributor.scaler),
                      ("svm.label_encoder", result.label_encoder)):
        joblib.dump(obj, folder / WEIGHTS[name].filename)


def load_attribution_model(path: os.PathLike) -> GANAttributor:
    """Rebuild a :class:`GANAttributor` from ``attribution_model.json`` and its ``.npz`` (no pickle).

    The scaler is rebuilt with its fitted attributes and the calibrated SVM as
    :class:`SigmoidCalibratedSVM`, so ``predict_proba`` is the very computation the trained model
    did. ``trained_on_aligned`` says whether the features were extracted from aligned faces, and
    ``trained_encoder`` the fingerprint of the e4e weights that extracted them (None for models saved
    before each was recorded).

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
        classifier = SigmoidCalibratedSVM(arrays["coef"], arrays["intercept"], arrays["sigmoid_a"],
                                          arrays["sigmoid_b"], arrays["classes"])
        if meta["calibration"] != "sigmoid" or classifier.n_features_in_ != scaler.n_features_in_:
            raise ValueError(f"calibration {meta['calibration']!r} with {classifier.n_features_in_} SVM inputs")
        attributor = GANAttributor(scaler, classifier, labels)
        attributor.centroids = arrays["centroids"]
        attributor.unknown_threshold = meta.get("unknown_threshold")
        attributor.trained_on_aligned = meta.get("aligned")
        if attributor.trained_on_aligned not in (None, True, False):
            raise ValueError(f"'aligned' must be true, false or null, not {attributor.trained_on_aligned!r}")
        attributor.trained_encoder = meta.get("encoder")
        if not (attributor.trained_encoder is None or _is_sha256(attributor.trained_encoder)):
            raise ValueError(f"'encoder' must be a sha256 (64 hex digits) or null, not {attributor.trained_encoder!r}")
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        if isinstance(e, WeightsFormatError):
            raise
        raise WeightsFormatError(f"{path} (with its {SAFE_ARRAYS_FILE}) is not a readable attribution model ({e}).") from e
    if meta.get("sklearn_version") != sklearn.__version__:
        logger.info("%s was trained with scikit-learn %s; running %s.", path.name, meta.get("sklearn_version"),
                    sklearn.__version__)
    return attributor


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
