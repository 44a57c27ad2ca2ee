"""Feature extraction, training, the safe model format and the open-set rule, on the real feature path.

Synthetic "generators" (distinct colour casts and periodic up-sampling-like patterns) are pushed
through the tiny e4e encoder of the test weights. The tests prove that extraction resumes without
re-encoding and bit-for-bit equals one uninterrupted run; that training learns the generators on
held-out data; that the saved JSON + npz model (and the exported joblib files, through the
restricted unpickler) reproduce the trained model's probabilities exactly; that
``GANOrigin.from_pretrained`` uses a trained model in place of the pickles; and that the open-set
threshold, learned from data, rejects an unseen generator while accepting known ones.

Every split keeps the augmented copies of one image together: on copies of random noise with
random labels, held-out accuracy is chance (a row-wise split reports a perfect score). The model
records whether its features were aligned, and a mismatch at prediction time is reported.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganorigin import GANAttributor, GANOrigin, WeightsFormatError
from ganorigin.cli import main
from ganorigin.factory import load_encoder
from ganorigin.models import E4EEncoder
from ganorigin.models.encoder import encoder_fingerprint
from ganorigin.result import UNKNOWN_GAN
from ganorigin.errors import DatasetError
from ganorigin.hub.pickles import load_attributor_pickles
from ganorigin.hub.trained_model import load_attribution_model, save_attribution_model
from ganorigin.models.attributor import alignment_mismatch
from ganorigin.training import (
    LATENTS_MANIFEST,
    evaluate,
    extract_features,
    load_latents,
    resolution_augment,
    source_folds,
    source_groups,
    split_by_source,
    train_attribution_model,
)
from ganorigin.training.data import _item_rng
from ganorigin.training.fit import CALIBRATION_FOLDS
from ganorigin.hub.trained_model import SAFE_ARRAYS_FILE, SAFE_MODEL_FILE
from ganorigin.testing import E4E_FILE, LABEL_ENCODER_FILE, SCALER_FILE, SVM_FILE

ROOT = Path(__file__).resolve().parents[1]

KNOWN = ("gan_a", "gan_b", "gan_c")
UNSEEN = "gan_x"
PER_CLASS = 12


def synthetic_image(kind: str, index: int, size: int = 64) -> Image.Image:
    """Noise around grey plus each generator's colour cast and periodic pattern."""
    rng = np.random.default_rng([KNOWN.index(kind) if kind in KNOWN else 9, index])
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = rng.normal(128.0, 20.0, (size, size, 3))
    if kind == "gan_a":
        pixels[..., 0] += 50
        pixels += 30 * np.sin(np.pi * xx / 2)[..., None]
    elif kind == "gan_b":
        pixels[..., 2] += 50
        pixels += 30 * np.sin(np.pi * yy / 4)[..., None]
    elif kind == "gan_c":
        pixels[..., 1] += 50
        pixels += 30 * ((xx + yy) % 2)[..., None]
    else:
        pixels -= 40
        pixels += 30 * np.sin(np.pi * (xx + yy) / 3)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    for kind in KNOWN + (UNSEEN,):
        (root / kind).mkdir()
        for i in range(PER_CLASS):
            synthetic_image(kind, i).save(root / kind / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def encoder(weights_dir) -> E4EEncoder:
    return load_encoder(weights_dir / E4E_FILE)


@pytest.fixture(scope="module")
def latents(synthetic_dir, weights_dir, tmp_path_factory) -> Path:
    """Features of every synthetic image, extracted through the CLI."""
    out = tmp_path_factory.mktemp("latents")
    args = ["extract", str(synthetic_dir), "--out", str(out), "--no-align", "--weights", str(weights_dir), "--offline",
            "--no-progress"]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def known_latents(latents, tmp_path_factory) -> Path:
    """The latents of the known generators only (the unseen one is kept for the open-set tests)."""
    out = tmp_path_factory.mktemp("latents_known")
    data = load_latents(latents)
    keep = data.labels != UNSEEN
    np.savez(out / "shard-00000.npz", keys=data.keys[keep], labels=data.labels[keep], paths=data.paths[keep],
             copies=np.zeros(keep.sum(), dtype=np.int32), features=data.features[keep])
    return out


TRAIN_ARGS = ["--test-size", "0.34", "--seed", "0"]


@pytest.fixture(scope="module")
def trained_dir(known_latents, tmp_path_factory) -> Path:
    """A model trained on the known generators through the CLI, with the joblib export."""
    out = tmp_path_factory.mktemp("model")
    assert main(["train", str(known_latents), "--out", str(out), *TRAIN_ARGS, "--export-joblib"]) == 0
    return out


@pytest.fixture(scope="module")
def trained_model(weights_dir, trained_dir, sources, tmp_path_factory) -> GANOrigin:
    """GANOrigin from a weights folder holding the trained safe-format model and no pickles."""
    folder = tmp_path_factory.mktemp("weights_trained")
    for f in weights_dir.iterdir():
        if not f.name.endswith(".pkl"):
            (folder / f.name).symlink_to(f)
    for name in ("attribution_model.json", "attribution_model.npz"):
        shutil.copyfile(trained_dir / name, folder / name)
    return GANOrigin.from_pretrained(replace(sources, weights_dir=str(folder)), device="cpu", align=False)


def _count_encoded(encoder: E4EEncoder, counts: list):
    return encoder.register_forward_hook(lambda module, inputs, output: counts.append(inputs[0].shape[0]))


def test_extract_with_alignment_encodes_the_aligned_faces(dev_images, encoder, tmp_path):
    """``--align``: each image's largest face, cropped the FFHQ way, is what e4e encodes (and latents.json says so)."""
    from ganorigin.align import align_face, alignment_available
    from ganorigin.factory import encode
    from ganorigin.images import load_image

    if not alignment_available():
        pytest.skip("dlib's face landmarks are not installed")
    data = tmp_path / "data" / "stylegan2"
    data.mkdir(parents=True)
    face = sorted(dev_images["stylegan2"])[0]
    shutil.copyfile(face, data / face.name)
    summary = extract_features(tmp_path / "data", tmp_path / "latents", encoder, align=True, progress=False)
    assert summary.complete and summary.encoded == 1
    assert json.loads((tmp_path / "latents" / "latents.json").read_text())["align"] is True
    aligned = align_face(load_image(face))
    assert aligned.used
    latents = load_latents(tmp_path / "latents")
    assert latents.aligned is True
    codes = latents.features
    np.testing.assert_allclose(codes[0], encode(encoder, [aligned.image])[0], rtol=0, atol=1e-5)


def test_extract_interrupted_then_resumed_equals_one_run(synthetic_dir, encoder, tmp_path):
    data = tmp_path / "data"
    for kind in KNOWN[:2]:
        (data / kind).mkdir(parents=True)
        for i in range(3):
            shutil.copyfile(synthetic_dir / kind / f"{i:03d}.png", data / kind / f"{i:03d}.png")
    settings = dict(augment=1, seed=3, batch_size=2, shard_size=4, align=False, progress=False)
    counts: list = []
    hook = _count_encoded(encoder, counts)
    try:
        whole = extract_features(data, tmp_path / "whole", encoder, **settings)
        assert whole.complete and whole.encoded == 12 and sum(counts) == 12

        counts.clear()
        batches: list = []

        def interrupt_third_batch(module, inputs):
            batches.append(1)
            if len(batches) == 3:
                raise KeyboardInterrupt

        pre = encoder.register_forward_pre_hook(interrupt_third_batch)
        with pytest.raises(KeyboardInterrupt):
            extract_features(data, tmp_path / "resumed", encoder, **settings)
        pre.remove()
        assert sum(counts) == 4  # two batches finished and were saved when Ctrl-C came
        assert len(load_latents(tmp_path / "resumed").keys) == 4

        resumed = extract_features(data, tmp_path / "resumed", encoder, **settings)
        assert resumed.complete and resumed.already_done == 4 and resumed.encoded == 8
        assert sum(counts) == 12  # every image went through the encoder exactly once

        again = extract_features(data, tmp_path / "resumed", encoder, **settings)
        assert again.encoded == 0 and sum(counts) == 12
    finally:
        hook.remove()

    a, b = load_latents(tmp_path / "whole"), load_latents(tmp_path / "resumed")
    assert list(a.keys) == list(b.keys) and len(a.keys) == 12
    assert a.features.tobytes() == b.features.tobytes()
    original, augmented = a.features[a.keys == "gan_a/000.png#0"], a.features[a.keys == "gan_a/000.png#1"]
    assert not np.array_equal(original, augmented)  # the augmented copy really is another resolution

    with pytest.raises(DatasetError, match="extracted with --augment 1 --seed 3 --no-align, not --augment 1 --seed 4 "
                                           "--no-align; use another --out folder, or those settings to resume"):
        extract_features(data, tmp_path / "resumed", encoder, **{**settings, "seed": 4})
    (tmp_path / "resumed" / LATENTS_MANIFEST).write_bytes(b"\xff not json")
    with pytest.raises(DatasetError, match="is not a folder of latents written by extract"):
        extract_features(data, tmp_path / "resumed", encoder, **settings)


def _two_classes(synthetic_dir: Path, root: Path, count: int = 2) -> Path:
    for kind in KNOWN[:2]:
        (root / kind).mkdir(parents=True)
        for i in range(count):
            shutil.copyfile(synthetic_dir / kind / f"{i:03d}.png", root / kind / f"{i:03d}.png")
    return root


def test_extract_refuses_to_resume_latents_of_other_e4e_weights(synthetic_dir, encoder, tmp_path):
    """Latents record which e4e weights made them: resuming with other weights would mix two encoders'
    features in one training set, so it is refused; a folder from before the record resumes as it was."""
    import copy

    import torch

    data = _two_classes(synthetic_dir, tmp_path / "data")
    settings = dict(align=False, progress=False, limit=1, batch_size=1)
    assert extract_features(data, tmp_path / "latents", encoder, **settings).encoded == 1
    other = copy.deepcopy(encoder)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(DatasetError, match="holds latents of other e4e weights .*use another --out folder, or the "
                                           "--weights that made them to resume"):
        extract_features(data, tmp_path / "latents", other, **settings)
    assert len(load_latents(tmp_path / "latents").keys) == 1  # nothing was added or dropped

    manifest = tmp_path / "latents" / LATENTS_MANIFEST
    recorded = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({k: v for k, v in recorded.items() if k != "encoder"}))  # an older folder
    resumed = extract_features(data, tmp_path / "latents", encoder, align=False, progress=False)
    assert resumed.complete and resumed.already_done == 1 and resumed.encoded == 3


def test_extract_encodes_changed_images_again_and_prunes_gone_ones_on_request(synthetic_dir, encoder, tmp_path):
    """A re-run encodes an image again when its file changed (its old rows are dropped); rows of images
    no longer in DATA_DIR stay (reported) until --prune, after which the latents equal a fresh extraction."""
    data = _two_classes(synthetic_dir, tmp_path / "data")
    settings = dict(augment=1, seed=1, align=False, progress=False, shard_size=3)
    first = extract_features(data, tmp_path / "latents", encoder, **settings)
    assert first.complete and first.encoded == 8 and (first.changed, first.gone) == (0, 0)

    synthetic_image(UNSEEN, 0).save(data / "gan_a" / "000.png")  # new content under the same name
    (data / "gan_b" / "001.png").unlink()
    resumed = extract_features(data, tmp_path / "latents", encoder, **settings)
    assert (resumed.changed, resumed.gone, resumed.encoded, resumed.already_done) == (2, 2, 2, 4)
    kept = load_latents(tmp_path / "latents")
    assert sorted(kept.keys) == sorted([*(f"gan_a/00{i}.png#{c}" for i in range(2) for c in range(2)),
                                        "gan_b/000.png#0", "gan_b/000.png#1", "gan_b/001.png#0", "gan_b/001.png#1"])

    pruned = extract_features(data, tmp_path / "latents", encoder, **settings, prune=True)
    assert (pruned.changed, pruned.gone, pruned.encoded, pruned.pruned) == (0, 2, 0, True)
    fresh = extract_features(data, tmp_path / "fresh", encoder, **settings)
    assert fresh.encoded == 6
    ours, theirs = load_latents(tmp_path / "latents"), load_latents(tmp_path / "fresh")
    assert list(ours.keys) == list(theirs.keys)
    assert list(ours.sources) == list(theirs.sources)
    np.testing.assert_allclose(ours.features, theirs.features, rtol=0, atol=1e-5)  # batches differ: last bits may


def test_an_image_moved_to_another_class_is_refused_by_train_until_pruned(synthetic_dir, encoder, tmp_path):
    """Moving a file between class folders leaves its old rows (an image no longer there); training on
    both labels of one image is refused, and --prune makes the latents trainable again."""
    data = tmp_path / "data"
    for kind in KNOWN[:2]:
        (data / kind).mkdir(parents=True)
        for i in range(7):
            shutil.copyfile(synthetic_dir / kind / f"{i:03d}.png", data / kind / f"{i:03d}.png")
    settings = dict(align=False, progress=False)
    extract_features(data, tmp_path / "latents", encoder, **settings)
    (data / "gan_a" / "000.png").rename(data / "gan_b" / "moved.png")
    assert extract_features(data, tmp_path / "latents", encoder, **settings).gone == 1
    latents = load_latents(tmp_path / "latents")
    with pytest.raises(DatasetError, match=r"1 source image\(s\) have rows under two classes .*--prune"):
        train_attribution_model(latents.features, latents.labels, groups=latents.groups, test_size=0.3)
    with pytest.raises(DatasetError) as named:  # with the rows' names, the message names the image
        train_attribution_model(latents.features, latents.labels, groups=latents.groups, test_size=0.3,
                                names=latents.paths)
    assert "such as " in str(named.value) and "000.png" in str(named.value) and "moved.png" in str(named.value)
    extract_features(data, tmp_path / "latents", encoder, **settings, prune=True)
    latents = load_latents(tmp_path / "latents")
    result = train_attribution_model(latents.features, latents.labels, groups=latents.groups, test_size=0.3)
    assert result.n_train + result.n_test == 14


def test_a_class_named_real_is_refused_by_extract_and_train(synthetic_dir, encoder, tmp_path):
    """Attribution names GANs; real images belong to the detector (evaluate's real/ folder)."""
    data = _two_classes(synthetic_dir, tmp_path / "data")
    shutil.copytree(data / "gan_a", data / "Real")
    with pytest.raises(DatasetError, match="A class folder is named 'real'"):
        extract_features(data, tmp_path / "latents", encoder, align=False, progress=False)
    assert not (tmp_path / "latents").exists()
    features = np.random.default_rng(0).normal(size=(24, 8)).astype(np.float32)
    with pytest.raises(DatasetError, match="A class folder is named 'real'"):
        train_attribution_model(features, ["gan_a"] * 12 + ["real"] * 12)


def test_extract_aligns_by_default_as_predict_does(dev_images, weights_dir, tmp_path, capsys):
    """Without --align or --no-align, extract aligns exactly when a model's predict does by default, so a
    model trained on its latents meets the faces it was trained on; resuming them unaligned is refused
    with the flags that made them."""
    from ganorigin.align import alignment_available

    data = tmp_path / "data" / "stylegan2"
    data.mkdir(parents=True)
    face = sorted(dev_images["stylegan2"])[0]
    shutil.copyfile(face, data / face.name)
    args = ["extract", str(tmp_path / "data"), "--out", str(tmp_path / "latents"), "--weights", str(weights_dir),
            "--offline", "--no-progress"]
    assert main(args) == 0
    default = alignment_available()
    assert load_latents(tmp_path / "latents").aligned is default
    capsys.readouterr()
    other = "--no-align" if default else "--align"
    assert main([*args, other]) == 2
    made = "--align" if default else "--no-align"
    assert (f"holds latents extracted with --augment 0 --seed 0 {made}, not --augment 0 --seed 0 {other}; "
            in capsys.readouterr().err)


def test_resolution_augmentation_is_seeded_per_image():
    image = synthetic_image("gan_a", 0)
    sizes = [resolution_augment(image, _item_rng(7, f"gan_a/{i}.png#1")).size for i in range(40)]
    assert all(w == h and 64 <= w <= 1024 for w, h in sizes)
    assert len(set(sizes)) > 20
    again = resolution_augment(image, _item_rng(7, "gan_a/3.png#1"))
    assert again.size == sizes[3]
    assert np.array_equal(np.asarray(again), np.asarray(resolution_augment(image, _item_rng(7, "gan_a/3.png#1"))))


def test_train_learns_the_generators_on_held_out_data(known_latents, tmp_path, capsys):
    assert main(["train", str(known_latents), "--out", str(tmp_path), *TRAIN_ARGS]) == 0
    out = capsys.readouterr().out
    for name in KNOWN + ("precision", "recall", "f1-score", "support"):
        assert name in out
    accuracy = float(out.split("Held-out accuracy:")[1].split()[0])
    assert accuracy >= 0.9
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((tmp_path / "attribution_model.json").read_text())
    assert meta["labels"] == list(KNOWN) and meta["held_out"]["accuracy"] == accuracy
    assert not list(tmp_path.glob("*.pkl"))


def test_saved_model_reproduces_the_trained_model_exactly(latents, trained_dir, tmp_path):
    data = load_latents(latents)
    known = data.labels != UNSEEN
    result = train_attribution_model(data.features[known], data.labels[known], test_size=0.34, seed=0)
    save_attribution_model(result, tmp_path)
    loaded = load_attribution_model(tmp_path / "attribution_model.json")
    expected = result.attributor.predict_proba(data.features)
    assert np.array_equal(loaded.predict_proba(data.features), expected)
    assert np.array_equal(loaded.reject_unknown(data.features), result.attributor.reject_unknown(data.features))
    assert loaded.labels == result.attributor.labels and loaded.unknown_threshold == result.attributor.unknown_threshold
    # The CLI trained the same model (same data and seed), and its joblib export loads through the
    # restricted unpickler to the very same probabilities.
    from_cli = load_attribution_model(trained_dir / "attribution_model.json")
    assert np.array_equal(from_cli.predict_proba(data.features), expected)
    pickled = load_attributor_pickles(trained_dir / SVM_FILE, trained_dir / SCALER_FILE, trained_dir / LABEL_ENCODER_FILE)
    assert pickled.labels == list(KNOWN) and pickled.unknown_threshold is None
    assert np.array_equal(pickled.predict_proba(data.features), expected)


def test_open_set_threshold_is_learned_and_rejects_an_unseen_generator(latents):
    data = load_latents(latents)
    known = data.labels != UNSEEN
    strict = train_attribution_model(data.features[known], data.labels[known], test_size=0.34, coverage=0.5)
    loose = train_attribution_model(data.features[known], data.labels[known], test_size=0.34, coverage=0.95)
    assert 0 < strict.attributor.unknown_threshold < loose.attributor.unknown_threshold
    rule = loose.attributor
    assert rule.reject_unknown(data.features[known]).mean() <= 0.15  # known generators mostly accepted
    assert rule.reject_unknown(data.features[~known]).mean() >= 0.7  # the unseen one mostly rejected


def test_from_pretrained_uses_the_trained_model_and_says_unknown_gan(trained_model, trained_dir, synthetic_dir):
    assert trained_model.weights.safe_model is not None and trained_model.weights.svm is None
    meta = json.loads((trained_dir / "attribution_model.json").read_text())
    assert trained_model.attributor.unknown_threshold == meta["unknown_threshold"]

    known = trained_model.predict(synthetic_dir / "gan_a" / "000.png", threshold=0.0)
    assert not known.unknown and known.attribution_label == "gan_a"
    as_json = known.to_dict()
    assert set(as_json) == {"prediction", "confidence", "probabilities", "deepfake_score"}
    assert as_json["prediction"] == "gan_a" and set(as_json["probabilities"]) == set(KNOWN)

    unseen = trained_model.predict_batch([synthetic_dir / UNSEEN / f"{i:03d}.png" for i in range(3)], threshold=0.0)
    assert sum(p.unknown for p in unseen) >= 2
    rejected = next(p for p in unseen if p.unknown)
    assert rejected.attribution == UNKNOWN_GAN
    as_json = rejected.to_dict()
    assert as_json["prediction"] == UNKNOWN_GAN and set(as_json["probabilities"]) == set(KNOWN)
    assert as_json["confidence"] == round(max(rejected.probabilities), 4)


def test_evaluate_reports_known_accuracy_and_unknown_rejection(trained_model, synthetic_dir, tmp_path):
    data = tmp_path / "data"
    for kind, count in (("real", 2), ("gan_a", 2), ("gan_b", 2), (UNSEEN, 2)):
        (data / kind).mkdir(parents=True)
        source = synthetic_dir / (kind if kind != "real" else "gan_c")
        for i in range(count):
            shutil.copyfile(source / f"{i:03d}.png", data / kind / f"{i:03d}.png")
    report = evaluate(trained_model, data, tmp_path / "out", progress=False)
    attribution = report["attribution"]
    assert attribution["open_set_rule"] and attribution["n_known_fake"] == 4 and attribution["n_unknown_fake"] == 2
    assert attribution["unknown_rejection_rate"] >= 0.5
    assert attribution["known_acceptance_rate"] >= 0.5
    assert attribution["confusion_columns"] == list(KNOWN) + [UNKNOWN_GAN]
    assert np.array(attribution["confusion"]).sum() == 4
    assert attribution["known_accuracy_open_set"] <= attribution["accuracy"]


def test_train_refuses_too_little_data(tmp_path):
    features = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    with pytest.raises(DatasetError, match="at least"):
        train_attribution_model(features, ["a", "a", "b", "b"])
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "m")]) == 2


def test_scores_that_separate_nothing_report_no_youden_threshold(tmp_path):
    from ganorigin.training.evaluate import _detection_metrics
    from ganorigin.training.reports import format_report

    def report(scores, known=0):
        rows = [{"y_fake": y, "fake_probability": p} for y, p in zip([0, 0, 1, 1], scores)]
        detection = _detection_metrics(rows, 0.5, tmp_path / "roc.png")
        return format_report({"detection": detection, "images": 4, "failed": [], "per_class": {"real": 2, "x": 2},
                              "threshold": 0.5, "attribution": {"n_known_fake": known, "n_unknown_fake": 2 - known,
                                                                "open_set_rule": None}})

    assert "no Youden J threshold (J = 0" in report([0.9, 0.2, 0.9, 0.2])  # each class scored alike: chance
    assert "Attribution (0 fakes of known GANs, 2 of unknown ones):" in report([0.9, 0.2, 0.9, 0.2])
    assert "Attribution (1 fake of known GANs, 1 of unknown ones):" in report([0.9, 0.2, 0.9, 0.2], known=1)
    assert "Youden J threshold 0.7000 (J = 1.0000)" in report([0.1, 0.2, 0.7, 0.8])


def test_train_given_the_image_folder_or_no_folder_says_to_extract_first(dev_images, tmp_path, capsys):
    images = tmp_path / "data" / "stylegan2"
    images.mkdir(parents=True)
    shutil.copy(dev_images["stylegan2"][0], images)
    for folder, words in ((tmp_path / "data", "holds images, not latents: run `ganorigin extract"),
                          (tmp_path / "nope", "is not a folder of latents")):
        assert main(["train", str(folder), "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err
        assert f"{folder} {words}" in err and f"--out {folder}" not in err, "never advise writing latents there"


def test_a_training_that_cannot_work_or_be_uploaded_is_refused_before_it_trains(known_latents, tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token either
    refused = {("--C", "0"): "--C must be greater than 0; got 0.",
               ("--coverage", "1"): "--coverage must be between 0 and 1 (both out); got 1.",
               ("--test-size", "0"): "--test-size must be between 0 and 1 (both out); got 0.",
               ("--push-to-hub", "bad repo id!!"): "--push-to-hub 'bad repo id!!' is not a Hub repo id",
               ("--push-to-hub", "no-owner"): "name the owner too",
               ("--push-to-hub", "org/name"): "--push-to-hub needs a Hugging Face token"}
    for flag, message in refused.items():
        assert main(["train", str(known_latents), "--out", str(tmp_path / "m"), *TRAIN_ARGS, *flag]) == 2, flag
        captured = capsys.readouterr()
        assert message in captured.err and "Trained on" not in captured.out, flag
    assert not (tmp_path / "m").exists()


def test_an_upload_that_cannot_reach_the_hub_is_one_line_and_keeps_the_model(known_latents, tmp_path):
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_test", "HF_HUB_DISABLE_XET": "1"}
    out = tmp_path / "m"
    run = subprocess.run([sys.executable, "-m", "ganorigin", "train", str(known_latents), "--out", str(out),
                          *TRAIN_ARGS, "--push-to-hub", "org/name"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert f"Upload of {out} to org/name failed" in run.stderr and "the model is saved there" in run.stderr
    assert (out / SAFE_MODEL_FILE).is_file()


def test_cross_validation_says_when_fewer_folds_would_do_and_reports_cross_validated_accuracy(known_latents, tmp_path,
                                                                                              capsys):
    too_many = PER_CLASS // CALIBRATION_FOLDS + 1  # more folds than 12 images per class can fill
    assert main(["train", str(known_latents), "--out", str(tmp_path / "m5"), "--cv", str(too_many)]) == 2
    err = capsys.readouterr().err
    assert f"has {PER_CLASS} source images" in err and "or fewer folds" in err, err
    assert main(["train", str(known_latents), "--out", str(tmp_path / "m2"), "--cv", "2"]) == 0
    out = capsys.readouterr().out
    assert "2-fold cross-validation" in out and "Cross-validated accuracy:" in out and "Held-out accuracy" not in out


# --------------------------------------------------------------------------------------------
# Splits by source image


def _copies_of_random_images(n_images: int = 30, copies: int = 3, dim: int = 256, seed: int = 0):
    """Features of ``copies`` slightly different copies of each random image, with random labels."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n_images, dim))
    features = np.repeat(images, copies, axis=0) + 0.05 * rng.normal(size=(n_images * copies, dim))
    image_labels = np.array(["a", "b", "c"] * (n_images // 3))
    keys = [f"{label}/{i:03d}.png#{c}" for i, label in enumerate(image_labels) for c in range(copies)]
    return features.astype(np.float32), np.repeat(image_labels, copies), keys


@pytest.mark.parametrize("test_size", [0.2, 0.34, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_out_rows_never_share_a_source_image_with_training_rows(test_size, seed):
    _, labels, keys = _copies_of_random_images()
    groups = source_groups(keys)
    train, test = split_by_source(labels, groups, test_size, seed)
    assert sorted(np.concatenate([train, test])) == list(range(len(keys)))
    stems = np.array([key.rsplit("#", 1)[0] for key in keys])
    assert not set(stems[train]) & set(stems[test])
    for label in "abc":  # stratified: every class on both sides, in proportion
        held_out = len(set(stems[test][labels[test] == label]))
        assert held_out == min(max(1, round(test_size * 10)), 10 - 3)
    for train, test in source_folds(labels, groups, 5, seed):
        assert not set(stems[train]) & set(stems[test])
        assert set(labels[test]) == {"a", "b", "c"}


def test_source_groups_join_copies_and_identical_files_and_read_old_shards():
    keys = ["a/x.png#0", "a/x.png#1", "a/odd#name.png#0", "a/odd#name.png#1", "b/y.png#0", "b/z.png#0"]
    # y.png and z.png are the same file under two names; old shards have no digest at all.
    groups = source_groups(keys, ["d1", "d1", "d2", "d2", "d3", "d3"])
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[4] == groups[5]
    assert len(set(groups)) == 3
    old = source_groups(keys, [""] * 6)
    assert old[0] == old[1] and old[2] == old[3] and old[4] != old[5] and len(set(old)) == 4
    assert np.array_equal(source_groups(keys), old)


def test_training_on_copies_of_random_images_reports_chance_not_a_leak():
    features, labels, keys = _copies_of_random_images()
    groups = source_groups(keys)
    for cv in (None, 3):
        honest = train_attribution_model(features, labels, groups=groups, cv=cv, seed=0)
        assert honest.accuracy <= 0.6, f"cv={cv}: {honest.accuracy}"  # 3 classes of noise: chance is 1/3
        # The same rows split one by one put copies of test images in training: a "perfect" score.
        leaked = train_attribution_model(features, labels, cv=cv, seed=0)
        assert leaked.accuracy >= 0.8
    assert honest.n_test_sources == 30 and honest.n_train_sources == 30  # cross-validation: every image once
    held_out = train_attribution_model(features, labels, groups=groups, seed=0)
    assert held_out.n_test == 3 * held_out.n_test_sources and held_out.n_test_sources == 6


def test_train_counts_source_images_not_copies():
    features, labels, keys = _copies_of_random_images(n_images=15, copies=4)  # 5 images, 20 rows per class
    with pytest.raises(DatasetError, match="5 source images; at least 6"):
        train_attribution_model(features, labels, groups=source_groups(keys))


@pytest.fixture(scope="module")
def augmented_noise_latents(weights_dir, tmp_path_factory) -> Path:
    """Random-noise images in three class folders, extracted with --augment 2 through the CLI."""
    data = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(5)
    for cls in ("a", "b", "c"):
        (data / cls).mkdir()
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(data / cls / f"{i}.png")
    out = tmp_path_factory.mktemp("noise_latents")
    assert main(["extract", str(data), "--out", str(out), "--augment", "2", "--no-align", "--weights", str(weights_dir),
                 "--offline", "--no-progress"]) == 0
    return out


def test_train_on_augmented_latents_holds_out_whole_images(augmented_noise_latents, tmp_path, capsys):
    latents = load_latents(augmented_noise_latents)
    assert len(latents.keys) == 72 and all(len(s) == 64 for s in latents.sources)  # sha256 of each source file
    train, test = split_by_source(latents.labels, latents.groups, 0.2, 0)
    sources = lambda rows: {str(k).rsplit("#", 1)[0] for k in latents.keys[rows]}  # noqa: E731
    assert not sources(train) & sources(test)

    assert main(["train", str(augmented_noise_latents), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(18 source images)" in out and "(6 source images;" in out
    meta = json.loads((tmp_path / SAFE_MODEL_FILE).read_text())
    assert meta["held_out"]["n_test"] == 18 and meta["held_out"]["n_test_sources"] == 6
    assert meta["held_out"]["accuracy"] <= 0.7  # noise; the row-wise split reported 1.0 here
    assert meta["aligned"] is False  # latents.json: extracted with --no-align


def test_latents_folder_mixing_old_and_new_shards_groups_by_image(augmented_noise_latents, tmp_path):
    """A shard written before the source digests were recorded still loads; keys decide its groups."""
    latents = load_latents(augmented_noise_latents)
    old, new = latents.keys.astype(str).tolist().index("b/0.png#0"), len(latents.keys)
    np.savez(tmp_path / "shard-00000.npz", keys=latents.keys[:old], labels=latents.labels[:old],
             paths=latents.paths[:old], copies=np.zeros(old, dtype=np.int32), features=latents.features[:old])
    np.savez(tmp_path / "shard-00001.npz", keys=latents.keys[old:new], labels=latents.labels[old:new],
             paths=latents.paths[old:new], sources=latents.sources[old:new],
             copies=np.zeros(new - old, dtype=np.int32), features=latents.features[old:new])
    mixed = load_latents(tmp_path)
    assert list(mixed.sources[:old]) == [""] * old and mixed.aligned is None  # no latents.json here
    assert len(set(mixed.groups)) == 24 and np.array_equal(mixed.features, latents.features)


def test_a_broken_shard_is_a_dataset_error(tmp_path):
    np.savez(tmp_path / "shard-00000.npz", keys=np.array(["a/1.png#0"]))  # no features
    with pytest.raises(DatasetError, match="shard-00000.npz is not a readable latents shard"):
        load_latents(tmp_path)
    (tmp_path / "shard-00000.npz").write_bytes(b"PK\x03\x04 cut short")  # an interrupted copy
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "model")]) == 2


# --------------------------------------------------------------------------------------------
# The saved model: alignment, broken files


def test_model_without_centroids_is_a_format_error_naming_the_file(trained_dir, tmp_path):
    for name in (SAFE_MODEL_FILE, SAFE_ARRAYS_FILE):
        shutil.copyfile(trained_dir / name, tmp_path / name)
    with np.load(tmp_path / SAFE_ARRAYS_FILE) as data:
        arrays = {name: data[name] for name in data.files if name != "centroids"}
    np.savez(tmp_path / SAFE_ARRAYS_FILE, **arrays)
    with pytest.raises(WeightsFormatError, match=f"{SAFE_MODEL_FILE}.*not a readable attribution model.*centroids"):
        load_attribution_model(tmp_path / SAFE_MODEL_FILE)


@pytest.fixture(scope="module")
def aligned_model_dir(known_latents, tmp_path_factory) -> Path:
    """A model trained through the CLI on latents whose latents.json says they were aligned."""
    latents = tmp_path_factory.mktemp("aligned_latents")
    shutil.copyfile(known_latents / "shard-00000.npz", latents / "shard-00000.npz")
    (latents / LATENTS_MANIFEST).write_text(json.dumps({"format": "ganorigin-latents", "augment": 0, "seed": 0,
                                                        "align": True}))
    out = tmp_path_factory.mktemp("aligned_model")
    assert main(["train", str(latents), "--out", str(out), *TRAIN_ARGS]) == 0
    return out


def test_the_model_records_how_its_features_were_aligned(aligned_model_dir, trained_dir):
    assert json.loads((aligned_model_dir / SAFE_MODEL_FILE).read_text())["aligned"] is True
    assert load_attribution_model(aligned_model_dir / SAFE_MODEL_FILE).trained_on_aligned is True
    # trained_dir's latents have no latents.json: unknown, as for models saved before it was recorded.
    assert load_attribution_model(trained_dir / SAFE_MODEL_FILE).trained_on_aligned is None


def test_alignment_mismatch_says_which_way():
    attributor = GANAttributor.__new__(GANAttributor)
    for trained, align, expected in ((True, True, None), (False, False, None), (None, True, None),
                                     (None, False, None), (False, True, "trained on unaligned images"),
                                     (True, False, "trained on FFHQ-aligned faces")):
        attributor.trained_on_aligned = trained
        message = alignment_mismatch(attributor, align)
        assert message is None if expected is None else expected in message
    attributor.trained_on_aligned = True
    assert "drop --no-align" in alignment_mismatch(attributor, False, can_align=True)  # dlib is there: no install
    assert "pip install dlib" not in alignment_mismatch(attributor, False, can_align=True)
    pickles = GANAttributor.__new__(GANAttributor)  # the original pickles say nothing about alignment
    assert alignment_mismatch(pickles, True) is None and alignment_mismatch(pickles, False) is None


def _weights_with_model(weights_dir: Path, model_dir: Path, folder: Path) -> Path:
    """A weights folder: the test weights (linked) with a trained model in place of the pickles."""
    folder.mkdir()
    for f in weights_dir.iterdir():
        if not f.name.endswith(".pkl"):
            (folder / f.name).symlink_to(f)
    for name in (SAFE_MODEL_FILE, SAFE_ARRAYS_FILE):
        shutil.copyfile(model_dir / name, folder / name)
    return folder


def test_cli_warns_when_alignment_differs_from_training(aligned_model_dir, weights_dir, weights_env, synthetic_dir,
                                                        tmp_path, monkeypatch, caplog, capsys):
    folder = _weights_with_model(weights_dir, aligned_model_dir, tmp_path / "weights")
    image = str(synthetic_dir / "gan_a" / "000.png")
    monkeypatch.setenv("GANORIGIN_UFD_HEAD_SHA256", weights_env["GANORIGIN_UFD_HEAD_SHA256"])
    with caplog.at_level(logging.WARNING):
        assert main(["predict", image, "--weights", str(folder), "--offline", "--no-align", "--no-progress"]) == 0
    warnings = [r.getMessage() for r in caplog.records  # (a CPU may add the probe's: a fast path refused)
                if r.levelno == logging.WARNING and "trained on FFHQ-aligned faces" in r.getMessage()]
    assert len(warnings) == 1 and "alignment is off" in warnings[0]
    assert json.loads(capsys.readouterr().out)["path"] == image
    command = [sys.executable, "-m", "ganorigin", "predict", image, "--weights", str(folder), "--offline", "--no-align",
               "--no-progress"]
    run = subprocess.run(command, env={**os.environ, **weights_env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0  # said as the command's own warnings are, not as a log record
    assert "ganorigin predict: warning: The attribution model was trained on FFHQ-aligned faces" in run.stderr, run.stderr


@pytest.fixture(scope="module")
def encoder_model_dir(latents, tmp_path_factory) -> Path:
    """A model trained through the CLI on latents that the CLI extracted with the test weights."""
    out = tmp_path_factory.mktemp("encoder_model")
    assert main(["train", str(latents), "--out", str(out), *TRAIN_ARGS]) == 0
    return out


def test_the_model_records_its_e4e_weights_and_warns_when_loaded_with_others(encoder_model_dir, trained_dir, encoder,
                                                                            weights_dir, sources, tmp_path, caplog):
    fingerprint = encoder_fingerprint(encoder)
    assert json.loads((encoder_model_dir / SAFE_MODEL_FILE).read_text())["encoder"] == fingerprint
    assert load_attribution_model(trained_dir / SAFE_MODEL_FILE).trained_encoder is None  # latents without a record

    def loaded_warnings(folder: Path) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            GANOrigin.from_pretrained(replace(sources, weights_dir=str(folder)), device="cpu", align=False)
        return [r.getMessage() for r in caplog.records if "other e4e weights" in r.getMessage()]

    assert loaded_warnings(_weights_with_model(weights_dir, encoder_model_dir, tmp_path / "same")) == []
    other = _weights_with_model(weights_dir, encoder_model_dir, tmp_path / "other")
    meta = json.loads((other / SAFE_MODEL_FILE).read_text())
    (other / SAFE_MODEL_FILE).write_text(json.dumps({**meta, "encoder": "0" * 64}))
    warnings = loaded_warnings(other)
    assert len(warnings) == 1 and "0" * 12 in warnings[0] and fingerprint[:12] in warnings[0]
    (other / SAFE_MODEL_FILE).write_text(json.dumps({**meta, "encoder": "../../etc/passwd"}))
    with pytest.raises(WeightsFormatError, match="'encoder' must be a sha256"):
        load_attribution_model(other / SAFE_MODEL_FILE)


def test_the_servers_start_up_check_gives_no_alignment_warning_the_model_would_not(aligned_model_dir, weights_dir,
                                                                                   weights_env, tmp_path, caplog):
    """A model trained on aligned faces, served with alignment on: the check on a test image at start-up
    must not claim that alignment is off."""
    from ganorigin.align import alignment_available
    from ganorigin.hub import WeightSources
    from ganorigin.serving.service import _probe

    if not alignment_available():
        pytest.skip("dlib's face landmarks are not installed: alignment is off, and the warning is true")
    folder = _weights_with_model(weights_dir, aligned_model_dir, tmp_path / "weights")
    sources = WeightSources(weights_dir=str(folder), ufd_head_sha256=weights_env["GANORIGIN_UFD_HEAD_SHA256"],
                            local_files_only=True)
    model = GANOrigin.from_pretrained(sources)
    assert model.align is True and model.attributor.trained_on_aligned is True
    with caplog.at_level(logging.WARNING):
        _probe(model)
        model.predict(synthetic_image("gan_a", 0))
    assert not [r for r in caplog.records if "trained on FFHQ-aligned" in r.getMessage()]


def test_cross_validation_with_fewer_than_two_folds_is_refused_from_python_too():
    from ganorigin.errors import DatasetError
    from ganorigin.training import train_attribution_model

    features = np.random.default_rng(0).normal(size=(40, 8))
    labels = ["progan", "stylegan2"] * 20
    for folds in (1, 0):
        with pytest.raises(DatasetError, match=f"at least 2 folds; got {folds}"):
            train_attribution_model(features, labels, cv=folds)


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_a_long_confusion_matrix_title_stays_inside_the_picture(classes):
    """The title `train` gives (its evaluation recipe) wraps instead of being cut at the picture's edges."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ganorigin.training.reports import confusion_figure

    title = "Held-out attribution (stratified hold-out by source image, test_size=0.2, 5 calibration folds)"
    figure = confusion_figure(np.eye(classes, dtype=int), [f"stylegan{i}" for i in range(classes)], title)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    shown = figure.axes[0].title
    box = shown.get_window_extent(canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= figure.bbox.width and box.y1 <= figure.bbox.height
    assert shown.get_text().replace("\n", " ") == title  # every word is kept
