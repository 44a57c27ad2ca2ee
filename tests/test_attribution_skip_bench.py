"""The attribution-skip benchmark, as a smoke test on the tiny test weights (no timing is asserted).

Proves that ``python -m benchmarks.attribution_skip --quick`` runs the baseline and ours, each with and
without e4e, on real images, writes a JSON result naming the CPU with every p50 and its ratio to the
baseline, and that "without e4e" really leaves e4e out while keeping the detectors' answers.
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks import attribution_skip
from ganorigin.accel.precision import cpu_model_name


def test_quick_run_writes_every_measurement(weights_dir, two_dev_images, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert attribution_skip.main(["--quick", "--weights-dir", str(weights_dir), "--images-dir", str(two_dev_images),
                                  "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["cpu"] == cpu_model_name() and result["images"] == 2
    names = ["baseline", "baseline without e4e", "ours-auto", "ours-auto without e4e"]
    assert list(result["p50_ms"]) == names and result["ratio_p50"]["baseline"] == 1.0
    for name in names:
        assert result["p50_ms"][name] > 0
        assert result["ratio_p50"][name] == result["p50_ms"][name] / result["p50_ms"]["baseline"]
    assert "x baseline" in capsys.readouterr().out


def test_without_e4e_keeps_the_detectors_and_computes_no_codes(model, dev_sample):
    from ganorigin.images import load_image

    skipping = attribution_skip.without_e4e(model)
    assert skipping.detector is model.detector and skipping.commfor is model.commfor
    images = [load_image(path) for path in dev_sample[:2]]
    assert not skipping.encode(images).any()
    assert skipping.encode(images).shape == model.encode(images).shape
    ours, skipped = model.predict_batch(images, align=False), skipping.predict_batch(images, align=False)
    np.testing.assert_allclose([p.fake_probability for p in skipped], [p.fake_probability for p in ours], atol=0.01)
    np.testing.assert_allclose([p.commfor_probability for p in skipped], [p.commfor_probability for p in ours], atol=0.01)
