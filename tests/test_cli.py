"""The command line on real images from ../shared/data/dev with the tiny test weights.

Proves: every command has --help with the shared weight flags; ``predict`` gives one row per
image (bad files included as rows with an error, exit status 1) with exactly the numbers of
``GANOrigin.predict``, in JSON lines and CSV, also as a real ``python -m ganorigin`` subprocess;
expected errors exit 2 with a message and no traceback; ``evaluate`` writes its report, CSV and
PNGs, and its metrics equal a hand computation with sklearn.metrics from its own CSV.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics

from ganorigin.cli import main

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cli_env(weights_env, monkeypatch):
    for name, value in weights_env.items():
        monkeypatch.setenv(name, value)
    return weights_env


@pytest.fixture(scope="module")
def image_dir(dev_images, tmp_path_factory) -> Path:
    """Four dev images per class (20 real images) plus three bad files."""
    root = tmp_path_factory.mktemp("images")
    for cls, paths in dev_images.items():
        (root / cls).mkdir()
        for path in paths[:4]:
            shutil.copyfile(path, root / cls / path.name)
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "garbage.jpg").write_bytes(os.urandom(3000))
    whole = next(p for p in sorted(root.rglob("*.png")) if p.stat().st_size > 10_000).read_bytes()
    (bad / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return root


@pytest.mark.parametrize("command", ["predict", "extract", "train", "evaluate", "explain"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"ganorigin {command}" in text
    if command != "train":
        for flag in ("--weights", "--offline", "--cache-dir", "--device"):
            assert flag in text
    if command in ("predict", "evaluate"):
        assert "--threshold" in text


def test_predict_gives_one_row_per_image_with_the_api_numbers(image_dir, weights_dir, cli_env, model, tmp_path):
    out = tmp_path / "rows.jsonl"
    status = main(["predict", str(image_dir), "--out", str(out), "--weights", str(weights_dir), "--offline",
                   "--batch-size", "4", "--no-progress"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    images = sorted(p for p in image_dir.rglob("*") if p.is_file())
    assert status == 1  # some files were bad
    assert sorted(row["path"] for row in rows) == [str(p) for p in images] and len(rows) == 23
    failed = {Path(row["path"]).name: row["error"] for row in rows if row["error"]}
    assert set(failed) == {"empty.png", "garbage.jpg", "truncated.png"}
    assert "empty" in failed["empty.png"] and "not an image" in failed["garbage.jpg"]
    for row in rows:
        if row["error"]:
            assert row["fake_probability"] is None
    by_path = {row["path"]: row for row in rows}
    for path in [p for p in images if p.parent.name != "bad"][::7]:
        # One image alone vs in a batch of four: float32 CPU kernels may differ in the last bits.
        expected = model.predict(path)
        row = by_path[str(path)]
        assert row["fake_probability"] == pytest.approx(expected.fake_probability, abs=1e-6)
        assert row["attribution"] == expected.attribution
        assert [row[f"p_{label}"] for label in expected.labels] == pytest.approx(expected.probabilities, abs=1e-6)


def test_predict_csv_from_a_text_list(image_dir, weights_dir, cli_env, model, capsys, tmp_path):
    good = sorted((image_dir / "real").iterdir())[:2]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([str(p) for p in good] + [str(image_dir / "bad" / "empty.png")]) + "\n")
    assert main(["predict", str(listing), "--format", "csv", "--weights", str(weights_dir), "--offline",
                 "--no-progress"]) == 1
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [row["path"] for row in rows] == [str(p) for p in good] + [str(image_dir / "bad" / "empty.png")]
    assert rows[2]["error"] and rows[2]["fake_probability"] == ""
    assert {"p_progan", "p_stylegan2", "p_stylegan3", "attribution", "is_fake", "unknown"} <= set(rows[0])
    # The same two images as one batch through the Python API: the very same numbers.
    for row, expected in zip(rows, model.predict_batch(good)):
        assert float(row["fake_probability"]) == expected.fake_probability and not row["error"]
        assert row["is_fake"] == str(expected.is_fake) and row["attribution"] == expected.attribution
        assert [float(row[f"p_{label}"]) for label in expected.labels] == list(expected.probabilities)


def test_python_m_ganorigin_subprocess(image_dir, weights_env):
    good = sorted((image_dir / "progan").iterdir())[0]
    env = {**os.environ, **weights_env}
    run = subprocess.run(
        [sys.executable, "-m", "ganorigin", "predict", str(good), str(image_dir / "bad" / "garbage.jpg"),
         "--format", "csv", "--offline"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 1, run.stderr
    rows = list(csv.DictReader(run.stdout.splitlines()))
    assert len(rows) == 2 and not rows[0]["error"] and rows[1]["error"]
    assert "Traceback" not in run.stderr and "1 of 2 images" in run.stderr

    broken = subprocess.run([sys.executable, "-m", "ganorigin", "predict", str(good), "--weights", "not-a-repo"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert broken.returncode == 2
    assert "error:" in broken.stderr and "not-a-repo" in broken.stderr and "Traceback" not in broken.stderr


def test_evaluate_matches_a_hand_computation(dev_images, weights_dir, cli_env, capsys, tmp_path):
    data = tmp_path / "data"
    for cls, count in (("real", 3), ("progan", 2), ("stylegan2", 2), ("stylegan3", 1), ("other_gan", 1)):
        (data / cls).mkdir(parents=True)
        for path in dev_images[cls][:count]:
            shutil.copyfile(path, data / cls / path.name)
    out = tmp_path / "eval"
    assert main(["evaluate", str(data), "--out", str(out), "--weights", str(weights_dir), "--offline",
                 "--threshold", "0.5", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ROC AUC" in printed and "open-set rule: none" in printed
    report = json.loads((out / "report.json").read_text())
    for png in ("roc.png", "attribution_confusion.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 == report["images"]

    y = np.array([row["class"] != "real" for row in rows], dtype=int)
    p = np.array([float(row["fake_probability"]) for row in rows])
    detection = report["detection"]
    assert detection["average_precision"] == pytest.approx(metrics.average_precision_score(y, p), abs=1e-12)
    assert detection["roc_auc"] == pytest.approx(metrics.roc_auc_score(y, p), abs=1e-12)
    assert detection["accuracy_at_threshold"] == pytest.approx(np.mean((p >= 0.5) == y))
    best = max(np.mean((p >= t) == y) for t in p)
    assert detection["accuracy_at_best_threshold"] == pytest.approx(best)
    assert np.mean((p >= detection["best_threshold"]) == y) == pytest.approx(best)

    labels = ["progan", "stylegan2", "stylegan3"]
    known = [row for row in rows if row["class"] in labels]
    predicted = [labels[int(np.argmax([float(row[f"p_{label}"]) for label in labels]))] for row in known]
    attribution = report["attribution"]
    assert attribution["n_known_fake"] == 5 and attribution["n_unknown_fake"] == 1
    assert attribution["accuracy"] == pytest.approx(np.mean([row["class"] == q for row, q in zip(known, predicted)]))
    assert attribution["open_set_rule"] is False and "unknown_rejection_rate" in attribution
    assert attribution["unknown_rejection_rate"] == 0.0  # the original pickles never reject


def test_explain_writes_heat_map_and_spectrum(dev_images, weights_dir, cli_env, model, capsys, tmp_path):
    """`explain` writes the heat map (same P(fake) as the API) and the frequency view as PNGs."""
    from PIL import Image

    face = sorted(dev_images["stylegan2"])[0]
    out = tmp_path / "why"
    assert main(["explain", str(face), "--weights", str(weights_dir), "--offline", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    reported = float(printed.split("fake probability ")[1].split(";")[0])
    assert reported == pytest.approx(model.predict(face).fake_probability, abs=0.02)  # bf16 fast path: ~1e-2
    for name, size in (("heatmap_crop.png", (224, 224)), ("spectrum.png", None), ("heatmap.png", None)):
        with Image.open(out / name) as im:
            assert im.mode == "RGB" and (size is None or im.size == size)
