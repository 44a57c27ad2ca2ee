"""Attribution: real scikit-learn objects saved by joblib (compressed or not) or pickle load through
the restricted unpickler and predict exactly as the originals; labels come from the label encoder;
pickles that would run code (directly or inside a joblib object array) are refused before their
payload runs; mismatched scaler/SVM sizes are rejected; display names are mapped."""

from __future__ import annotations

import builtins
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
from ganorigin.svm import display_name, safe_load_pickle

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

    attributor = GANAttributor.from_pickles(*paths)
    assert attributor.labels == list(label_encoder.classes_) == ["progan", "stylegan2", "stylegan3"]
    assert attributor.display_names == ["ProGAN", "StyleGAN2", "StyleGAN3"]
    np.testing.assert_array_equal(attributor.predict_proba(X), svm.predict_proba(scaler.transform(X.astype(np.float32))))


def test_labels_are_read_from_the_label_encoder(fitted, tmp_path):
    scaler, svm, _, X = fitted
    renamed = LabelEncoder().fit(["gan-c", "gan-a", "gan-b"])
    attributor = GANAttributor.from_pickles(
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
        GANAttributor.from_pickles(
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
