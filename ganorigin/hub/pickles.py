"""Reading the original project's three joblib pickles without letting them run code.

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

from joblib.numpy_pickle import NumpyUnpickler
from joblib.numpy_pickle_utils import _validate_fileobject_and_memmap
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.preprocessing import LabelEncoder

from ..errors import UnsafePickleError, WeightsFormatError
from ..models.attributor import GANAttributor, fitted_classes

logger = logging.getLogger(__name__)

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


def load_attributor_pickles(svm_path: Path, scaler_path: Path, label_encoder_path: Path) -> GANAttributor:
    """Load the original project's three joblib files, safely, and check what they hold.

    Raises:
        UnsafePickleError: a file asks for a class outside the allow-list (nothing in it ran).
        WeightsFormatError: a file is unreadable or holds the wrong kind of object, wrong
            shapes or non-finite values; the message names the file.
    """
    classifier = safe_load_pickle(svm_path)
    scaler = safe_load_pickle(scaler_path)
    label_encoder = safe_load_pickle(label_encoder_path)
    classes = fitted_classes(classifier, str(svm_path))
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
    return GANAttributor(scaler, classifier, labels, names=(str(scaler_path), str(svm_path)))
