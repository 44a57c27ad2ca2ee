"""Attribution: StandardScaler + linear SVM over e4e's flattened W+ codes -> ProGAN / StyleGAN2 / StyleGAN3.

The original project published three joblib pickles. Unpickling runs code, so they are read by
:class:`RestrictedUnpickler`, which admits only the scikit-learn and numpy classes such objects
are made of; anything else is refused before it can run.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from joblib.numpy_pickle import NumpyUnpickler
from joblib.numpy_pickle_utils import _validate_fileobject_and_memmap
from sklearn.exceptions import InconsistentVersionWarning, NotFittedError
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted

from .errors import UnsafePickleError, WeightsFormatError
from .weights import E4E_FILE

logger = logging.getLogger(__name__)

DISPLAY_NAMES = {"progan": "ProGAN", "pggan": "ProGAN", "stylegan2": "StyleGAN2", "stylegan3": "StyleGAN3"}

# Everything a pickled StandardScaler, LabelEncoder and (calibrated) linear SVM refer to, under
# the module paths of numpy 1.x and 2.x. Nothing here can run code when called with pickle's args.
ALLOWED_GLOBALS = frozenset(
    {
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.core.numeric._frombuffer",
        "numpy._core.numeric._frombuffer",
        "joblib.numpy_pickle.NumpyArrayWrapper",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._label.LabelEncoder",
        "sklearn.svm._classes.SVC",
        "sklearn.svm._classes.LinearSVC",
        "sklearn.calibration.CalibratedClassifierCV",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.frozen._frozen.FrozenEstimator",
    }
)


class RestrictedUnpickler(NumpyUnpickler):
    """joblib's unpickler (plain pickles too), refusing every global outside ``ALLOWED_GLOBALS``.

    joblib routes the nested pickles of object arrays through this same ``find_class``.
    """

    def find_class(self, module: str, name: str):
        qualified = f"{module}.{name}"
        if qualified not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.filename} asks to load {qualified!r}, which is not a scikit-learn or numpy "
                "class that an attribution model needs. Refused; nothing in the file was run."
            )
        return getattr(importlib.import_module(module), name)

    def get_extension(self, code: int):
        # pickle resolves EXT opcodes through a process-wide cache that bypasses find_class;
        # scikit-learn and numpy pickles never use them.
        raise UnsafePickleError(f"{self.filename} uses a pickle extension code ({code}). Refused; nothing in the file was run.")


def safe_load_pickle(path: Path):
    """Load a joblib or plain pickle through :class:`RestrictedUnpickler`.

    Raises:
        UnsafePickleError: the file references a disallowed global (its code never runs).
        WeightsFormatError: the file is not a readable pickle.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InconsistentVersionWarning)
            with _validate_fileobject_and_memmap(f, str(path)) as (fobj, _):
                if isinstance(fobj, str):
                    raise WeightsFormatError(f"{path} uses joblib's pre-0.10 format, which is not supported.")
                obj = RestrictedUnpickler(str(path), fobj, ensure_native_byte_order=True).load()
    except (UnsafePickleError, WeightsFormatError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            ImportError, OSError, MemoryError) as e:
        raise WeightsFormatError(f"{path} is not a readable pickle ({type(e).__name__}: {e}).") from e
    for w in caught:
        if issubclass(w.category, InconsistentVersionWarning):
            logger.warning("%s: %s", path.name, w.message)
    return obj


def display_name(label: str) -> str:
    """'stylegan2' -> 'StyleGAN2'; unknown labels are shown as they are."""
    key = "".join(ch for ch in str(label).lower() if ch.isalnum())
    return DISPLAY_NAMES.get(key, str(label))


class GANAttributor:
    """A fitted scaler and probabilistic classifier, with class labels in the classifier's column order."""

    # Open-set rule of models trained by ``ganorigin train``: features farther (RMS, standardised
    # space) than ``unknown_threshold`` from every class centroid come from an unknown generator.
    # The original pickles carry neither, so they never reject.
    centroids: Optional[np.ndarray] = None
    unknown_threshold: Optional[float] = None

    def __init__(self, scaler, classifier, labels: Sequence[str], *,
                 names: tuple[str, str] = ("The scaler", "The classifier")):
        """Check the fitted objects before use: kinds, shapes, finite values, one test prediction.

        Args:
            names: how messages name the scaler and the classifier (e.g. their files).

        Raises:
            WeightsFormatError: naming the object (or file) at fault.
        """
        scaler_name, classifier_name = names
        n_features = _check_scaler(scaler, scaler_name)
        _check_classifier(classifier, scaler, n_features, classifier_name)
        if len(labels) != len(classifier.classes_):
            raise WeightsFormatError(f"{len(labels)} labels for {len(classifier.classes_)} SVM classes.")
        self.scaler = scaler
        self.classifier = classifier
        self.labels = [str(label) for label in labels]

    @property
    def n_features(self) -> int:
        return int(self.scaler.n_features_in_)

    @property
    def display_names(self) -> list[str]:
        return [display_name(label) for label in self.labels]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(B, n_features) flattened W+ codes -> (B, n_classes) probabilities, columns as ``labels``."""
        features = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
        if features.shape[1] != self.n_features:
            raise WeightsFormatError(
                f"The attribution model expects {self.n_features} features, the encoder gives {features.shape[1]}; "
                "the e4e checkpoint and the SVM do not belong together."
            )
        if not np.isfinite(features).all():
            raise WeightsFormatError(f"The e4e encoder gave NaN or infinite W+ codes: its checkpoint ({E4E_FILE}) is "
                                     "probably damaged.")
        return self.classifier.predict_proba(self.scaler.transform(features))

    def centroid_distances(self, features: np.ndarray) -> np.ndarray:
        """(B,) RMS distance of the standardised features to the nearest class centroid."""
        if self.centroids is None:
            raise WeightsFormatError("This attribution model has no class centroids; retrain it with `ganorigin train`.")
        z = self.scaler.transform(np.asarray(features, dtype=np.float32).reshape(len(features), -1))
        return np.sqrt(np.stack([((z - c) ** 2).mean(axis=1) for c in self.centroids], axis=1).min(axis=1))

    def reject_unknown(self, features: np.ndarray) -> np.ndarray:
        """(B,) True where the open-set rule says the image comes from no known GAN."""
        if self.unknown_threshold is None or self.centroids is None:
            return np.zeros(len(features), dtype=bool)
        return self.centroid_distances(features) > self.unknown_threshold

    @classmethod
    def from_pickles(cls, svm_path: Path, scaler_path: Path, label_encoder_path: Path) -> "GANAttributor":
        """Load the original project's three joblib files, safely, and check what they hold.

        Raises:
            UnsafePickleError: a file asks for a class outside the allow-list (nothing in it ran).
            WeightsFormatError: a file is unreadable or holds the wrong kind of object, wrong
                shapes or non-finite values; the message names the file.
        """
        classifier = safe_load_pickle(svm_path)
        scaler = safe_load_pickle(scaler_path)
        label_encoder = safe_load_pickle(label_encoder_path)
        classes = _fitted_classes(classifier, str(svm_path))
        if classes.dtype.kind in "USO":  # fitted on the label strings themselves
            labels = list(classes)
        else:
            if not isinstance(label_encoder, LabelEncoder) or getattr(label_encoder, "classes_", None) is None:
                raise WeightsFormatError(f"{label_encoder_path} holds a {type(label_encoder).__name__}, "
                                         "not a fitted LabelEncoder.")
            if len(label_encoder.classes_) != len(classes):
                raise WeightsFormatError(
                    f"{label_encoder_path} names {len(label_encoder.classes_)} classes but the SVM in {svm_path} has "
                    f"{len(classes)}; the files do not belong together."
                )
            try:
                labels = list(label_encoder.inverse_transform(classes))
            except (AttributeError, ValueError, IndexError, TypeError) as e:
                raise WeightsFormatError(
                    f"{label_encoder_path} cannot name the SVM's classes {classes!r} ({e})."
                ) from e
        return cls(scaler, classifier, labels, names=(str(scaler_path), str(svm_path)))


def _check_scaler(scaler, name: str) -> int:
    """A fitted StandardScaler whose mean and scale are finite, one per feature, scales non-zero.
    Returns its number of features."""
    if not isinstance(scaler, StandardScaler):
        raise WeightsFormatError(f"{name} holds a {type(scaler).__name__}, not a StandardScaler.")
    try:
        check_is_fitted(scaler)
    except NotFittedError as e:
        raise WeightsFormatError(f"{name} holds a StandardScaler that is not fitted.") from e
    n_features = getattr(scaler, "n_features_in_", None)
    if not isinstance(n_features, (int, np.integer)) or n_features < 1:
        raise WeightsFormatError(f"{name}: the scaler's n_features_in_ is {n_features!r}, not a positive count.")
    for attr, used in (("mean_", scaler.with_mean), ("scale_", scaler.with_std)):
        value = getattr(scaler, attr, None)
        if value is None and not used:
            continue
        value = np.asarray(value)
        if value.shape != (n_features,) or value.dtype.kind not in "fiu":
            raise WeightsFormatError(
                f"{name}: the scaler's {attr} should be {n_features} numbers (one per feature); it has shape "
                f"{value.shape}, dtype {value.dtype}."
            )
        if attr == "scale_" and (value == 0).any():
            raise WeightsFormatError(f"{name}: the scaler's scale_ has zeros; every feature would divide by zero.")
    _check_finite(scaler, name)
    return int(n_features)


def _fitted_classes(classifier, name: str) -> np.ndarray:
    """The ``classes_`` (two or more) of a fitted classifier with ``predict_proba``."""
    try:
        check_is_fitted(classifier)
    except (NotFittedError, TypeError) as e:
        raise WeightsFormatError(f"{name}: {type(classifier).__name__} is not a fitted estimator.") from e
    if not hasattr(classifier, "predict_proba"):
        raise WeightsFormatError(f"{name}: {type(classifier).__name__} has no predict_proba; attribution needs probabilities.")
    classes = np.asarray(getattr(classifier, "classes_", []))
    if classes.ndim != 1 or len(classes) < 2:
        raise WeightsFormatError(f"{name}: the classifier's classes_ should list two or more classes, not {classes!r}.")
    return classes


def _check_classifier(classifier, scaler, n_features: int, name: str) -> None:
    """A fitted classifier with predict_proba over ``n_features`` inputs that gives finite probabilities."""
    classes = _fitted_classes(classifier, name)
    if getattr(classifier, "kernel", None) == "precomputed":
        raise WeightsFormatError(f"{name} holds an SVC with a precomputed kernel; attribution needs a classifier "
                                 f"over the {n_features} W+ features.")
    n_in = getattr(classifier, "n_features_in_", None)
    if n_in is not None and n_in != n_features:
        raise WeightsFormatError(f"The scaler expects {n_features} features but the SVM {n_in} ({name}).")
    _check_finite(classifier, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probabilities = classifier.predict_proba(scaler.transform(np.zeros((1, n_features), dtype=np.float32)))
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise WeightsFormatError(f"{name}: the classifier cannot score {n_features} features ({e}).") from e
    probabilities = np.asarray(probabilities)
    if probabilities.shape != (1, len(classes)) or not np.isfinite(probabilities).all():
        raise WeightsFormatError(
            f"{name}: the classifier gives {probabilities.tolist()} for {len(classes)} classes on a test input; "
            "its fitted values do not match its classes."
        )


def _check_finite(estimator, name: str) -> None:
    """Refuse a fitted estimator with NaN or inf anywhere in its learned numbers (nested ones included):
    scikit-learn would not fail on them, it would answer wrongly (libsvm even gives finite probabilities)."""
    where = _non_finite(estimator, type(estimator).__name__, set())
    if where is not None:
        raise WeightsFormatError(f"{name}: {where} holds NaN or infinite values.")


def _non_finite(obj, where: str, seen: set) -> Optional[str]:
    """The attribute path of the first NaN or inf in ``obj``, its scikit-learn members and their lists."""
    if isinstance(obj, np.ndarray):
        return where if obj.dtype.kind in "fc" and not np.isfinite(obj).all() else None
    if isinstance(obj, (float, np.floating)):
        return None if np.isfinite(obj) else where
    if isinstance(obj, (list, tuple)):
        members = [(f"{where}[{i}]", item) for i, item in enumerate(obj)]
    elif type(obj).__module__.startswith("sklearn.") and id(obj) not in seen:
        seen.add(id(obj))
        members = [(f"{where}.{key}", value) for key, value in vars(obj).items()]
    else:
        return None
    return next((found for path, value in members if (found := _non_finite(value, path, seen)) is not None), None)
