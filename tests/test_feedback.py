"""Feedback ("this verdict is wrong"): stored, exported and evaluated, end to end.

Proves that a report is one JSON line with the image's sha256, the label, the note, the verdict, both
detectors, the threshold and the model's versions; that the image is kept only with consent; that a
label outside real / the model's GANs / another generator / don't know is refused; that ``ganorigin
feedback export`` writes the kept images into the class folders ``ganorigin evaluate`` reads (latest
label per image, "don't know" and image-less reports left out, names from a tampered file cannot
escape the output folder), and that ``evaluate`` then runs on that folder and counts every exported
image in its class; and that a configured dataset repo that cannot be used (the local Hub takes no
uploads) leaves the reports in the local folder with one logged line. (The form on the page is driven in a
real browser in ``tests/test_browser.py``.)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ganorigin.feedback import (DONT_KNOW, FEEDBACK_FILE, OTHER_GENERATOR, REAL, FeedbackStore, export_feedback,
                                read_feedback)

from app_server import ROOT

MODEL_INFO = {"weights": {"e4e_ffhq_encode.pt": "local folder (GANORIGIN_WEIGHTS_DIR)"},
              "versions": {"ganorigin": "test"}, "device": "cpu"}


@pytest.fixture(scope="module")
def faces(dev_images) -> dict:
    return {"real": sorted(dev_images["real"])[:2], "stylegan2": sorted(dev_images["stylegan2"])[:2]}


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ganorigin", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


def test_a_report_holds_the_sha256_verdict_detectors_threshold_and_versions(model, faces, tmp_path):
    data = faces["stylegan2"][0].read_bytes()
    prediction = model.predict(data, threshold=0.3)
    record = FeedbackStore(tmp_path).add(data, prediction, REAL, note="  my own photo  ", model=MODEL_INFO)
    lines = (tmp_path / FEEDBACK_FILE).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == record
    assert record["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert record["label"] == REAL and record["note"] == "my own photo"
    assert record["verdict"]["text"] == prediction.verdict_text and record["verdict"]["label"] == prediction.verdict
    assert record["detectors"]["ufd"]["probability"] == pytest.approx(prediction.fake_probability)
    assert record["threshold"] == 0.3 and record["model"] == MODEL_INFO
    assert record["image"] is None and not (tmp_path / "images").exists(), "the image was kept without consent"


def test_the_image_is_kept_only_with_consent(model, faces, tmp_path):
    store = FeedbackStore(tmp_path)
    kept_bytes, other_bytes = faces["real"][0].read_bytes(), faces["real"][1].read_bytes()
    kept = store.add(kept_bytes, model.predict(kept_bytes), "stylegan2", keep_image=True)
    store.add(other_bytes, model.predict(other_bytes), "stylegan2", keep_image=False)
    assert [p.name for p in (tmp_path / "images").iterdir()] == [Path(kept["image"]).name]
    assert (tmp_path / kept["image"]).read_bytes() == kept_bytes
    assert [r["image_sha256"] for r in read_feedback(tmp_path)] == [hashlib.sha256(b).hexdigest()
                                                                    for b in (kept_bytes, other_bytes)]


def test_a_label_outside_the_choices_is_refused(model, faces, tmp_path):
    data = faces["real"][0].read_bytes()
    with pytest.raises(ValueError, match="must be one of real, progan, stylegan2, stylegan3, other generator"):
        FeedbackStore(tmp_path).add(data, model.predict(data), "../../etc")
    assert not (tmp_path / FEEDBACK_FILE).exists()


def test_export_keeps_the_latest_label_and_leaves_out_what_cannot_be_labelled(model, faces, tmp_path):
    store, out = FeedbackStore(tmp_path / "fb"), tmp_path / "out"
    a, b, c = (p.read_bytes() for p in (faces["real"][0], faces["stylegan2"][0], faces["stylegan2"][1]))
    store.add(a, model.predict(a), "stylegan2", keep_image=True)
    store.add(a, model.predict(a), REAL, keep_image=True)  # the same image again: the latest label counts
    store.add(b, model.predict(b), OTHER_GENERATOR, keep_image=True)
    store.add(c, model.predict(c), DONT_KNOW, keep_image=True)
    store.add(faces["real"][1].read_bytes(), model.predict(faces["real"][1]), REAL)  # no image kept
    with open(store.folder / FEEDBACK_FILE, "a") as f:  # a tampered line: paths must not escape
        f.write(json.dumps({"image_sha256": "0" * 64, "image": "../../../etc/passwd", "label": "../../x"}) + "\n")
    summary = export_feedback(store.folder, out)
    assert summary == {"exported": {"real": 1, "other-generator": 1}, "without_image": 2, "dont_know": 1}
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(
        [f"real/{hashlib.sha256(a).hexdigest()}.{Path(faces['real'][0]).suffix[1:].replace('jpeg', 'jpg')}",
         f"other-generator/{hashlib.sha256(b).hexdigest()}.{Path(faces['stylegan2'][0]).suffix[1:].replace('jpeg', 'jpg')}"])
    assert not (tmp_path / "x").exists()
    exported = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    with open(store.folder / FEEDBACK_FILE, "a") as f:  # JSON that is no report: skipped, as a damaged line
        f.write("[1, 2]\n" + json.dumps({"label": "real"}) + "\n")
    store.add(a, model.predict(a), "stylegan3", keep_image=True)  # corrected after the first export
    assert export_feedback(store.folder, out)["exported"] == {"stylegan3": 1, "other-generator": 1}
    name = exported[1].name if exported[1].parts[0] == "real" else exported[0].name
    assert sorted(p.relative_to(out).parts[0] for p in out.rglob(name)) == ["stylegan3"], "one image, one class"


def test_reports_are_exported_and_evaluated_end_to_end(model, faces, weights_dir, weights_env, tmp_path):
    store = FeedbackStore(tmp_path / "feedback")
    labelled = [(faces["real"][0], REAL), (faces["real"][1], REAL), (faces["stylegan2"][0], "stylegan2"),
                (faces["stylegan2"][1], OTHER_GENERATOR)]
    for path, label in labelled:
        store.add(path.read_bytes(), model.predict(path), label, keep_image=True, model=MODEL_INFO)

    export = _cli("feedback", "export", str(tmp_path / "regression"), env={"GANORIGIN_FEEDBACK_DIR": str(store.folder)})
    assert export.returncode == 0, export.stderr
    assert "Exported 4 reported images" in export.stdout and "other-generator 1, real 2, stylegan2 1" in export.stdout

    evaluate = _cli("evaluate", str(tmp_path / "regression"), "--weights", str(weights_dir), "--offline",
                    "--out", str(tmp_path / "evaluation"), "--no-progress", env=weights_env)
    assert evaluate.returncode == 0, evaluate.stderr
    report = json.loads((tmp_path / "evaluation" / "report.json").read_text())
    assert report["images"] == 4 and report["failed"] == []
    assert report["per_class"] == {"other-generator": 1, "real": 2, "stylegan2": 1}
    assert report["detection"]["n_real"] == 2 and report["detection"]["n_fake"] == 2


def test_export_without_feedback_says_where_it_looked(tmp_path):
    result = _cli("feedback", "export", str(tmp_path / "out"), "--from", str(tmp_path / "none"), env={})
    assert result.returncode == 2
    assert "No feedback.jsonl in" in result.stderr and "Traceback" not in result.stderr


def test_a_dataset_repo_that_cannot_be_used_leaves_feedback_local(hub, monkeypatch, tmp_path, caplog):
    """The local Hub takes no uploads: the push cannot be set up, the app keeps the reports in its folder."""
    monkeypatch.setenv("GANORIGIN_FEEDBACK_DIR", str(tmp_path))
    monkeypatch.setenv("GANORIGIN_FEEDBACK_REPO", "ganorigin-tests/feedback")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with caplog.at_level("ERROR", logger="ganorigin.feedback"):
        store = FeedbackStore.from_env()
    assert store.scheduler is None and store.folder == tmp_path
    assert "Feedback stays in the local folder: the dataset repo ganorigin-tests/feedback cannot be used" in caplog.text
    assert "hf_not_a_real_token" not in caplog.text
