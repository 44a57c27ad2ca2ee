"""The second detector's benchmark, as a smoke test on the tiny test weights (no timing is asserted).

Proves that ``python -m benchmarks.second_detector --quick`` loads the current pipeline and the three
lane variants with Community Forensics from one set of models, runs them on real images, and writes
a JSON result naming the CPU, the precision of each model, every pipeline's latency and ratio to the
current one, the parts' times and the memory figures.
"""

from __future__ import annotations

import json

from benchmarks import second_detector
from ganorigin.accel.precision import cpu_model_name


def test_quick_run_writes_every_measurement(weights_dir, two_dev_images, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert second_detector.main(["--quick", "--weights-dir", str(weights_dir), "--images-dir", str(two_dev_images),
                                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["cpu"] == cpu_model_name() and result["machine"]["threads"] >= 1
    assert result["images"] == 2 and set(result["precision"]) == {"CLIP", "e4e", "CommFor"}
    names = ["current", "with-commfor-either", "with-commfor-encoder", "with-commfor-detector", "with-commfor-own"]
    assert list(result["end_to_end"]) == names and result["ratio_p50"]["current"] == 1.0
    for name in names:
        entry = result["end_to_end"][name]
        assert 0 < entry["p50_ms"] <= entry["p95_ms"]
        assert result["ratio_p50"][name] == entry["p50_ms"] / result["end_to_end"]["current"]["p50_ms"]
    assert set(result["parts"]) == {"commfor_forward", "degradation_gate"}
    assert all(value > 0 for value in result["memory"].values())
    assert "x current" in capsys.readouterr().out
