"""``ganorigin robustness DIR`` on real dev images with the tiny test weights (issue 17).

Proves: each image is re-scored under every degradation (clean first, then JPEG q90/75/60/40,
x0.75/x0.5, <= 768/512 px, the PNG round trip, web and hard), each as a real re-encoded file that
the degradation gate measures (the JPEG quality it reads is the one written; the sizes are the
resized ones); the scores are those of ``GANOrigin.predict`` on the same bytes; the hard protocol
is "unsure" for its recompression; a bad file costs only its own row; the summary and the plot
are written. The numbers themselves mean nothing on random weights.
"""

from __future__ import annotations

import csv
import io
import shutil
from contextlib import redirect_stderr

import pytest
from PIL import Image

from ganorigin.cli import main
from ganorigin.robustness import CLEAN, DISTORTIONS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(dev_sample, weights_dir, weights_env, tmp_path_factory):
    """The command run once on a JPEG, a PNG and a broken file."""
    folder = tmp_path_factory.mktemp("robustness-images")
    jpeg = next(p for p in dev_sample if p.suffix.lower() == ".jpg" and max(Image.open(p).size) == 1024)
    png = next(p for p in dev_sample if p.suffix.lower() == ".png" and max(Image.open(p).size) == 1024)
    for path in (jpeg, png):
        shutil.copyfile(path, folder / path.name)
    (folder / "broken.png").write_bytes(png.read_bytes()[:500])
    out = tmp_path_factory.mktemp("robustness-out")
    with pytest.MonkeyPatch.context() as patch, redirect_stderr(io.StringIO()) as err:
        for name, value in weights_env.items():
            patch.setenv(name, value)
        status = main(["robustness", str(folder), "--out", str(out), "--weights", str(weights_dir), "--offline",
                       "--no-progress", "--no-align"])
    with open(out / "robustness.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out / "robustness_summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    return {"status": status, "rows": rows, "summary": summary, "out": out, "jpeg": jpeg, "png": png,
            "stderr": err.getvalue(), "broken": folder / "broken.png"}


def test_every_image_is_scored_under_every_degradation(report):
    names = [CLEAN, *DISTORTIONS]
    assert names == [CLEAN, "jpeg90", "jpeg75", "jpeg60", "jpeg40", "scale0.75", "scale0.5", "max768", "max512",
                     "png", "web", "hard"]
    for source in (report["jpeg"], report["png"]):
        rows = [r for r in report["rows"] if r["path"].endswith(source.name)]
        assert [r["degradation"] for r in rows] == names and not any(r["error"] for r in rows)
        assert all(0 < float(r["ufd_probability"]) < 1 and 0 < float(r["commfor_probability"]) < 1 for r in rows)
        assert {r["verdict"] for r in rows} <= {"AI-generated", "unsure", "real"}


def test_the_gate_measures_each_re_encoded_file(report, dev_manifest):
    rows = {r["degradation"]: r for r in report["rows"] if r["path"].endswith(report["jpeg"].name)}
    recorded = next(int(m["jpeg_quality_est"]) for m in dev_manifest if m["path"].endswith(report["jpeg"].name))
    assert abs(int(rows[CLEAN]["jpeg_quality"]) - recorded) <= 5
    for quality in (90, 75, 60, 40):
        assert int(rows[f"jpeg{quality}"]["jpeg_quality"]) == quality
    assert rows["web"]["jpeg_quality"] == "60" and rows["hard"]["jpeg_quality"] == "40"
    assert rows["png"]["jpeg_quality"] == "" and rows["scale0.5"]["jpeg_quality"] == ""
    assert int(rows["scale0.5"]["short_side"]) == 512 and int(rows["scale0.75"]["short_side"]) == 768
    assert int(rows["max768"]["short_side"]) == 768 and int(rows["max512"]["short_side"]) == 512
    assert rows["hard"]["verdict"] == "unsure" and "heavily recompressed (quality ≈ 40)" in rows["hard"]["unsure_reasons"]


def test_scores_are_the_pipelines_on_the_same_bytes(report, model):
    rows = {r["degradation"]: r for r in report["rows"] if r["path"].endswith(report["png"].name)}
    image = Image.open(report["png"]).convert("RGB")
    for name in ("jpeg60", "scale0.5", "hard"):
        expected = model.predict(DISTORTIONS[name].apply(image), align=False)
        assert float(rows[name]["ufd_probability"]) == pytest.approx(expected.fake_probability, abs=1e-6)
        assert float(rows[name]["commfor_probability"]) == pytest.approx(expected.commfor_probability, abs=1e-6)
        assert rows[name]["verdict"] == expected.verdict


def test_a_bad_file_costs_only_its_row_and_the_summary_and_plot_are_written(report):
    broken = [r for r in report["rows"] if r["path"].endswith("broken.png")]
    assert len(broken) == 1 and broken[0]["error"] and broken[0]["ufd_probability"] == ""
    assert broken[0]["error"].startswith(f"{report['broken']}: "), "as predict's rows, the error starts with the path"
    assert report["status"] == 1, "as predict, extract and evaluate: a file that could not be read is status 1"
    assert f"ganorigin robustness: could not read {broken[0]['error']}" in report["stderr"]
    summary = {s["degradation"]: s for s in report["summary"]}
    assert list(summary) == [CLEAN, *DISTORTIONS]
    for entry in summary.values():
        assert int(entry["images"]) == 2
        shares = sum(float(entry[k]) for k in ("share_ai_generated", "share_unsure", "share_real"))
        assert shares == pytest.approx(1.0)
    assert float(summary[CLEAN]["share_verdict_changed"]) == 0.0
    plot = report["out"] / "robustness.png"
    assert plot.read_bytes()[:8] == PNG_MAGIC and Image.open(plot).size[0] >= 700
