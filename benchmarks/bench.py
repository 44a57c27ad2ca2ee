"""Benchmark: the seed-style baseline against GANOrigin's default path, side by side.

    python -m benchmarks.bench [--images-dir DIR] [--images 30] [--out bench-results.json] [--quick]

Each path starts in fresh subprocesses, so cold start (process start -> model ready, weights on
disk) and peak resident memory (after a first request and a first batch) are measured per path.
Latency and throughput are then timed in one process holding both paths, taking turns in whole
passes (baseline, ours, ours, baseline), so that drift in a shared machine's speed touches both
alike. The baseline
rebuilds what the original
app did: fp32, eager, modules built with random initialisation and then ``load_state_dict``, the
whole e4e checkpoint (decoder included) read with ``torch.load`` and no memory mapping. Ours is
``GANOrigin.from_pretrained(...)`` with its default precision. Both analyse the same real images
(``--images-dir`` or ``GANORIGIN_DEV_DATA``; synthetic ones where neither is given) and their
answers are compared. ``--ufd-head`` (or ``GANORIGIN_UFD_HEAD_FILE``) puts the real UFD head into
the random weights.
Stages are timed one call each; end to end is one ``predict(path)`` call, the API users call.

Without real weights (``GANORIGIN_WEIGHTS_DIR`` or the Hub cache) the benchmark writes full-size
random weights in the real formats once into ``--cache-dir`` and says so. ``--quick`` uses tiny
architectures and two images: a smoke test of the machinery, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganorigin-bench"
STAGES = ("decode", "detect", "encode", "classify", "end_to_end")
PATHS = ("baseline", "ours")
BATCH_IMAGES = 16  # images in the throughput pass (the first ones of the timed set)
TARGETS = {  # the targets on a 2-core CPU
    "end_to_end_p50_ratio": 0.25,
    "cold_start_s": 8.0,
    "peak_rss_gb": 2.5,
    "throughput_images_per_s": 3.0,
    "max_fake_probability_delta": 0.01,
}


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30, help="dev images to time and compare (default 30)")
    parser.add_argument("--batch-size", type=int, default=8, help="predict_batch size for throughput (default 8)")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"), help="JSON result file")
    parser.add_argument("--quick", action="store_true", help="tiny random weights, 2 images: a smoke test")
    parser.add_argument("--weights-dir", type=Path, help="use these weights instead of finding or writing them")
    parser.add_argument("--images-dir", type=Path, default=os.environ.get("GANORIGIN_DEV_DATA"),
                        help="folder of test images (default: GANORIGIN_DEV_DATA; synthetic images without it)")
    parser.add_argument("--ufd-head", type=Path, default=os.environ.get("GANORIGIN_UFD_HEAD_FILE"),
                        help="a real fc_weights.pth to put into the random weights (default: GANORIGIN_UFD_HEAD_FILE)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where random weights are written")
    parser.add_argument("--child", choices=(*PATHS, "both"), help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--image-list", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    if args.quick:
        args.images = min(args.images, 2)
    weights_dir, weights_note = _weights(args)
    print(weights_note, flush=True)
    images = _images(args.images_dir, args.images, args.cache_dir)
    image_list = args.cache_dir / "bench-images.json"
    image_list.write_text(json.dumps([str(p) for p in images]))

    # Ours runs a one-time agreement probe on its first start and caches the verdict; the first
    # start (empty cache, so the probe really runs) is reported apart from the cached cold start
    # a user sees afterwards. --quick skips that extra start.
    shutil.rmtree(_check_cache(args), ignore_errors=True)
    starts = {}
    for path in PATHS:
        first = _spawn(path, weights_dir, image_list, args) if path == "ours" and not args.quick else None
        cold = _spawn(path, weights_dir, image_list, args)
        starts[path] = {"first": first or cold, "cold": cold}
    print(f"timing both paths in turns on {len(images)} images ...", flush=True)
    timed = _spawn("both", weights_dir, image_list, args)
    runs = {}
    for path in PATHS:
        first, cold = starts[path]["first"], starts[path]["cold"]
        runs[path] = {**timed[path], "precision": cold["precision"],
                      "threads": cold["threads"], "cold_start_s": cold["cold_start_s"],
                      "first_start_s": first["cold_start_s"], "peak_rss_gb": cold["peak_rss_gb"],
                      "first_start_peak_rss_gb": first["peak_rss_gb"]}

    result = {
        "machine": _machine(),
        "weights": weights_note,
        "quick": args.quick,
        "images": [str(p) for p in images],
        "batch_size": args.batch_size,
        "paths": runs,
        "ratios": _ratios(runs),
        "agreement": agreement(runs["baseline"]["answers"], runs["ours"]["answers"]),
        "command": "python -m benchmarks.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    result["targets"] = _targets(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(format_table(result))
    print(f"Results written to {args.out}")
    return 0


def _weights(args) -> tuple[Path, str]:
    """A weights folder and a sentence saying where it came from."""
    if args.weights_dir:
        return args.weights_dir, f"Weights: {args.weights_dir} (given)."
    size = "tiny" if args.quick else "full"
    if not args.quick:
        from ganorigin import WeightsNotFoundError
        from ganorigin.hub import WeightSources, resolve

        try:
            files = resolve(WeightSources.from_env(local_files_only=True))
        except WeightsNotFoundError:
            files = None
        if files is not None and len({p.parent for p in (files.clip, files.e4e, files.svm)}) == 1:
            return files.e4e.parent, f"Weights: the real ones, from {files.e4e.parent}."
    folder = args.cache_dir / size
    if not (folder / "e4e_ffhq_encode.pt").is_file():
        from ganorigin.testing import write_test_weights

        print(f"Writing {size}-size RANDOM weights in the real formats to {folder} (once) ...", flush=True)
        write_test_weights(folder.with_name(folder.name + ".part"), size=size, ufd_head=args.ufd_head)
        os.replace(folder.with_name(folder.name + ".part"), folder)
    return folder, (
        f"Weights: {size}-size RANDOM weights in the real formats from {folder} (real weights not found); "
        "timings hold for the real architectures, answers are not meaningful detections."
    )


def _images(folder: Optional[Path], count: int, cache_dir: Path) -> list[Path]:
    """``count`` images spread over the dev set's classes, or synthetic ones where it is absent."""
    found = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")) if folder else []
    if found:
        by_class: dict = {}
        for p in found:
            by_class.setdefault(p.parent.name, []).append(p)
        picked, groups = [], list(by_class.values())
        while len(picked) < min(count, len(found)):
            for group in groups:
                if group and len(picked) < count:
                    picked.append(group.pop(0))
        return picked
    from PIL import Image

    out = cache_dir / "synthetic-images"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = out / f"synthetic-{i}.png"
        Image.fromarray(rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _spawn(path: str, weights_dir: Path, image_list: Path, args) -> dict:
    out = args.cache_dir / f"bench-{path}.json"
    command = [sys.executable, "-m", "benchmarks.bench", "--child", path, "--weights-dir", str(weights_dir),
               "--image-list", str(image_list), "--out", str(out), "--batch-size", str(args.batch_size)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "GANORIGIN_CACHE_DIR": str(_check_cache(args))}
    started = time.time()
    subprocess.run([*command, "--started", repr(started)], check=True, env=env, cwd=ROOT)
    return json.loads(out.read_text())


def _check_cache(args) -> Path:
    """The children's cache of precision-check verdicts (the user's own cache is left alone)."""
    return args.cache_dir / "ganorigin-cache"


def _child(args) -> int:
    """A fresh process. For one path: its start (process start -> model ready) and its peak
    memory once it has served a few requests. For ``both``: the two paths loaded side by side and
    timed in turns (:func:`time_paths`)."""
    import torch

    images = [Path(p) for p in json.loads(args.image_list.read_text())]
    if args.child == "both":
        models = {"baseline": load_baseline(args.weights_dir), "ours": load_ours(args.weights_dir)}
        result = time_paths(models, images, args.batch_size)
    else:
        model = load_baseline(args.weights_dir) if args.child == "baseline" else load_ours(args.weights_dir)
        result = {"cold_start_s": time.time() - args.started, "precision": model.precision,
                  "threads": torch.get_num_threads()}
        model.predict(images[0])  # what serving adds to memory: one request and one batch
        model.predict_batch(images[:BATCH_IMAGES][: args.batch_size], batch_size=args.batch_size)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    args.out.write_text(json.dumps(result))
    return 0


def load_baseline(weights_dir: Path):
    """The seed app's loading and modules: random init, whole checkpoints in memory, fp32, eager."""
    import torch
    from safetensors.torch import load_file

    from ganorigin import GANOrigin
    from ganorigin.hub.pickles import load_attributor_pickles
    from ganorigin.models.detector import UFDDetector, clip_visual_state_dict, vision_cfg_from_state_dict
    from ganorigin.models.encoder import E4EEncoder, Subsample, checkpoint_filter_fn, config_from_state_dict
    from ganorigin.testing import CLIP_FILE, E4E_FILE, LABEL_ENCODER_FILE, SCALER_FILE, SVM_FILE, UFD_HEAD_FILE

    clip_path = weights_dir / CLIP_FILE
    clip = load_file(str(clip_path)) if clip_path.suffix == ".safetensors" else torch.load(clip_path, weights_only=True)
    visual = clip_visual_state_dict(clip, clip_path)
    detector = UFDDetector(vision_cfg_from_state_dict(visual))
    detector.visual.load_state_dict(visual)
    detector.fc.load_state_dict(torch.load(weights_dir / UFD_HEAD_FILE, map_location="cpu", weights_only=True))
    checkpoint = torch.load(weights_dir / E4E_FILE, map_location="cpu", weights_only=True)  # decoder included
    state_dict, _ = checkpoint_filter_fn(checkpoint, weights_dir / E4E_FILE)
    encoder = E4EEncoder(config_from_state_dict(state_dict))
    encoder.load_state_dict(state_dict)
    for unit in encoder.body:  # upstream's shortcut op (ours subsamples by slicing: same values)
        if isinstance(unit.shortcut_layer, Subsample):
            unit.shortcut_layer = torch.nn.MaxPool2d(1, unit.shortcut_layer.stride)
    attributor = load_attributor_pickles(*(weights_dir / f for f in (SVM_FILE, SCALER_FILE, LABEL_ENCODER_FILE)))
    return GANOrigin(detector, encoder, attributor, device="cpu", align=False)


def load_ours(weights_dir: Path):
    import hashlib

    from ganorigin import GANOrigin, WeightSources
    from ganorigin.testing import UFD_HEAD_FILE

    head = hashlib.sha256((weights_dir / UFD_HEAD_FILE).read_bytes()).hexdigest()
    sources = WeightSources(weights_dir=str(weights_dir), ufd_head_sha256=head, local_files_only=True)
    return GANOrigin.from_pretrained(sources, device="cpu", align=False)


def time_paths(models: dict, images: list, batch_size: int, passes: int = 2) -> dict:
    """Per path: stage and end-to-end latency over ``images``, answers, and ``predict_batch``
    throughput. The paths take turns in blocks (A B, then B A, ...), each block a whole pass over
    the images as a server would see them; an image's time is its median over the passes, and the
    throughput the best pass (noise only ever slows a pass down)."""
    for model in models.values():  # warm-up
        time_image(model, images[0])
    times = {path: [] for path in models}
    answers, batch = {}, {path: [] for path in models}
    order = list(models)
    for _ in range(passes):
        for path in order:
            timed = [time_image(models[path], image) for image in images]
            times[path].append([seconds for seconds, _ in timed])
            answers[path] = [answer for _, answer in timed]
            batch[path].append(time_batch(models[path], images[:BATCH_IMAGES], batch_size))
        order.reverse()
    result = {}
    for path in models:
        ms = np.median(np.asarray(times[path]), axis=0) * 1e3  # (images, stages)
        latency = {stage: {"p50_ms": float(np.percentile(ms[:, i], 50)), "p95_ms": float(np.percentile(ms[:, i], 95))}
                   for i, stage in enumerate(STAGES)}
        result[path] = {"latency": latency, "answers": answers[path],
                        **max(batch[path], key=lambda b: b["throughput_images_per_s"])}
    return result


def time_image(model, path: Path) -> tuple:
    """Decode, detect, encode and classify, each called on its own; then end to end, which is one
    ``model.predict(path)`` call (the API users call: it may run stages side by side). The answer
    is ``predict``'s."""
    from ganorigin.images import load_image

    t0 = time.perf_counter()
    image = load_image(path)
    t1 = time.perf_counter()
    model.fake_probabilities([image])
    t2 = time.perf_counter()
    codes = model.encode([image])
    t3 = time.perf_counter()
    model.attributor.predict_proba(codes)
    t4 = time.perf_counter()
    prediction = model.predict(path)
    t5 = time.perf_counter()
    answer = {"image": str(path), "fake_probability": prediction.fake_probability, "fake": prediction.is_fake,
              "attribution": prediction.attribution_label}
    return (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), answer


def time_batch(model, images: list, batch_size: int) -> dict:
    """The CLI path: ``predict_batch`` over every image (decoding included)."""
    t0 = time.perf_counter()
    model.predict_batch(images, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return {"batch_seconds": seconds, "throughput_images_per_s": len(images) / seconds}


def agreement(baseline: list, ours: list) -> dict:
    """Max |delta fake probability|, max |delta logit| (over the images whose probability is not
    saturated in float32, where the logit is recoverable) and the shares of identical verdicts and
    attributions."""
    pairs = list(zip(baseline, ours))
    logits = [(_logit(a["fake_probability"]), _logit(b["fake_probability"])) for a, b in pairs]
    logits = [(a, b) for a, b in logits if a is not None and b is not None]
    return {
        "images": len(pairs),
        "max_fake_probability_delta": max(abs(a["fake_probability"] - b["fake_probability"]) for a, b in pairs),
        "max_fake_logit_delta": max((abs(a - b) for a, b in logits), default=None),
        "logit_images": len(logits),
        "identical_verdicts": sum(a["fake"] == b["fake"] for a, b in pairs) / len(pairs),
        "identical_attributions": sum(a["attribution"] == b["attribution"] for a, b in pairs) / len(pairs),
    }


def _logit(p: float) -> Optional[float]:
    return float(np.log(p) - np.log1p(-p)) if 1e-6 < p < 1 - 1e-6 else None


def _ratios(runs: dict) -> dict:
    base, ours = runs["baseline"], runs["ours"]
    ratios = {f"{s}_p50": ours["latency"][s]["p50_ms"] / base["latency"][s]["p50_ms"] for s in STAGES}
    for key in ("cold_start_s", "peak_rss_gb", "throughput_images_per_s"):
        ratios[key] = ours[key] / base[key]
    return ratios


def _targets(result: dict) -> dict:
    ours, agree = result["paths"]["ours"], result["agreement"]
    measured = {
        "end_to_end_p50_ratio": result["ratios"]["end_to_end_p50"],
        "cold_start_s": ours["cold_start_s"],
        "peak_rss_gb": ours["peak_rss_gb"],
        "throughput_images_per_s": ours["throughput_images_per_s"],
        "max_fake_probability_delta": agree["max_fake_probability_delta"],
    }
    met = {k: (v >= TARGETS[k] if k == "throughput_images_per_s" else v <= TARGETS[k]) for k, v in measured.items()}
    met["identical_answers"] = agree["identical_verdicts"] == 1.0 and agree["identical_attributions"] == 1.0
    return {"target": TARGETS, "measured": measured, "met": met}


def _machine() -> dict:
    import torch

    from ganorigin.accel import cpu_has_bf16_matrix_units, cpu_model_name

    return {
        "cpu": cpu_model_name(),
        "cores": os.cpu_count(),
        "bf16_matrix_units": cpu_has_bf16_matrix_units(),
        "load_average_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def format_table(result: dict) -> str:
    """A Markdown table: baseline, ours, ratio (ours / baseline)."""
    base, ours = result["paths"]["baseline"], result["paths"]["ours"]
    rows = [("cold start (s, weights cached)", base["cold_start_s"], ours["cold_start_s"]),
            ("first start incl. one-time agreement probe (s)", base["first_start_s"], ours["first_start_s"]),
            ("peak RSS (GB)", base["peak_rss_gb"], ours["peak_rss_gb"]),
            ("peak RSS, first start incl. probe (GB)", base["first_start_peak_rss_gb"], ours["first_start_peak_rss_gb"])]
    for stage in STAGES:
        for q in ("p50_ms", "p95_ms"):
            rows.append((f"{stage} {q[:3]} (ms/image)", base["latency"][stage][q], ours["latency"][stage][q]))
    rows.append((f"batch throughput, predict_batch x{result['batch_size']} (images/s)",
                 base["throughput_images_per_s"], ours["throughput_images_per_s"]))
    lines = [f"| metric | baseline ({base['precision']}) | ours ({ours['precision']}) | ours / baseline |",
             "|---|---:|---:|---:|"]
    lines += [f"| {name} | {b:.3g} | {o:.3g} | {o / b:.2f}x |" for name, b, o in rows]
    a, m = result["agreement"], result["machine"]
    logit = (f", max |delta logit| {a['max_fake_logit_delta']:.3f} (on the {a['logit_images']} unsaturated)"
             if a.get("max_fake_logit_delta") is not None else "")
    lines += ["", f"Agreement on {a['images']} images: max |delta fake probability| {a['max_fake_probability_delta']:.2e}{logit}, "
              f"identical verdicts {a['identical_verdicts']:.0%}, identical attributions {a['identical_attributions']:.0%}.",
              f"Machine: {m['cpu']}, {m['cores']} cores, bf16 matrix units: {m['bf16_matrix_units']}, "
              f"load average {m['load_average_1m']:.1f} at the end, torch {m['torch']}.",
              "Targets met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in result["targets"]["met"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
