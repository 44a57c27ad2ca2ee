"""Attribution: StandardScaler + linear SVM over e4e's flattened W+ codes -> ProGAN / StyleGAN2 / StyleGAN3.

:class:`GANAttributor` checks the fitted objects it is given (kinds, shapes, finite values, one
test prediction), so a tampered but well-formed model fails when loaded, not on each request.
Reading them from files: :mod:`ganorigin.hub.pickles` (the original pickles) and
:mod:`ganorigin.hub.trained_model` (models trained by ``ganorigin train``).
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from ..errors import WeightsFormatError

DISPLAY_NAMES = {"progan": "ProGAN", "pggan": "ProGAN", "stylegan2": "StyleGAN2", "stylegan3": "StyleGAN3"}


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
    # Whether the training features came from FFHQ-aligned faces; None when the model does not say.
    trained_on_aligned: Optional[bool] = None
    # The e4e weights its training features came from (models.encoder.encoder_fingerprint); None when unknown.
    trained_encoder: Optional[str] = None

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
            raise WeightsFormatError("The e4e encoder gave NaN or infinite W+ codes: its checkpoint "
                                     "(e4e_ffhq_encode.pt) is probably damaged.")
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


def fitted_classes(classifier, name: str) -> np.ndarray:
    """The ``classes_`` (two or more) of a fitted classifier with ``predict_proba``."""
    try:
        if hasattr(classifier, "fit"):  # a scikit-learn estimator
            check_is_fitted(classifier)
        elif not hasattr(classifier, "classes_"):  # a fixed model (a loaded trained one) has its classes
            raise TypeError("neither an estimator nor a fixed model")
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
    classes = fitted_classes(classifier, name)
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


def alignment_mismatch(attributor: GANAttributor, align: bool, can_align: bool = False) -> Optional[str]:
    """A warning when ``align`` differs from how the attribution model's training features were made.

    None when they agree or the model does not say (the original pickles). ``can_align``: dlib is
    installed (the warning then does not ask to install it).
    """
    trained = attributor.trained_on_aligned
    if trained is None or trained == bool(align):
        return None
    if align:
        return ("The attribution model was trained on unaligned images (`ganorigin extract --no-align`), but "
                "face alignment is on: attribution may be off. Turn alignment off (align=False, --no-align, or the "
                "switch in the app), or retrain on latents extracted with alignment (extract's default when dlib is installed).")
    how = ("drop --no-align, or align=True, or the switch in the app" if can_align
           else "needs dlib: pip install dlib-bin face-recognition-models")
    return ("The attribution model was trained on FFHQ-aligned faces (`ganorigin extract --align`), but face "
            f"alignment is off: attribution may be off. Turn alignment on ({how}), or retrain on latents extracted "
            "with --no-align.")
