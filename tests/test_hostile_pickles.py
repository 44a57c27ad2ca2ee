"""A corpus of hostile pickles, made here, is refused by the restricted unpickler and never runs.

Each payload, if it ran, would create a marker file; after every load attempt the test checks
the marker does not exist. Covered: ``__reduce__`` to ``os.system``, ``subprocess.Popen``,
``eval``, ``builtins.exec``, ``getattr`` and attribute-path tricks on allowed modules,
``copyreg._reconstructor``, allowed scikit-learn objects nesting disallowed ones, joblib files
(plain and compressed) whose object arrays hide a payload in joblib's nested pickle stream,
pickle protocols 0 to 5, the INST / OBJ / EXT opcodes. Also proves that a well-formed pickle of
the wrong type is refused by ``GANAttributor`` with a ``WeightsFormatError``.
"""

from __future__ import annotations

import builtins
import copyreg
import os
import pickle
import shutil
import subprocess

import joblib
import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from ganorigin import UnsafePickleError, WeightsFormatError
from ganorigin.hub.pickles import load_attributor_pickles, safe_load_pickle
from ganorigin.testing import LABEL_ENCODER_FILE, SCALER_FILE, SVM_FILE

EXT_CODE = 0xF0  # a copyreg extension code this test registers for os.system, then removes
REFUSED: list[str] = []


class Reduce:
    """Pickles as ``func(*args)``: what an attacker's object does on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: str) -> dict:
    """name -> object whose unpickling would create ``marker``."""
    shell = f"touch {marker}"
    return {
        "os.system": Reduce(os.system, shell),
        "subprocess.Popen": Reduce(subprocess.Popen, ["touch", marker]),
        "subprocess.run": Reduce(subprocess.run, ["touch", marker]),
        "eval": Reduce(eval, f"open({marker!r}, 'w')"),
        "builtins.exec": Reduce(builtins.exec, f"open({marker!r}, 'w')"),
        "builtins.open": Reduce(builtins.open, marker, "w"),
        "getattr-on-allowed-class": Reduce(getattr, np.dtype, "__init__"),
        "copyreg._reconstructor": Reduce(copyreg._reconstructor, Reduce, object, None),
        "scaler-nesting-payload": _scaler_with(Reduce(os.system, shell)),
        "object-array-payload": np.array([1, Reduce(os.system, shell)], dtype=object),
        "scaler-object-array-payload": _scaler_with(np.array([Reduce(eval, f"open({marker!r}, 'w')")], dtype=object)),
    }


def _scaler_with(hidden) -> StandardScaler:
    scaler = StandardScaler().fit(np.arange(12.0).reshape(4, 3))
    scaler.mean_ = hidden
    return scaler


def _handmade(marker: str) -> dict:
    """Raw opcode streams the standard pickler never writes but an attacker can."""
    cmd = f"touch {marker}".encode()
    return {
        # protocol 0, INST: instantiate os.system with the args on the stack
        "INST-os.system": b"(S'" + cmd + b"'\nios\nsystem\n.",
        # protocol 1, OBJ: GLOBAL os.system, then call it on the marked args
        "OBJ-os.system": b"(cos\nsystem\nS'" + cmd + b"'\no.",
        # GLOBAL with an attribute path inside an allowed module
        "attribute-path-on-allowed-class": b"csklearn.svm._classes\nSVC.__init__.__globals__\n.",
        "dotted-builtins-via-numpy": b"cnumpy\nndarray.__class__.__subclasses__\n.",
        # protocol 4, STACK_GLOBAL of os.system, then REDUCE
        "STACK_GLOBAL-os.system": pickle.PROTO + b"\x04" + _unicode(b"os") + _unicode(b"system")
        + b"\x93" + _unicode(cmd) + b"\x85R.",
        # EXT1: the copyreg extension registry maps EXT_CODE to os.system
        "EXT1-os.system": pickle.PROTO + b"\x02\x82" + bytes([EXT_CODE]) + _unicode(cmd) + b"\x85R.",
        "EXT2-os.system": pickle.PROTO + b"\x02\x83" + EXT_CODE.to_bytes(2, "little") + _unicode(cmd) + b"\x85R.",
    }


def _unicode(text: bytes) -> bytes:
    return b"\x8c" + bytes([len(text)]) + text  # SHORT_BINUNICODE


def _corpus(folder, marker: str) -> list[tuple[str, object]]:
    """(name, path) of every hostile file: each payload in protocols 0-5, as joblib (plain and
    compressed) files, and the hand-made opcode streams."""
    files = []
    for name, payload in _payloads(marker).items():
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            path = folder / f"{name}-p{protocol}.pkl"
            path.write_bytes(pickle.dumps(payload, protocol=protocol))
            files.append((f"{name} pickle protocol {protocol}", path))
        for compress in (0, 3, ("lzma", 3), ("gzip", 3), ("bz2", 3)):
            path = folder / f"{name}-joblib-{compress}.pkl"
            joblib.dump(payload, path, compress=compress)
            files.append((f"{name} joblib compress={compress}", path))
    for name, data in _handmade(marker).items():
        path = folder / f"{name}.pkl"
        path.write_bytes(data)
        files.append((name, path))
    return files


@pytest.fixture
def ext_registered():
    """Register os.system as a copyreg extension for the test's duration, the way an attacker
    would hope a process had."""
    copyreg.add_extension("os", "system", EXT_CODE)
    yield
    copyreg.remove_extension("os", "system", EXT_CODE)


def test_every_hostile_pickle_is_refused_and_never_runs(tmp_path, ext_registered):
    marker = tmp_path / "PWNED"
    corpus = _corpus(tmp_path, str(marker))
    assert len(corpus) >= 100
    for name, path in corpus:
        with pytest.raises(UnsafePickleError) as refused:
            safe_load_pickle(path)
        assert "Refused" in str(refused.value), name
        assert not marker.exists(), f"{name}: the payload ran"
        REFUSED.append(name)
    print(f"\n{len(REFUSED)} hostile pickles refused, none ran")


def test_corpus_payloads_really_run_without_the_guard(tmp_path, ext_registered):
    """The corpus is live: plain ``pickle.load`` / ``joblib.load`` do run a sample of it."""
    if shutil.which("touch") is None:
        pytest.skip("no `touch` command to run")
    marker = tmp_path / "PWNED"
    for name, path in _corpus(tmp_path, str(marker)):
        if name.startswith(("os.system pickle protocol 2", "builtins.exec joblib compress=3",
                            "scaler-object-array-payload joblib compress=0", "INST-os.system", "EXT1-os.system")):
            marker.unlink(missing_ok=True)
            try:
                joblib.load(path) if "joblib" in name else pickle.loads(path.read_bytes())
            except (TypeError, ValueError):
                pass  # e.g. setting mean_ after the payload ran
            assert marker.exists(), f"{name} is not a working payload"


def test_valid_pickle_of_the_wrong_type_is_refused_clearly(tmp_path, weights_dir):
    files = {name: weights_dir / name for name in (SVM_FILE, SCALER_FILE, LABEL_ENCODER_FILE)}
    not_a_model = tmp_path / "array.pkl"
    joblib.dump(np.zeros((3, 9216), dtype=np.float32), not_a_model)
    with pytest.raises(WeightsFormatError, match="not a fitted estimator"):
        load_attributor_pickles(not_a_model, files[SCALER_FILE], files[LABEL_ENCODER_FILE])
    # The three files in the wrong order.
    with pytest.raises(WeightsFormatError):
        load_attributor_pickles(files[SCALER_FILE], files[LABEL_ENCODER_FILE], files[SVM_FILE])
    with pytest.raises(WeightsFormatError):
        load_attributor_pickles(files[SVM_FILE], files[LABEL_ENCODER_FILE], files[SCALER_FILE])
