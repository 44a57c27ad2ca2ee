"""Feature extraction, training, the safe model format and the open-set rule, on the real feature path.

Synthetic "generators" (distinct colour casts and periodic up-sampling-like patterns) are pushed
through the tiny e4e encoder of the test weights. The tests prove that extraction resumes without
re-encoding and bit-for-bit equals one uninterrupted run; that training learns the generators on
held-out data; that the saved JSON + npz model (and the exported joblib files, through the
restricted unpickler) reproduce the trained model's probabilities exactly; that
``GANOrigin.from_pretrained`` uses a trained model in place of the pickles; and that the open-set
threshold, learned from data, rejects an unseen generator while accepting known ones.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganorigin import GANAttributor, GANOrigin
from ganorigin.cli import main
from ganorigin.encoder import E4EEncoder
from ganorigin.pipeline import UNKNOWN_GAN
from ganorigin.training import (
    DatasetError,
    evaluate,
    extract_features,
    load_attribution_model,
    load_latents,
    resolution_augment,
    save_attribution_model,
    train_attribution_model,
    _item_rng,
)
from ganorigin.testing import E4E_FILE, LABEL_ENCODER_FILE, SCALER_FILE, SVM_FILE

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
    return E4EEncoder.from_checkpoint(weights_dir / E4E_FILE)


@pytest.fixture(scope="module")
def latents(synthetic_dir, weights_dir, tmp_path_factory) -> Path:
    """Features of every synthetic image, extracted through the CLI."""
    out = tmp_path_factory.mktemp("latents")
    args = ["extract", str(synthetic_dir), "--out", str(out), "--weights", str(weights_dir), "--offline", "--no-progress"]
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


def test_extract_interrupted_then_resumed_equals_one_run(synthetic_dir, encoder, tmp_path):
    data = tmp_path / "data"
    for kind in KNOWN[:2]:
        (data / kind).mkdir(parents=True)
        for i in range(3):
            shutil.copyfile(synthetic_dir / kind / f"{i:03d}.png", data / kind / f"{i:03d}.png")
    settings = dict(augment=1, seed=3, batch_size=2, shard_size=4, progress=False)
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

    with pytest.raises(DatasetError, match="other settings|made with"):
        extract_features(data, tmp_path / "resumed", encoder, **{**settings, "seed": 4})


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
