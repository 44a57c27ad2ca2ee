"""The benchmark's smoke test and the fast path's precision switch.

Proves that ``python -m benchmarks.bench --quick --precisions auto,int8`` runs the baseline and
two of ours' paths end to end in subprocesses on tiny real-format weights and writes a JSON result
with every measurement per path, the precision each path ended with, the CPU it ran on, and the
agreement figures computed from real answers; that emulated runs are marked; that the default
paths follow the CPU class; that the agreement arithmetic is right; and that precision resolves
as documented (``fp32`` stays exact, ``GANORIGIN_PRECISION`` is read, bad values fail).
No timing is asserted: timings belong to the benchmark's output.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import bench
from ganorigin import accel

from cpu_kernels import BF16_RUNS, needs_bf16

ROOT = Path(__file__).resolve().parents[1]


QUICK_PRECISIONS = ("auto", "int8")  # two of ours' paths; int8 runs on any x86 CPU, as CI's is


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory, weights_dir) -> dict:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results.json"
    env = {**os.environ, "GANORIGIN_CACHE_DIR": str(tmp / "ganorigin-cache"), "PYTHONPATH": str(ROOT)}
    for name in bench.EMULATION_ENV:  # a native run
        env.pop(name, None)
    subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--quick", "--weights-dir", str(weights_dir),
         "--precisions", ",".join(QUICK_PRECISIONS),
         "--cache-dir", str(tmp), "--images-dir", str(tmp / "no-such-folder"), "--out", str(out)],
        check=True, cwd=ROOT, env=env, timeout=900,
    )
    return json.loads(out.read_text())


def _ours(result: dict) -> list:
    return [path for path in result["paths"] if path != bench.BASELINE]


def test_quick_bench_times_the_baseline_and_each_requested_path(quick_result):
    assert list(quick_result["paths"]) == [bench.BASELINE, *(f"ours-{p}" for p in QUICK_PRECISIONS)]
    assert quick_result["path_order"] == list(quick_result["paths"])


def test_quick_bench_writes_every_measurement(quick_result):
    for path, run in quick_result["paths"].items():
        assert run["cold_start_s"] > 0 and run["peak_rss_gb"] > 0 and run["throughput_images_per_s"] > 0
        assert run["first_start_s"] > 0 and run["first_start_peak_rss_gb"] > 0
        assert run["batch_seconds"] > 0 and run["threads"] >= 1
        for stage in bench.STAGES:
            assert 0 < run["latency"][stage]["p50_ms"] <= run["latency"][stage]["p95_ms"]
        assert len(run["answers"]) == len(quick_result["images"]) == 2
        assert [a["image"] for a in run["answers"]] == quick_result["images"]
        assert isinstance(run["probe_warnings"], list)
    assert quick_result["paths"]["baseline"]["precision"] == "fp32"
    assert quick_result["paths"]["baseline"]["commfor_precision"] is None  # the original had no second detector
    assert all(quick_result["paths"][path]["commfor_precision"] for path in _ours(quick_result))
    for path in _ours(quick_result):
        ratios = quick_result["ratios"][path]
        assert set(ratios) >= {"end_to_end_p50", "end_to_end_p95", "detect_p50", "encode_p50", "cold_start_s",
                               "peak_rss_gb", "throughput_images_per_s", "first_start_s"}
        run, base = quick_result["paths"][path], quick_result["paths"]["baseline"]
        assert ratios["end_to_end_p50"] == pytest.approx(
            run["latency"]["end_to_end"]["p50_ms"] / base["latency"]["end_to_end"]["p50_ms"])
        assert ratios["peak_rss_gb"] == pytest.approx(run["peak_rss_gb"] / base["peak_rss_gb"])
        assert set(quick_result["targets"][path]["met"]) == {*bench.TARGETS, "max_commfor_probability_delta",
                                                             "identical_answers"}
    assert set(quick_result["agreement"]) == set(quick_result["ratios"]) == set(_ours(quick_result))


def test_quick_bench_reports_the_precision_each_path_ended_with(quick_result):
    """What each path ran in, per model, as the timed process loaded it: the requested path, or
    exact fp32 for a model the probe refused, and then the probe's warning says so."""
    for path in _ours(quick_result):
        run = quick_result["paths"][path]
        assert run["requested"] == path.removeprefix("ours-")
        resolved = run["resolved"]
        assert resolved == accel.resolve_precision(run["requested"], torch.device("cpu"))
        models = ("detector", "encoder", "commfor") if run["commfor_precision"] is not None else ("detector", "encoder")
        for model in models:
            used = run[f"{model}_precision"]
            candidates = accel.candidate_precisions(run["requested"], torch.device("cpu"), model)
            assert used in {*candidates, "fp32"}
            if used not in candidates:
                assert any("disagrees with fp32" in warning for warning in run["probe_warnings"])
        d, e = run["detector_precision"], run["encoder_precision"]
        assert run["precision"] == (d if d == e else f"{e} (e4e only)" if d == "fp32" else f"{d} (CLIP only)")
        assert run["cold_start_precision"] == run["first_start_precision"] == run["precision"]
    assert quick_result["paths"]["ours-int8"]["encoder_precision"] == "int8"  # e4e has an int8 path too


def test_quick_bench_names_the_cpu(quick_result):
    from ganorigin.accel.precision import cpu_class, cpu_flags, cpu_model_name

    machine = quick_result["machine"]
    assert machine["cpu"] == cpu_model_name()
    assert machine["cpu_class"] == cpu_class()
    assert machine["cpu_flags"] == [flag for flag in bench.CPU_FLAGS if flag in cpu_flags()]
    assert machine["torch"] == torch.__version__ and machine["date"]
    assert machine["source"] is None or machine["source"] in bench.format_table(quick_result)
    assert machine["emulated"] is False and machine["emulation_note"] is None
    assert machine["emulation_env"]["ONEDNN_MAX_CPU_ISA"] is None
    assert machine["emulation_env"]["GANORIGIN_CPU_ISA"] is None
    table = bench.format_table(quick_result)
    assert machine["cpu"] in table and f"cpu_class {machine['cpu_class']}" in table and "native" in table
    for path in quick_result["paths"]:
        assert f"| {path}" in table
    assert "EMULATED" not in table and "(emulated)" not in table
    assert "Targets," not in table, "tiny weights are a smoke test: no targets judged"
    assert machine["device"] == "cpu" and machine["gpu"] is None and "every path on" not in table
    assert all(run["peak_gpu_memory_gb"] is None for run in quick_result["paths"].values())


def test_a_gpu_run_names_the_gpu_and_is_held_to_no_slower_than_the_baseline(quick_result):
    """What a ``--device cuda`` run reports (read off a CPU run with its device and memory set as a GPU run's)."""
    import copy

    result = copy.deepcopy(quick_result)
    result["machine"].update(device="cuda", gpu="NVIDIA Test GPU")
    result["quick"] = False  # a GPU run's weights are full-size: it is held to its targets
    for i, run in enumerate(result["paths"].values()):
        run["peak_gpu_memory_gb"] = 1.25 + i
    result["targets"] = {path: bench._targets(result, path) for path in result["ratios"]}
    table = bench.format_table(result)
    assert "every path on cuda, NVIDIA Test GPU" in table
    assert "Peak GPU memory" in table and "baseline 1.25 GB" in table
    for path, targets in result["targets"].items():
        assert targets["target"]["end_to_end_p50_ratio"] == bench.E2E_TARGET_BY_CLASS["none"]
        assert f"Targets, {path} (end to end ≤ 1.0x for NVIDIA Test GPU)" in table


def test_an_emulated_result_says_so_in_every_row(quick_result):
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2", "GANORIGIN_CPU_ISA": "avx2"}
    settings = bench.emulation_settings(env)
    assert settings["emulated"] and settings["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert settings["env"]["GANORIGIN_CPU_ISA"] == "avx2"
    assert "honours ONEDNN_MAX_CPU_ISA" in settings["note"] and "MKL_ENABLE_INSTRUCTIONS unset" in settings["note"]
    assert bench.emulation_settings({"GANORIGIN_CPU_ISA": "avx512_bf16"})["emulated"]
    assert not bench.emulation_settings({"MKL_ENABLE_INSTRUCTIONS": "AVX2"})["emulated"]
    machine = {**quick_result["machine"], "emulated": True, "emulation_env": settings["env"],
               "emulation_note": settings["note"]}
    table = bench.format_table({**quick_result, "machine": machine})
    assert "**EMULATED** (ONEDNN_MAX_CPU_ISA=AVX2, GANORIGIN_CPU_ISA=avx2)" in table
    rows = [line for line in table.splitlines() if line.startswith(("| baseline", "| ours-"))]
    assert len(rows) == len(quick_result["paths"]) and all("(emulated)" in row for row in rows)


@pytest.mark.parametrize("isa, machine, expected", [
    pytest.param("amx", "x86_64", ["auto", "bf16", "int8"], marks=needs_bf16),
    pytest.param("avx512_bf16", "x86_64", ["auto", "bf16", "int8"], marks=needs_bf16),
    pytest.param("avx512_bf16", "x86_64", ["auto", "int8"],  # a bf16 class named where oneDNN has no bf16
                 marks=pytest.mark.skipif(BF16_RUNS, reason="this CPU's oneDNN runs bf16")),
    ("avx512_vnni", "x86_64", ["auto", "int8"]), ("avx2", "x86_64", ["auto", "int8"]),
    ("none", "x86_64", ["auto", "int8"]), ("none", "aarch64", ["auto"]),
])
def test_default_precisions_are_the_paths_this_cpu_runs(isa, machine, expected, monkeypatch):
    monkeypatch.setenv("GANORIGIN_CPU_ISA", isa)
    monkeypatch.setattr(bench.platform, "machine", lambda: machine)
    assert bench.default_precisions() == expected
    assert bench.default_precisions("cuda") == ["auto", "fp16"]  # on a GPU, whatever the CPU


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and ru_maxrss's inheritance are Linux's")
def test_a_childs_peak_memory_is_its_own_not_its_parents():
    """A parent holding 400 MB starts a child that holds little: the child's peak must be small.
    (``ru_maxrss`` would report the parent's: Linux carries it across ``subprocess``'s fork and exec.)"""
    from benchmarks import peak_rss_bytes

    held = np.ones(400 * 2**20 // 8)  # 400 MB, touched
    child = subprocess.run([sys.executable, "-c", "import benchmarks; print(benchmarks.peak_rss_bytes())"],
                           capture_output=True, text=True, check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    own = int(child.stdout)
    assert peak_rss_bytes() >= held.nbytes
    assert 0 < own < 200 * 2**20, own


def test_precisions_option_is_checked():
    assert bench._precision_list("auto, INT8,auto") == ["auto", "int8"]
    assert bench._precision_list("auto,fp16") == ["auto", "fp16"]  # a GPU's; a CPU refuses it when it starts
    for wrong in ("fp8", "auto,int4", ""):
        with pytest.raises(Exception, match="comma list"):
            bench._precision_list(wrong)


def test_quick_bench_agreement_comes_from_each_paths_answers(quick_result):
    base = quick_result["paths"]["baseline"]["answers"]
    for path in _ours(quick_result):
        ours = quick_result["paths"][path]["answers"]
        assert [a["image"] for a in base] == [a["image"] for a in ours]
        expected = max(abs(a["fake_probability"] - b["fake_probability"]) for a, b in zip(base, ours))
        agreement = quick_result["agreement"][path]
        assert agreement["max_fake_probability_delta"] == pytest.approx(expected)
        same_verdict = np.mean([a["fake"] == b["fake"] for a, b in zip(base, ours)])
        same_attribution = np.mean([a["attribution"] == b["attribution"] for a, b in zip(base, ours)])
        assert agreement["identical_verdicts"] == pytest.approx(same_verdict)
        assert agreement["identical_attributions"] == pytest.approx(same_attribution)
        # Tiny random weights still give the same answers on every path, within the bar.
        assert agreement["max_fake_probability_delta"] <= 0.01
        # the second detector, against its own fp32 (computed in the timing process)
        reference = quick_result["commfor_reference"]
        assert len(reference) == len(ours) and all(0 <= p <= 1 for p in reference)
        assert agreement["max_commfor_probability_delta"] == pytest.approx(
            max(abs(want - b["commfor_probability"]) for want, b in zip(reference, ours)))
        assert agreement["max_commfor_probability_delta"] <= 0.01 and agreement["identical_commfor_verdicts"] == 1.0
        assert "max_commfor_probability_delta" in quick_result["targets"][path]["met"]


def test_agreement_counts_disagreements():
    base = [{"fake_probability": 0.2, "fake": False, "attribution": "progan"},
            {"fake_probability": 0.9, "fake": True, "attribution": "stylegan2"}]
    ours = [{"fake_probability": 0.25, "fake": False, "attribution": "stylegan3"},
            {"fake_probability": 0.88, "fake": False, "attribution": "stylegan2"}]
    result = bench.agreement(base, ours)
    assert result["max_fake_probability_delta"] == pytest.approx(0.05)
    assert result["identical_verdicts"] == 0.5 and result["identical_attributions"] == 0.5
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert result["max_fake_logit_delta"] == pytest.approx(max(logit(0.25) - logit(0.2), logit(0.9) - logit(0.88)))
    assert result["logit_images"] == 2
    saturated = bench.agreement([{**base[0], "fake_probability": 0.0}], [{**ours[0], "fake_probability": 1e-9}])
    assert saturated["max_fake_logit_delta"] is None and saturated["logit_images"] == 0
    assert "max_commfor_probability_delta" not in result  # no second detector, nothing said of it
    assert result["rescored_images"] == 0
    assert bench.agreement(base, [ours[0], {**ours[1], "rescored_exactly": True}])["rescored_images"] == 1
    assert result["commfor_rescored_images"] == 0
    counted = bench.agreement(base, [{**ours[0], "commfor_rescored_exactly": True}, ours[1]])
    assert counted["commfor_rescored_images"] == 1 and counted["rescored_images"] == 0


def test_agreement_compares_the_second_detector_with_its_fp32_verdicts():
    """Community Forensics' fp32 P(fake) 0.40 and 0.52 against ours' 0.41 and 0.49, threshold 0.5 and
    band 0.02: the first is "real" both times, the second "fake" in fp32 but "unsure" in ours."""
    base = [{"fake_probability": 0.2, "fake": False, "attribution": "progan"}] * 2
    ours = [{**base[0], "commfor_probability": p, "commfor_threshold": 0.5, "commfor_band": 0.02, "commfor_state": state}
            for p, state in ((0.41, "real"), (0.49, "unsure"))]
    result = bench.agreement(base, ours, [0.40, 0.52])
    assert result["max_commfor_probability_delta"] == pytest.approx(0.03)
    assert result["identical_commfor_verdicts"] == 0.5


def test_precision_resolution(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("GANORIGIN_PRECISION", raising=False)
    assert accel.resolve_precision("fp32", cpu) == "fp32"
    expected_auto = {"amx": "bf16", "avx512_bf16": "bf16", "avx512_vnni": "int8", "avx_vnni": "int8",
                     "avx2": "int8", "none": "fp32"}[accel.precision.cpu_class()]
    if expected_auto == "int8" and not torch.backends.mkldnn.is_available():
        expected_auto = "fp32"
    assert accel.resolve_precision(None, cpu) == expected_auto
    monkeypatch.setenv("GANORIGIN_PRECISION", "fp32")
    assert accel.resolve_precision(None, cpu) == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        accel.resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be one of"):
        accel.resolve_precision("int4", cpu)


def test_fp32_switch_is_exact_and_fast_path_agrees(sources, dev_sample, monkeypatch, tmp_path):
    from ganorigin import GANOrigin

    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    exact = GANOrigin.from_pretrained(sources, device="cpu", precision="fp32", align=False)
    default = GANOrigin.from_pretrained(sources, device="cpu", align=False)
    assert exact.precision == "fp32"
    images = dev_sample[:3]
    a, b = exact.predict_batch(images), default.predict_batch(images)
    # Each model either runs exact fp32 (then its numbers are identical) or passed the probe check
    # (then they agree within the bar).
    if accel.precision_of(default.detector) == "fp32":
        assert [p.fake_probability for p in a] == [p.fake_probability for p in b]
    else:
        assert np.max(np.abs([p.fake_probability - q.fake_probability for p, q in zip(a, b)])) <= 0.01
    if accel.precision_of(default.encoder) == "fp32":
        assert [p.probabilities for p in a] == [p.probabilities for p in b]
    else:
        assert [p.attribution for p in a] == [q.attribution for q in b]


def test_batchnorm_folding_keeps_the_encoder_output():
    from ganorigin.accel.convert import fold_encoder_batchnorms
    from ganorigin.models.encoder import E4EEncoder
    from ganorigin.testing import TINY_E4E

    torch.manual_seed(0)
    encoder = E4EEncoder(TINY_E4E)
    for module in encoder.modules():  # non-trivial statistics, so a wrong fold would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.2, 0.2)
    folded = accel.replace_modules(encoder, fold_encoder_batchnorms(encoder))
    remaining = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert remaining == len(folded.body)  # only the BN before each zero-padded conv stays
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), encoder(x), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not accel.candidate_precisions("auto", torch.device("cpu"), "encoder"),
                    reason="auto is exact fp32 on this CPU: nothing to fall back from")
@pytest.mark.parametrize(
    "failing, expected", [(("NOISE_MARGIN",), "{} (e4e only)"),
                          (("NOISE_MARGIN", "MAX_ATTRIBUTION_PROBABILITY_DELTA"), "fp32")]
)
def test_disagreeing_model_falls_back_to_exact_fp32(failing, expected, sources, dev_sample, monkeypatch, tmp_path,
                                                      caplog):
    """A model whose fast path disagrees with fp32 on the probe runs exact fp32; the other keeps
    its fast path (the first that ``auto`` tries on this CPU); the verdict is cached for the next start."""
    from ganorigin import GANOrigin

    expected = expected.format(accel.candidate_precisions("auto", torch.device("cpu"), "encoder")[0])
    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    for name in failing:
        monkeypatch.setattr(accel.probe, name, -1.0)  # nothing can agree this well
    with caplog.at_level(logging.WARNING, logger="ganorigin.accel.probe"):
        fallen_back = GANOrigin.from_pretrained(sources, device="cpu", align=False)
    assert fallen_back.precision == expected
    assert "disagrees with fp32" in caplog.text
    exact = GANOrigin.from_pretrained(sources, device="cpu", precision="fp32", align=False)
    a, b = exact.predict_batch(dev_sample[:2]), fallen_back.predict_batch(dev_sample[:2])
    assert [p.fake_probability for p in a] == [p.fake_probability for p in b]
    if expected == "fp32":
        assert [p.probabilities for p in a] == [p.probabilities for p in b]
    again = GANOrigin.from_pretrained(sources, device="cpu", align=False)
    assert again.precision == expected
