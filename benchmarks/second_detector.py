"""Benchmark: what the second detector (Community Forensics) adds to an analysis, on this CPU.

    python -m benchmarks.second_detector [--images-dir DIR] [--images 20] [--passes 3] [--precision auto]
                                         [--weights-dir DIR] [--cache-dir DIR] [--out FILE] [--quick]

One process holds the current pipeline (UFD + e4e + SVM, as before issue 17) and the same models
with Community Forensics added, once per lane it can run on: on whichever worker is free first
(``either``, the default), after e4e on e4e's worker (``encoder``), after CLIP on CLIP's worker
(``detector``), or on a third worker of its own (``own``).
They take turns in whole passes over the same images, the order reversed each pass, so a shared
machine's drift touches all alike; an image's time is its median over the passes. End to end is one
``predict(path)`` call. Memory: the process's resident set before and after the second detector is
loaded, and after its first analysis.

Without ``--weights-dir`` it writes full-size random weights in the real formats once into
``--cache-dir`` (``--quick``: tiny ones and two images, a smoke test, not a measurement). The result
(JSON, ``--out``) names the CPU and the thread count.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganorigin-bench"
# variant -> lane of Community Forensics
LANES = {"either": "either", "encoder": "encoder", "detector": "detector", "own": "commfor"}
CURRENT = "current"


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images-dir", type=Path, default=os.environ.get("GANORIGIN_DEV_DATA"),
                        help="real images (default: GANORIGIN_DEV_DATA; synthetic ones where absent)")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--ufd-head", type=Path, default=os.environ.get("GANORIGIN_UFD_HEAD_FILE"),
                        help="a real fc_weights.pth for the random weights (env GANORIGIN_UFD_HEAD_FILE)")
    parser.add_argument("--out", type=Path, default=Path("second-detector.json"))
    parser.add_argument("--align", action="store_true", help="FFHQ-align faces for e4e (needs dlib; default off, "
                        "as in benchmarks.bench)")
    parser.add_argument("--quick", action="store_true", help="tiny weights, two images, one pass: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.passes = 2, 1
    return args


def weights_folder(args) -> Path:
    """The given folder, or random weights in the real formats written once into the cache."""
    if args.weights_dir:
        return args.weights_dir
    from ganorigin.testing import COMMFOR_FILE, write_test_weights

    folder = args.cache_dir / ("second-detector-tiny" if args.quick else "second-detector-full")
    if not (folder / COMMFOR_FILE).is_file():
        print(f"Writing RANDOM weights in the real formats to {folder} (once) ...", flush=True)
        write_test_weights(folder, size="tiny" if args.quick else "full", ufd_head=args.ufd_head)
    return folder


def pick_images(folder: Optional[Path], count: int, cache_dir: Path) -> list:
    """``count`` images taken in turn from each class folder, or synthetic ones where there are none."""
    found = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if folder else []
    if not found:
        from PIL import Image

        out = cache_dir / "synthetic-images"
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(out / f"synthetic-{i}.png")
        return sorted(out.glob("synthetic-*.png"))[:count]
    by_class: dict = {}
    for path in found:
        by_class.setdefault(path.parent.name, []).append(path)
    picked = []
    while len(picked) < min(count, len(found)):
        for group in by_class.values():
            if group and len(picked) < count:
                picked.append(group.pop(0))
    return picked


def resident_mb() -> float:
    """This process's resident set now, in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load(folder: Path, precision: str, align: bool) -> tuple:
    """``(pipelines by name, memory figures)``: the current pipeline and the variants with Community
    Forensics, all sharing one set of models."""
    from ganorigin import GANOrigin, WeightSources
    from ganorigin.accel import ModelWorkers
    from ganorigin.accel.workers import LANES as WORKER_LANES
    from ganorigin.factory import create_commfor, create_detector, create_encoder
    from ganorigin.hub import resolve
    from ganorigin.hub.pickles import load_attributor_pickles
    from ganorigin.hub.integrity import sha256_file
    from ganorigin.hub.trained_model import load_attribution_model
    from ganorigin.testing import UFD_HEAD_FILE

    # The folder's own head is trusted here: random test weights have their own digest.
    files = resolve(WeightSources.from_env(weights_dir=str(folder), local_files_only=True,
                                           ufd_head_sha256=sha256_file(folder / UFD_HEAD_FILE)))
    attribution_files = (files.safe_model,) if files.safe_model else (files.svm, files.scaler, files.label_encoder)
    attributor = (load_attribution_model(files.safe_model) if files.safe_model else
                  load_attributor_pickles(*attribution_files))
    detector = create_detector(files=files, device="cpu", precision=precision)
    encoder = create_encoder(files=files, device="cpu", precision=precision, attribution=attributor.predict_proba,
                             attribution_files=attribution_files)
    before = resident_mb()
    commfor = create_commfor(files=files, device="cpu", precision=precision)
    memory = {"rss_before_second_detector_mb": before, "rss_after_loading_it_mb": resident_mb()}
    pipelines = {CURRENT: GANOrigin(detector, encoder, attributor, device="cpu", align=align)}
    for variant, lane in LANES.items():
        pipeline = GANOrigin(detector, encoder, attributor, device="cpu", align=align, commfor=commfor)
        if pipeline._workers is not None:  # the variant's lane for Community Forensics (default: either)
            pipeline._workers = ModelWorkers(torch.get_num_threads(), {**WORKER_LANES, "commfor": lane})
        pipelines[f"with-commfor-{variant}"] = pipeline
    return pipelines, memory


def time_pipelines(pipelines: dict, images: list, passes: int) -> dict:
    """Per pipeline: end-to-end p50/p95 over ``images`` (each image's median over the passes)."""
    for pipeline in pipelines.values():
        pipeline.predict(images[0])  # warm-up
    times = {name: [] for name in pipelines}
    order = list(pipelines)
    for _ in range(passes):
        for name in order:
            one_pass = []
            for image in images:
                start = time.perf_counter()
                pipelines[name].predict(image)
                one_pass.append(time.perf_counter() - start)
            times[name].append(one_pass)
        order.reverse()
    result = {}
    for name, runs in times.items():
        ms = np.median(np.asarray(runs), axis=0) * 1e3
        result[name] = {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}
    return result


def time_parts(pipeline, images: list) -> dict:
    """The second detector's own forward (with its lane's share of the threads) and the degradation
    gate, each on its own."""
    from threadpoolctl import threadpool_limits

    from ganorigin.degradation import assess
    from ganorigin.images import load_image

    decoded = [load_image(path) for path in images]
    parts = {}
    for name, run in (("commfor_forward", lambda i: pipeline.commfor_probabilities([decoded[i]])),
                      ("degradation_gate", lambda i: assess(images[i], decoded[i]))):
        ms = []
        with threadpool_limits(max(1, torch.get_num_threads() // 2), user_api="openmp"):
            run(0)
            for i in range(len(images)):
                start = time.perf_counter()
                run(i)
                ms.append((time.perf_counter() - start) * 1e3)
        parts[name] = {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}
    return parts


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from ganorigin.accel import precision_of
    from ganorigin.accel.precision import cpu_class, cpu_model_name

    folder = weights_folder(args)
    images = pick_images(args.images_dir, args.images, args.cache_dir)
    pipelines, memory = load(folder, args.precision, args.align)
    with_second = pipelines["with-commfor-either"]
    pipelines[CURRENT].predict(images[0])
    memory["rss_after_current_analysis_mb"] = resident_mb()
    with_second.predict(images[0])
    memory["rss_after_second_detector_analysis_mb"] = resident_mb()
    latency = time_pipelines(pipelines, images, args.passes)
    base = latency[CURRENT]["p50_ms"]
    result = {
        "machine": {"cpu": cpu_model_name(), "cpu_class": cpu_class(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds")},
        "weights": str(folder), "images": len(images), "passes": args.passes, "align": args.align,
        "precision": {name: precision_of(model) for name, model in
                      (("CLIP", with_second.detector), ("e4e", with_second.encoder), ("CommFor", with_second.commfor))},
        "end_to_end": latency,
        "ratio_p50": {name: entry["p50_ms"] / base for name, entry in latency.items()},
        "parts": time_parts(with_second, images),
        "memory": memory,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(format_result(result))
    print(f"Wrote {args.out}")
    return 0


def format_result(result: dict) -> str:
    m, mem = result["machine"], result["memory"]
    lines = [f"CPU: {m['cpu']} ({m['cpu_class']}), {m['threads']} threads, torch {m['torch']}; precision "
             f"{result['precision']}; {result['images']} images x {result['passes']} passes; "
             f"alignment {'on' if result['align'] else 'off'}",
             f"{'pipeline':28s} {'p50 ms':>8s} {'p95 ms':>8s} {'x current':>9s}"]
    for name, entry in result["end_to_end"].items():
        lines.append(f"{name:28s} {entry['p50_ms']:8.0f} {entry['p95_ms']:8.0f} {result['ratio_p50'][name]:9.2f}")
    for name, entry in result["parts"].items():
        lines.append(f"  {name:26s} {entry['p50_ms']:8.1f} {entry['p95_ms']:8.1f}")
    added = mem["rss_after_second_detector_analysis_mb"] - mem["rss_after_current_analysis_mb"]
    lines.append(f"memory: resident {mem['rss_after_current_analysis_mb']:.0f} MB after an analysis without Community "
                 f"Forensics, {mem['rss_after_second_detector_analysis_mb']:.0f} MB after one with it ({added:+.0f} MB, "
                 f"{added / mem['rss_after_current_analysis_mb']:+.1%}); loading it: "
                 f"{mem['rss_after_loading_it_mb'] - mem['rss_before_second_detector_mb']:+.0f} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
