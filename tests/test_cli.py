"""The command line on real images from ../shared/data/dev with the tiny test weights.

Proves: every command has --help with the shared weight flags (progress in the general options,
no model flags on ``explain``); ``predict`` gives one row per image (bad files included as rows
with an error, exit status 1) with exactly the numbers of ``GANOrigin.predict``, in JSON lines and
CSV, also as a real ``python -m ganorigin`` subprocess; expected errors (no images, a weights
folder that does not exist) exit 2 with a message and no traceback; ``evaluate`` writes its
report, CSV and PNGs, and its metrics equal a hand computation with sklearn.metrics from its own
CSV. The package installs with pip and its ``ganorigin`` script works from any directory;
``demo-weights`` prints commands that run the installed CLI and the app on random test weights.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics

from ganorigin.cli import main
from ganorigin.testing import TEST_WEIGHTS_MARKER

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


@pytest.mark.parametrize("command", ["predict", "extract", "train", "evaluate", "explain", "robustness", "demo-weights"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"ganorigin {command}" in text
    sections = _help_sections(text)
    if command not in ("train", "demo-weights"):
        assert all(flag in sections["weights"] for flag in ("--weights", "--offline", "--cache-dir", "--device"))
    assert ("--threshold" in text) == (command in ("predict", "evaluate", "robustness"))
    assert ("--commfor-threshold" in text) == ("--threshold" in text)
    assert ("--no-align" in text) == (command in ("predict", "evaluate", "robustness", "extract"))
    if command in ("predict", "extract", "evaluate", "robustness"):
        assert "--no-progress" in sections["options"] and "--no-progress" not in sections.get("weights", "")


def test_every_argument_of_every_command_says_what_it_is():
    import argparse

    from ganorigin.cli import build_parser

    def silent(parser, name=""):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command, sub in action.choices.items():
                    yield from silent(sub, f"{name} {command}".strip())
            elif not action.help:
                yield f"{name} {action.dest}"

    assert list(silent(build_parser())) == []


def _help_sections(text: str) -> dict:
    """argparse help -> {"options": ..., "weights": ..., "model": ...} (the option groups' text)."""
    sections: dict = {}
    name = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            name = line[:-1]
            sections[name] = ""
        elif name:
            sections[name] += line + "\n"
    return sections


def test_predict_gives_one_row_per_image_with_the_api_numbers(image_dir, weights_dir, cli_env, model, tmp_path):
    out = tmp_path / "new" / "folders" / "rows.jsonl"  # made, as every command makes its --out folder
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


def test_predict_takes_community_forensics_threshold_and_refuses_one_out_of_range(image_dir, weights_dir, cli_env,
                                                                                   model, capsys):
    face = sorted((image_dir / "real").iterdir())[0]
    expected = model.predict(face, threshold=1.0)
    for commfor_threshold in ("0", "1"):
        assert main(["predict", str(face), "--threshold", "1", "--commfor-threshold", commfor_threshold,
                     "--weights", str(weights_dir), "--offline", "--no-progress"]) == 0
        row = json.loads(capsys.readouterr().out)
        want = replace(expected, commfor_threshold=float(commfor_threshold))
        assert (row["verdict"], row["verdict_text"]) == (want.verdict, want.verdict_text)
    assert want.verdict == "real" and replace(expected, commfor_threshold=0.0).verdict_by == ("commfor",)
    assert main(["predict", str(face), "--commfor-threshold", "2", "--weights", str(weights_dir), "--offline"]) == 2
    assert "--commfor-threshold: The threshold is a probability from 0 to 1; got 2.0." in capsys.readouterr().err


def test_a_hub_repo_given_to_weights_replaces_the_folder_of_the_environment(image_dir, cli_env, tmp_path, capsys,
                                                                           monkeypatch):
    """With GANORIGIN_WEIGHTS_DIR set, --weights org/name is that repo, not the folder: offline and not cached,
    it is missing (the folder's files would give an answer from another model)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    face = sorted((image_dir / "real").iterdir())[0]
    assert main(["predict", str(face), "--weights", "someorg/somerepo@v1", "--offline",
                 "--cache-dir", str(tmp_path / "empty-cache"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "someorg/somerepo" in err and "e4e_ffhq_encode.pt" in err


def test_predict_given_a_pipe_says_so_and_does_not_wait_on_it(cli_env, tmp_path):
    """A FIFO named like an image or a video is never opened (it would block until a writer came)."""
    for name in ("pipe.png", "pipe.mp4"):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        run = subprocess.run([sys.executable, "-m", "ganorigin", "predict", str(fifo), "--offline", "--no-progress"],
                             cwd=ROOT, env={**os.environ, **cli_env}, capture_output=True, text=True, timeout=120)
        assert run.returncode == 1, run.stderr
        assert f"'{name}' is not a regular file (a folder, pipe or device)" in json.loads(run.stdout)["error"]


def test_version_is_printed(capsys):
    from ganorigin import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"ganorigin {__version__}"


def test_extract_settings_that_cannot_work_are_refused_by_flag_before_the_weights_load(image_dir, tmp_path, capsys):
    for flag, value, least in (("--limit", "0", 1), ("--limit", "-3", 1), ("--augment", "-1", 0),
                               ("--batch-size", "0", 1), ("--shard-size", "0", 1)):
        assert main(["extract", str(image_dir), "--out", str(tmp_path / "latents"), flag, value,
                     "--weights", str(tmp_path / "no-weights-here-either"), "--no-progress"]) == 2, flag
        err = capsys.readouterr().err
        assert f"{flag} must be at least {least}; got {value}." in err, err
    assert not (tmp_path / "latents").exists()


def test_a_named_folder_with_nothing_to_analyse_is_said(image_dir, cli_env, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "inner").mkdir(parents=True)
    (empty / "notes.txt").write_text("no pictures here")
    face = sorted((image_dir / "real").iterdir())[0]
    for command, what in (("provenance", "images"), ("predict", "images or videos")):
        assert main([command, str(empty), str(face), "--no-progress"]) == 0, command
        captured = capsys.readouterr()
        assert f"ganorigin {command}: warning: no {what} in {empty}." in captured.err
        assert json.loads(captured.out)["path"] == str(face)
    assert main(["provenance", str(image_dir / "real"), str(face), "--no-progress"]) == 0
    assert "warning: no images" not in capsys.readouterr().err, "a folder that has images is not warned of"


def test_an_out_of_the_wrong_kind_is_refused_before_any_work(image_dir, tmp_path, capsys):
    a_file, a_folder = tmp_path / "rows.csv", tmp_path / "folder"
    a_file.write_text("")
    a_folder.mkdir()
    face = str(sorted((image_dir / "real").iterdir())[0])
    for argv, message in (
            (["extract", str(image_dir), "--out", str(a_file)], f"--out {a_file} is a file; extract writes a folder"),
            (["train", str(tmp_path), "--out", str(a_file)], f"--out {a_file} is a file; train writes a folder"),
            (["provenance", face, "--out", str(a_folder)], f"--out {a_folder} is a folder; provenance writes its rows")):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert a_file.read_text() == "" and list(a_folder.iterdir()) == []


def test_predict_csv_from_a_text_list(image_dir, weights_dir, cli_env, model, capsys, tmp_path):
    good = sorted((image_dir / "real").iterdir())[:2]
    listing = tmp_path / "list.txt"
    again = f"{good[1].parent}/./{good[1].name}"  # the second image under another name: analysed once
    listing.write_text("\n".join([str(p) for p in good] + [str(image_dir / "bad" / "empty.png"), again]) + "\n")
    assert main(["predict", str(listing), str(good[0]), "--format", "csv", "--weights", str(weights_dir), "--offline",
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
        assert float(row["commfor_probability"]) == expected.commfor_probability
        assert (row["verdict"], row["verdict_text"]) == (expected.verdict, expected.verdict_text)
        assert row["unsure_reasons"] == "; ".join(expected.unsure_reasons)


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
    assert "Traceback" not in run.stderr and "1 of 2 files could not be analysed" in run.stderr

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
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    assert main(["explain", str(notes), "--weights", str(weights_dir), "--offline", "--out", str(out)]) == 2
    assert f"ganorigin explain: error: {notes}: This file is not an image" in capsys.readouterr().err


def test_commands_name_what_they_were_given_instead(tmp_path, capsys):
    """A folder, a file or a video where another was wanted is named as such, before any weights load."""
    from video_files import grey_seconds, write_clip

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(write_clip(grey_seconds(1), size=(32, 32)))
    cases = [(["explain", str(tmp_path)], f"{tmp_path} is a folder; explain takes one image file."),
             (["explain", str(clip)], f"{clip}: This file is a video, not an image: explain takes images"),
             (["demo-weights", str(clip)], f"{clip} is a file; demo-weights writes into a new or empty folder."),
             (["robustness", str(tmp_path / "nowhere")], f"{tmp_path / 'nowhere'} does not exist."),
             (["robustness", str(clip)], f"{clip} is a file; robustness takes a folder of images.")]
    for argv, message in cases:
        assert main([*argv, "--offline"] if argv[0] != "demo-weights" else argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    named_png = tmp_path / "clip.png"
    named_png.write_bytes(clip.read_bytes())
    assert main(["provenance", str(clip), str(named_png), "--no-progress", "--format", "jsonl"]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["error"] for row in rows] == [f"{path}: This file is a video, not an image: provenance is read from "
                                              "images (ganorigin predict analyses videos)." for path in (clip, named_png)]


@pytest.mark.parametrize("command", ["predict", "extract"])
def test_commands_warn_on_stderr_that_test_weights_give_meaningless_answers(command, image_dir, weights_dir, cli_env,
                                                                            capsys, tmp_path):
    from ganorigin.cli import TEST_WEIGHTS_WARNING

    image = sorted((image_dir / "real").iterdir())[0]
    data = tmp_path / "data"
    (data / "stylegan2").mkdir(parents=True)
    shutil.copy(image, data / "stylegan2" / image.name)
    unmarked = shutil.copytree(weights_dir, tmp_path / "weights", ignore=shutil.ignore_patterns(TEST_WEIGHTS_MARKER))
    for folder, marked in ((weights_dir, True), (unmarked, False)):
        given = [str(image)] if command == "predict" else [str(data), "--out", str(tmp_path / f"latents-{marked}")]
        assert main([command, *given, "--weights", str(folder), "--offline", "--no-progress"]) == 0
        captured = capsys.readouterr()
        if command == "predict":
            assert json.loads(captured.out)["error"] is None
        else:
            assert captured.out.startswith("1 encoded")
        assert (TEST_WEIGHTS_WARNING in captured.err) == marked, captured.err


def test_extract_and_evaluate_name_each_unreadable_image_once_and_exit_1(image_dir, dev_images, cli_env, capsys,
                                                                        tmp_path):
    """As predict does: the work is done and written, each bad file is named once on stderr, the status is 1."""
    data = tmp_path / "data"
    for cls in ("real", "stylegan2"):
        (data / cls).mkdir(parents=True)
        shutil.copy(dev_images[cls][0], data / cls / dev_images[cls][0].name)
    shutil.copy(image_dir / "bad" / "truncated.png", data / "stylegan2" / "truncated.png")

    assert main(["evaluate", str(data), "--out", str(tmp_path / "eval"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("truncated.png") == 1 and "could not read" in captured.err
    assert "Images: 3 (1 could not be read); analysed per class: real 1, stylegan2 1" in captured.out
    assert (f"Wrote report.json, predictions.csv, attribution_confusion.png and roc.png to {tmp_path / 'eval'}."
            in captured.out)
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["failed"][0]["path"].endswith("truncated.png")

    shutil.rmtree(data / "real")
    assert main(["extract", str(data), "--out", str(tmp_path / "latents"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("truncated.png") == 1 and "could not read" in captured.err
    assert captured.out.startswith("1 encoded, 0 already done, 1 could not be read (1 file), 2 in all (complete).")


def test_extract_refuses_a_folder_without_class_folders_before_loading_weights(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "flat" / "face.png")  # an image, but in no class folder
    missing = tmp_path / "no-weights"
    missing.mkdir()
    assert main(["extract", str(tmp_path / "flat"), "--out", str(tmp_path / "l"), "--weights", str(missing),
                 "--offline"]) == 2
    err = capsys.readouterr().err
    assert "No images in class folders under" in err and "weight" not in err.lower()


def test_extract_stopped_at_limit_exits_0_and_says_how_to_go_on(dev_images, cli_env, tmp_path, capsys):
    data = tmp_path / "data" / "stylegan2"
    data.mkdir(parents=True)
    for path in dev_images["stylegan2"][:2]:
        shutil.copy(path, data / path.name)
    args = ["extract", str(tmp_path / "data"), "--out", str(tmp_path / "latents"), "--batch-size", "1", "--no-progress"]
    assert main([*args, "--limit", "1"]) == 0  # what was asked for: not a failure
    assert "1 encoded, 0 already done, 0 could not be read, 2 in all (stopped early; run the same command again to " \
           "resume)." in capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("1 encoded, 1 already done, 0 could not be read, 2 in all (complete).")


def test_images_outside_every_class_folder_are_named_as_left_out(dev_images, cli_env, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "stylegan2").mkdir(parents=True)
    shutil.copy(dev_images["stylegan2"][0], data / "stylegan2" / "a.png")
    shutil.copy(dev_images["stylegan2"][1], data / "stray.png")
    for command in (["extract", str(data), "--out", str(tmp_path / "latents")],
                    ["evaluate", str(data), "--out", str(tmp_path / "eval")]):
        assert main([*command, "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert err.count(f"warning: 1 image(s) directly in {data}, such as stray.png, are in no class folder and "
                         "are left out.") == 1, err


def test_extract_says_what_became_of_latents_whose_images_changed_or_went(dev_images, cli_env, capsys, tmp_path):
    data = tmp_path / "data" / "stylegan2"
    data.mkdir(parents=True)
    first, second = dev_images["stylegan2"][:2]
    shutil.copy(first, data / "a.png")
    shutil.copy(second, data / "b.png")
    args = ["extract", str(tmp_path / "data"), "--out", str(tmp_path / "latents"), "--no-progress"]
    assert main(args) == 0
    shutil.copy(second, data / "a.png")
    (data / "b.png").unlink()
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert ("Dropped 1 latent row (augmented copies included) whose image changed since it was encoded (encoded "
            "again where readable).") in captured.out
    assert (f"warning: {tmp_path / 'latents'} holds latents of images no longer in {tmp_path / 'data'} (1); train "
            "uses them too. Run again with --prune to remove them." in captured.err)
    assert main([*args, "--prune"]) == 0
    assert f"Removed 1 latent row (augmented copies included) of images no longer in {tmp_path / 'data'}." in (
        capsys.readouterr().out)


def test_an_interrupted_evaluate_says_its_output_is_incomplete_not_saved(dev_images, cli_env, tmp_path):
    """A real Ctrl-C (SIGINT) once the progress bar shows: status 130 and one line, no traceback. The
    folder holds minutes of work, so the signal always comes while images are being analysed."""
    data = tmp_path / "data" / "stylegan2"
    data.mkdir(parents=True)
    first = shutil.copyfile(dev_images["stylegan2"][0], data / f"0000{dev_images['stylegan2'][0].suffix}")
    for i in range(1, 1000):
        os.link(first, data / f"{i:04d}{first.suffix}")
    command = [sys.executable, "-m", "ganorigin", "evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
               "--batch-size", "1"]
    # As at a terminal: Ctrl-C's signal is not ignored (a shell's background job, as CI may be, inherits it ignored)
    job = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = b""
    while b"predict:" not in seen:  # tqdm's bar: the images are being analysed
        chunk = os.read(job.stderr.fileno(), 4096)
        assert chunk, seen.decode()
        seen += chunk
    job.send_signal(signal.SIGINT)
    seen += job.stderr.read()
    assert job.wait(timeout=60) == 130
    err = seen.decode()
    assert "ganorigin evaluate: interrupted; its output is missing or incomplete." in err
    assert "saved" not in err and "Traceback" not in err and not (tmp_path / "out" / "report.json").exists()


@pytest.mark.parametrize("precision, message", [("foo", "must be one of auto, fp32, bf16, int8, fp16"),
                                                ("fp16", "needs a CUDA or mps device")])
def test_an_unusable_precision_setting_is_a_clear_error_not_a_traceback(image_dir, weights_dir, cli_env, capsys,
                                                                         monkeypatch, precision, message):
    monkeypatch.setenv("GANORIGIN_PRECISION", precision)
    image = str(sorted((image_dir / "real").iterdir())[0])
    assert main(["predict", image, "--weights", str(weights_dir), "--offline", "--no-progress",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize("listing", ["empty_folder", "folder_without_images", "empty_list"])
def test_predict_without_images_says_so_and_exits_2(listing, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    if listing == "folder_without_images":
        (folder / "notes.txt").write_text("not an image")
        (folder / "sub").mkdir()
    target = folder
    if listing == "empty_list":
        target = tmp_path / "list.txt"
        target.write_text("# nothing yet\n")
    assert main(["predict", str(target), "--weights", "not-loaded/because-no-images"]) == 2
    err = capsys.readouterr().err
    assert f"no images or videos found in {target}" in err and ".png" in err and ".mp4" in err
    assert "Traceback" not in err


def test_a_weights_folder_that_does_not_exist_is_named(dev_images, tmp_path, capsys):
    image = str(dev_images["real"][0])
    for missing in (tmp_path / "weights", "./no-such-weights", "my/weights/v2"):
        assert main(["predict", image, "--weights", str(missing), "--offline"]) == 2
        assert f"--weights {missing}: no such folder" in capsys.readouterr().err
    a_file = tmp_path / "fc_weights.pth"
    a_file.write_bytes(b"x")
    assert main(["explain", image, "--weights", str(a_file)]) == 2
    assert "is a file; pass the folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def installed_cli(tmp_path_factory) -> dict:
    """This tree installed by pip into a private folder (nothing added to the test environment).

    Returns the environment that puts its ``ganorigin`` script first on PATH.
    """
    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("installed")
    for name in ("pyproject.toml", "README.md", "LICENSE", "requirements.txt"):
        shutil.copyfile(ROOT / name, source / name)
    shutil.copytree(ROOT / "ganorigin", source / "ganorigin", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)
    env = {name: value for name, value in os.environ.items() if not name.startswith("GANORIGIN_")}
    return {**env, "PATH": f"{target / 'bin'}{os.pathsep}{env['PATH']}", "PYTHONPATH": str(target)}


def test_installed_cli_runs_from_any_directory(installed_cli, tmp_path):
    run = subprocess.run(["ganorigin", "--help"], cwd=tmp_path, env=installed_cli, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    for command in ("predict", "extract", "train", "evaluate", "explain", "demo-weights"):
        assert command in run.stdout
    find = "import importlib.util; print(importlib.util.find_spec('ganorigin').origin)"
    where = subprocess.run([sys.executable, "-c", find], cwd=tmp_path, env=installed_cli, capture_output=True,
                           text=True, timeout=300)
    assert where.stdout.startswith(installed_cli["PYTHONPATH"])  # the installed copy, not this checkout


def test_demo_weights_prints_commands_that_run_the_cli_and_the_app(installed_cli, tmp_path, capsys):
    from PIL import Image

    from app_server import AppServer

    folder = tmp_path / "demo weights"  # a space: the printed command must quote it
    assert main(["demo-weights", str(folder)]) == 0
    printed = capsys.readouterr().out
    marker = json.loads((folder / TEST_WEIGHTS_MARKER).read_text())
    assert marker["test_weights"] is True and "meaningless" in marker["note"]
    assert marker["ufd_head_sha256"] in printed and "meaningless" in printed
    app_line = next(line.strip() for line in printed.splitlines() if line.strip().endswith("python app.py"))
    cli_line = next(line.strip() for line in printed.splitlines() if "ganorigin predict face.png" in line)

    # The CLI line, verbatim but for the image, from another directory with the installed script.
    face = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(face)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(["bash", "-c", cli_line.replace("face.png", shlex.quote(str(face)))], cwd=elsewhere,
                         env=installed_cli, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("every answer is meaningless") == 1, run.stderr  # the command's, not the library's too
    row = json.loads(run.stdout)
    assert row["path"] == str(face) and 0.0 <= row["fake_probability"] <= 1.0 and row["error"] is None

    # The Python line loads them too, and the library says what they are.
    python_line = next(line.strip() for line in printed.splitlines() if line.strip().startswith("GANOrigin."))
    script = f"from ganorigin import GANOrigin, WeightSources\nprint({python_line}.predict({str(face)!r}).verdict)"
    run = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=installed_cli, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() in ("AI-generated", "real", "unsure") and "are random test weights" in run.stderr

    # The app line's environment starts the app on these weights (offline, so no example downloads).
    words = shlex.split(app_line)
    env = dict(word.split("=", 1) for word in words[: words.index("python")])
    server = AppServer({**env, "HF_HUB_OFFLINE": "1", "GANORIGIN_CACHE_DIR": str(tmp_path / "cache")},
                       name="demo-weights").start()
    try:
        health = server.wait_until_loaded()
        assert health["status"] == "ready", server.logs()[-3000:]
        assert "are random test weights" in server.logs(), "the server's log says so too"
    finally:
        server.stop()


def test_demo_weights_are_readable_as_the_umask_allows(tmp_path):
    """safetensors writes owner-only files; the demo weights get a file's usual permissions."""
    umask = os.umask(0o022)
    try:
        assert main(["demo-weights", str(tmp_path / "demo")]) == 0
    finally:
        os.umask(umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "demo").iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_demo_weights_never_overwrites_a_folder_it_did_not_write(tmp_path, capsys):
    real = tmp_path / "weights"
    real.mkdir()
    (real / "e4e_ffhq_encode.pt").write_bytes(b"the real checkpoint")
    assert main(["demo-weights", str(real)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (real / "e4e_ffhq_encode.pt").read_bytes() == b"the real checkpoint"
    demo = tmp_path / "demo"
    assert main(["demo-weights", str(demo)]) == 0 and main(["demo-weights", str(demo), "--seed", "1"]) == 0
    assert json.loads((demo / TEST_WEIGHTS_MARKER).read_text())["seed"] == 1


def test_an_output_that_cannot_be_written_is_one_line_and_status_2(dev_images, weights_dir, tmp_path, capsys):
    image = str(dev_images["real"][0])
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(image, one)
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    for argv in (["predict", image, "--out", str(a_file / "rows.csv"), "--format", "csv"],
                 ["robustness", str(one), "--out", str(a_file / "rb")],
                 ["explain", image, "--out", str(a_file / "why")]):
        assert main([*argv, "--weights", str(weights_dir), "--offline"]) == 2, argv
        err = capsys.readouterr().err
        assert f"error: {a_file}" in err and "Traceback" not in err, err


def test_engine_ray_without_ray_says_how_to_install_it(dev_images, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    assert main(["predict", str(dev_images["real"][0]), "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--engine ray needs Ray" in err and "pip install 'ganorigin[ray]'" in err and "Traceback" not in err


def test_train_with_fewer_than_two_folds_is_one_line_and_status_2(tmp_path, capsys):
    for folds in ("1", "0"):
        assert main(["train", str(tmp_path / "latents"), "--out", str(tmp_path / "m"), "--cv", folds]) == 2
        err = capsys.readouterr().err
        assert f"--cv needs at least 2 folds; got {folds}" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["predict", "explain", "extract"])
@pytest.mark.parametrize("device, message", [
    ("gpu", "device must be a torch device such as 'cpu', 'cuda' or 'cuda:1'; got 'gpu'."),
    pytest.param("cuda", "device 'cuda' needs an NVIDIA GPU, and PyTorch sees none on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")),
])
def test_a_device_this_machine_lacks_is_one_clear_line_before_any_weights_load(command, device, message, image_dir,
                                                                               tmp_path, capsys):
    missing = tmp_path / "no-weights"  # were they read first, the error would be about them
    missing.mkdir()
    target = str(image_dir) if command != "explain" else str(sorted((image_dir / "real").iterdir())[0])
    extra = ["--out", str(tmp_path / "out")] if command == "extract" else []
    assert main([command, target, *extra, "--weights", str(missing), "--offline", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ganorigin {command}: error: {message}") and err.count("\n") == 1, err
