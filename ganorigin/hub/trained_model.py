"""The attribution model format of ``ganorigin train``: JSON metadata + ``.npz`` arrays, no pickle.

The arrays are read with ``allow_pickle=False``; nothing in the files can run code. The
scikit-learn objects are rebuilt with their fitted attributes, so their ``predict_proba`` is the
very computation the trained model did.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import sklearn
from sklearn.calibration import CalibratedClassifierCV, _CalibratedClassifier, _SigmoidCalibration
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from ..errors import WeightsFormatError
from ..models.attributor import GANAttributor
from .registry import WEIGHTS

logger = logging.getLogger(__name__)

MODEL_FORMAT = "ganorigin-attribution-model"
MODEL_FORMAT_VERSION = 1
SAFE_MODEL_FILE = WEIGHTS["svm.trained"].filename
SAFE_ARRAYS_FILE = WEIGHTS["svm.trained_arrays"].filename


def save_attribution_model(result, folder: os.PathLike, *, export_joblib: bool = False) -> Path:
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
        "unknown_rule": "reject when the RMS distance of the standardised features to the nearest class "
        "centroid exceeds unknown_threshold",
        "arrays": SAFE_ARRAYS_FILE,
        "sklearn_version": sklearn.__version__,
        "recipe": result.recipe,
        "held_out": {"accuracy": result.accuracy, "n_train": result.n_train, "n_test": result.n_test},
    }
    path = folder / SAFE_MODEL_FILE
    path.write_text(json.dumps(meta, indent=2) + "\n")
    if export_joblib:
        _export_joblib(result, folder)
    return path


def _export_joblib(result, folder: Path) -> None:
    """The original project's three files: SVM (calibrated), scaler, label encoder."""
    import joblib

    joblib.dump(result.attributor.classifier, folder / WEIGHTS["svm.gan_attribution"].filename)
    joblib.dump(result.attributor.scaler, folder / WEIGHTS["svm.scaler"].filename)
    joblib.dump(result.label_encoder, folder / WEIGHTS["svm.label_encoder"].filename)


def load_attribution_model(path: os.PathLike) -> GANAttributor:
    """Rebuild a :class:`GANAttributor` from ``attribution_model.json`` and its ``.npz`` (no pickle).

    The scikit-learn objects are rebuilt with their fitted attributes, so their ``predict_proba``
    is the very computation the trained model did.

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
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        if isinstance(e, WeightsFormatError):
            raise
        raise WeightsFormatError(f"{path} (with its {SAFE_ARRAYS_FILE}) is not a readable attribution model ({e}).") from e
    attributor.centroids = arrays["centroids"]
    attributor.unknown_threshold = meta.get("unknown_threshold")
    if meta.get("sklearn_version") != sklearn.__version__:
        logger.info("%s was trained with scikit-learn %s; running %s.", path.name, meta.get("sklearn_version"),
                    sklearn.__version__)
    return attributor
