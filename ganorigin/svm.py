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
from sklearn.utils.validation import check_is_fitted

from .errors import UnsafePickleError, WeightsFormatError

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

    def __init__(self, scaler, classifier, labels: Sequence[str]):
        for name, est in (("scaler", scaler), ("classifier", classifier)):
            try:
                check_is_fitted(est)
            except (NotFittedError, TypeError) as e:
                raise WeightsFormatError(f"The {name} ({type(est).__name__}) is not a fitted estimator.") from e
        if not hasattr(classifier, "predict_proba"):
            raise WeightsFormatError(f"{type(classifier).__name__} has no predict_proba; attribution needs probabilities.")
        n_in = getattr(classifier, "n_features_in_", None)
        if n_in is not None and n_in != scaler.n_features_in_:
            raise WeightsFormatError(f"The scaler expects {scaler.n_features_in_} features but the SVM {n_in}.")
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
        """Load the original project's three joblib files, safely."""
        classifier = safe_load_pickle(svm_path)
        scaler = safe_load_pickle(scaler_path)
        label_encoder = safe_load_pickle(label_encoder_path)
        classes = np.asarray(getattr(classifier, "classes_", []))
        if classes.dtype.kind in "USO":  # fitted on the label strings themselves
            return cls(scaler, classifier, list(classes))
        try:
            labels = label_encoder.inverse_transform(classes)
        except (AttributeError, ValueError, IndexError, TypeError) as e:
            raise WeightsFormatError(
                f"{label_encoder_path} cannot name the SVM's classes {getattr(classifier, 'classes_', None)!r} ({e})."
            ) from e
        return cls(scaler, classifier, list(labels))
