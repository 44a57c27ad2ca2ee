"""Attribution: real scikit-learn objects saved by joblib (compressed or not) or pickle load through
the restricted unpickler and predict exactly as the originals; labels come from the label encoder;
pickles that would run code (directly or inside a joblib object array) are refused before their
payload runs; mismatched scaler/SVM sizes are rejected; tampered but well-formed files (a scaler
of the wrong shape, with NaN or a zero scale, the wrong object in a file, a precomputed kernel, NaN
in an SVM or deep inside a calibrated classifier, class counts that disagree) are refused at load
naming the file; NaN W+ codes blame the encoder; display names are mapped."""

from __future__ import annotations

import builtins
import copy
import os
import pickle
import subprocess
import sys
import warnings

import joblib
import numpy as np
import pytest
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.svm import SVC

from ganorigin import GANAttributor, UnsafePickleError, WeightsFormatError
from ganorigin.hub.pickles import load_attributor_pickles, safe_load_pickle
from ganorigin.models import display_name
from ganorigin.testing import LABEL_ENCODER_FILE, SCALER_FILE, SVM_FILE

N_FEATURES = 24
LABELS = ["stylegan3", "progan", "stylegan2"]


@pytest.fixture(scope="module")
def fitted():
    """A real (scaler, SVM, label encoder) fitted on synthetic three-class data, plus test inputs."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2, (3, N_FEATURES))
    X = np.concatenate([c + rng.normal(0, 1, (15, N_FEATURES)) for c in centers])
    y = np.repeat(LABELS, 15)
    label_encoder = LabelEncoder().fit(y)
    scaler = StandardScaler().fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # probability=True is deprecated in sklearn 1.9
        svm = SVC(kernel="linear", probability=True, random_state=0).fit(scaler.transform(X), label_encoder.transform(y))
    return scaler, svm, label_encoder, rng.normal(0, 2, (7, N_FEATURES))


def _dump(obj, path, how):
    if how == "pickle":
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        joblib.dump(obj, path, compress=3 if how == "joblib-compressed" else 0)
    return path


@pytest.mark.parametrize("how", ["joblib", "joblib-compressed", "pickle"])
def test_real_sklearn_objects_round_trip(fitted, tmp_path, how):
    scaler, svm, label_encoder, X = fitted
    paths = [_dump(obj, tmp_path / f"{name}.pkl", how) for name, obj in
             (("svm", svm), ("scaler", scaler), ("labels", label_encoder))]
    loaded_svm, loaded_scaler, loaded_encoder = (safe_load_pickle(p) for p in paths)
    np.testing.assert_array_equal(loaded_svm.predict_proba(loaded_scaler.transform(X)),
                                  svm.predict_proba(scaler.transform(X)))
    np.testing.assert_array_equal(loaded_encoder.classes_, label_encoder.classes_)

    attributor = load_attributor_pickles(*paths)
    assert attributor.labels == list(label_encoder.classes_) == ["progan", "stylegan2", "stylegan3"]
    assert attributor.display_names == ["ProGAN", "StyleGAN2", "StyleGAN3"]
    np.testing.assert_array_equal(attributor.predict_proba(X), svm.predict_proba(scaler.transform(X.astype(np.float32))))


def test_labels_are_read_from_the_label_encoder(fitted, tmp_path):
    scaler, svm, _, X = fitted
    renamed = LabelEncoder().fit(["gan-c", "gan-a", "gan-b"])
    attributor = load_attributor_pickles(
        _dump(svm, tmp_path / "svm.pkl", "joblib"), _dump(scaler, tmp_path / "scaler.pkl", "joblib"),
        _dump(renamed, tmp_path / "labels.pkl", "joblib"),
    )
    assert attributor.labels == ["gan-a", "gan-b", "gan-c"]
    assert attributor.predict_proba(X).shape == (7, 3)


class _Payload:
    """Unpickling this calls ``func(*args)``, which creates the marker file."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": _Payload(os.system, (f"touch {marker}",)),
        "subprocess": _Payload(subprocess.call, ([sys.executable, "-c", touch],)),
        "eval": _Payload(eval, (touch,)),
        "builtins.exec": _Payload(builtins.exec, (touch,)),
    }


@pytest.mark.parametrize("kind", ["os.system", "subprocess", "eval", "builtins.exec"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, kind):
    live_marker = tmp_path / "live-marker"
    pickle.loads(pickle.dumps(_payloads(live_marker)[kind]))  # the payload really works when unpickled
    assert live_marker.exists()

    marker = tmp_path / "marker"
    for how in ("pickle", "joblib"):
        path = _dump({"svm": _payloads(marker)[kind]}, tmp_path / f"evil-{how}.pkl", how)
        with pytest.raises(UnsafePickleError, match="Refused") as info:
            safe_load_pickle(path)
        assert str(path) in str(info.value)
    assert not marker.exists()


def test_disallowed_class_inside_joblib_object_array_is_refused(tmp_path):
    marker = tmp_path / "marker"
    array = np.empty(2, dtype=object)
    array[0], array[1] = "progan", _payloads(marker)["os.system"]
    path = _dump(array, tmp_path / "labels.pkl", "joblib")
    with pytest.raises(UnsafePickleError):
        safe_load_pickle(path)
    assert not marker.exists()


def test_from_pickles_refuses_an_unsafe_file(fitted, tmp_path):
    scaler, svm, _, _ = fitted
    marker = tmp_path / "marker"
    with pytest.raises(UnsafePickleError):
        load_attributor_pickles(
            _dump(svm, tmp_path / "svm.pkl", "joblib"), _dump(scaler, tmp_path / "scaler.pkl", "joblib"),
            _dump(_payloads(marker)["eval"], tmp_path / "labels.pkl", "joblib"),
        )
    assert not marker.exists()


def test_not_a_pickle_is_a_format_error(tmp_path):
    path = tmp_path / "gan_scaler.pkl"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(WeightsFormatError, match="gan_scaler.pkl"):
        safe_load_pickle(path)


def test_mismatched_scaler_and_svm_feature_counts_are_rejected(fitted):
    _, svm, label_encoder, _ = fitted
    scaler = StandardScaler().fit(np.random.default_rng(1).normal(size=(10, N_FEATURES + 1)))
    with pytest.raises(WeightsFormatError, match=f"{N_FEATURES + 1} features but the SVM {N_FEATURES}"):
        GANAttributor(scaler, svm, list(label_encoder.classes_))


def test_wrong_feature_width_at_predict_time_is_explained(fitted):
    scaler, svm, label_encoder, X = fitted
    attributor = GANAttributor(scaler, svm, list(label_encoder.classes_))
    with pytest.raises(WeightsFormatError, match="do not belong together"):
        attributor.predict_proba(X[:, :-1])


def test_unfitted_estimators_are_rejected(fitted):
    scaler, _, label_encoder, _ = fitted
    with pytest.raises(WeightsFormatError, match="not a fitted estimator"):
        GANAttributor(scaler, SVC(probability=True), list(label_encoder.classes_))


@pytest.mark.parametrize(
    "label, shown",
    [("progan", "ProGAN"), ("ProGAN", "ProGAN"), ("pggan", "ProGAN"), ("stylegan2", "StyleGAN2"),
     ("StyleGAN-2", "StyleGAN2"), ("style_gan3", "StyleGAN3"), ("biggan", "biggan")],
)
def test_display_name(label, shown):
    assert display_name(label) == shown


def _tampered(fitted, tmp_path, *, scaler=None, svm=None, label_encoder=None):
    """The three files, real names, with any of the objects replaced."""
    original_scaler, original_svm, original_encoder, _ = fitted
    objects = {SVM_FILE: svm if svm is not None else original_svm,
               SCALER_FILE: scaler if scaler is not None else original_scaler,
               LABEL_ENCODER_FILE: label_encoder if label_encoder is not None else original_encoder}
    return [_dump(obj, tmp_path / name, "joblib") for name, obj in objects.items()]


def _scaler_with(fitted, **attributes):
    scaler = copy.deepcopy(fitted[0])
    for name, value in attributes.items():
        setattr(scaler, name, value)
    return scaler


@pytest.mark.parametrize(
    "case, culprit, message",
    [
        ("scaler mean of the wrong shape", SCALER_FILE, "mean_ should be 24 numbers"),
        ("scaler with NaN", SCALER_FILE, r"StandardScaler.mean_ holds NaN"),
        ("scaler with a zero scale", SCALER_FILE, "scale_ has zeros"),
        ("an SVC in the scaler file", SCALER_FILE, "holds a SVC, not a StandardScaler"),
        ("a scaler in the SVM file", SVM_FILE, "StandardScaler has no predict_proba"),
        ("SVC with a precomputed kernel", SVM_FILE, "precomputed kernel"),
        ("SVC with NaN coefficients", SVM_FILE, r"SVC._?dual_coef_ holds NaN"),
        ("SVM with fewer classes than the label encoder", LABEL_ENCODER_FILE, "names 3 classes but the SVM"),
        ("a LabelEncoder that is not fitted", LABEL_ENCODER_FILE, "not a fitted LabelEncoder"),
    ],
)
def test_tampered_but_well_formed_pickles_are_refused_naming_the_file(fitted, tmp_path, case, culprit, message):
    scaler, svm, label_encoder, X = fitted
    mean = scaler.mean_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        precomputed = SVC(kernel="precomputed", probability=True, random_state=0)
        precomputed.fit(X @ X.T, label_encoder.transform(label_encoder.classes_[np.arange(len(X)) % 3]))
        two_classes = SVC(kernel="linear", probability=True, random_state=0)
        two_classes.fit(scaler.transform(X[:6]), [0, 1, 0, 1, 0, 1])
    nan_svm = copy.deepcopy(svm)
    nan_svm.dual_coef_[0, 0] = np.nan  # sklearn reads the private _dual_coef_ too: set both
    nan_svm._dual_coef_[0, 0] = np.nan
    files = {
        "scaler mean of the wrong shape": dict(scaler=_scaler_with(fitted, mean_=mean[:-1])),
        "scaler with NaN": dict(scaler=_scaler_with(fitted, mean_=np.where(np.arange(len(mean)) == 3, np.nan, mean))),
        "scaler with a zero scale": dict(scaler=_scaler_with(fitted, scale_=np.where(np.arange(len(mean)) == 0, 0.0, scaler.scale_))),
        "an SVC in the scaler file": dict(scaler=svm),
        "a scaler in the SVM file": dict(svm=scaler),
        "SVC with a precomputed kernel": dict(svm=precomputed),
        "SVC with NaN coefficients": dict(svm=nan_svm),
        "SVM with fewer classes than the label encoder": dict(svm=two_classes),
        "a LabelEncoder that is not fitted": dict(label_encoder=LabelEncoder()),
    }[case]
    paths = _tampered(fitted, tmp_path, **files)
    with pytest.raises(WeightsFormatError, match=message) as error:
        load_attributor_pickles(*paths)
    assert culprit in str(error.value)


def test_the_untampered_files_load(fitted, tmp_path):
    """The baseline of the test above: the same files, unmodified, load and predict."""
    attributor = load_attributor_pickles(*_tampered(fitted, tmp_path))
    assert attributor.predict_proba(fitted[3]).shape == (7, 3)


def test_non_finite_codes_blame_the_encoder(fitted):
    scaler, svm, label_encoder, X = fitted
    attributor = GANAttributor(scaler, svm, list(label_encoder.classes_))
    X = X.copy()
    X[2, 5] = np.nan
    with pytest.raises(WeightsFormatError, match="e4e encoder gave NaN"):
        attributor.predict_proba(X)


def test_nan_inside_a_calibrated_classifier_is_found(fitted):
    """Models trained by ``ganorigin train`` are calibrated LinearSVCs: their nested numbers are checked too."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import LinearSVC

    scaler, _, label_encoder, _ = fitted
    rng = np.random.default_rng(3)
    X = np.concatenate([c + rng.normal(0, 1, (15, N_FEATURES)) for c in rng.normal(0, 2, (3, N_FEATURES))])
    classifier = CalibratedClassifierCV(LinearSVC(), method="sigmoid", cv=3).fit(scaler.transform(X), np.repeat([0, 1, 2], 15))
    labels = list(label_encoder.classes_)
    GANAttributor(scaler, classifier, labels)
    classifier.calibrated_classifiers_[1].calibrators[2].a_ = np.inf
    with pytest.raises(WeightsFormatError, match=r"calibrated_classifiers_\[1\]\.calibrators\[2\]\.a_ holds NaN"):
        GANAttributor(scaler, classifier, labels)
