"""Benchmark: the seed-style fp32 baseline against each of GANOrigin's paths, side by side, on a named CPU or GPU.

    python -m benchmarks.bench [--precisions auto,bf16,int8] [--images-dir DIR] [--images 30]
                               [--out bench-results.json] [--quick] [--device cuda]

The paths are ``baseline`` plus ``ours-<precision>`` for each of ``--precisions`` (default: every
path this CPU can run: ``auto``; ``bf16`` where the CPU class is ``amx`` or ``avx512_bf16`` and oneDNN
runs bf16; ``int8`` on any x86 CPU). Each path starts in fresh subprocesses, so cold start (process start ->
model ready, weights on disk) and peak resident memory (after a first request and a first batch)
are measured per path. Each of ours has its own cache of agreement verdicts: its "first start"
begins with that cache empty, so the one-time probe runs, and its "cold start" is the next start,
with the verdict cached (``--quick`` makes one start per path). Latency and throughput are then
timed in ONE process holding every path, taking turns in whole passes over the same images (the
order reversed each pass: baseline, ours-a, ours-b, then ours-b, ours-a, baseline), so that drift
in a shared machine's speed touches every path alike.

The baseline rebuilds what the original app did: fp32, eager, modules built with random
initialisation and then ``load_state_dict``, the whole e4e checkpoint (decoder included) read with
``torch.load`` and no memory mapping. ``ours-<precision>`` is
``GANOrigin.from_pretrained(..., precision=<precision>)``; the probe may refuse a fast path for a
model (it then runs exact fp32 and logs a warning): the result records the precision each path
actually ended with, per model, and the probe's warnings. All paths analyse the same real images
(``--images-dir`` or ``GANORIGIN_DEV_DATA``; synthetic ones where neither is given) and each of
ours is compared with the baseline's answers. ``--ufd-head`` (or ``GANORIGIN_UFD_HEAD_FILE``) puts
the real UFD head into the random weights. Stages are timed one call each; end to end is one
``predict(path)`` call, the API users call.

``--device cuda`` runs every path, the baseline too, on the GPU (default paths ``auto`` and ``fp16``);
the result then also names the GPU and records each path's peak GPU memory.

The result names the CPU: model, ``cpu_class()``, the relevant flags, torch, the date, and whether
the run is EMULATED: it is when ``ONEDNN_MAX_CPU_ISA`` or ``GANORIGIN_CPU_ISA`` is set. Ours' bf16
and int8 kernels and every convolution are oneDNN's, which honours ``ONEDNN_MAX_CPU_ISA``; fp32
matrix products run in MKL, which ignores it: set ``MKL_ENABLE_INSTRUCTIONS`` (e.g. ``AVX2``) to
limit it as well.

Without real weights (``GANORIGIN_WEIGHTS_DIR`` or the Hub cache) the benchmark writes full-size
random weights in the real formats once into ``--cache-dir`` and says so. ``--quick`` uses tiny
architectures and two images: a smoke test of the machinery, not a measurement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from . import peak_rss_bytes

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganorigin-bench"
STAGES = ("decode", "detect", "encode", "classify", "end_to_end")
BASELINE = "baseline"
OURS_PRECISIONS = ("auto", "fp32", "bf16", "int8", "fp16")  # what --precisions takes (fp16: GPUs only)
CPU_FLAGS = ("amx_bf16", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx2")  # the flags the classes come from
EMULATION_ENV = ("ONEDNN_MAX_CPU_ISA", "GANORIGIN_CPU_ISA")  # either set: the run is emulated
RECORDED_ENV = (*EMULATION_ENV, "MKL_ENABLE_INSTRUCTIONS", "GANORIGIN_PRECISION", "GANORIGIN_CUDA_GRAPHS")
BATCH_IMAGES = 16  # images in the throughput pass (the first ones of the timed set)
TARGETS = {  # the issues' targets on a 2-core CPU (end to end: see E2E_TARGET_BY_CLASS)
    "end_to_end_p50_ratio": 0.25,
    "cold_start_s": 8.0,
    "peak_rss_gb": 2.5,
    "throughput_images_per_s": 3.0,
    "max_fake_probability_delta": 0.01,
}
# Issue 15: the default path's end-to-end p50 against the baseline, per CPU class ("none": no slower).
E2E_TARGET_BY_CLASS = {"amx": 0.25, "avx512_bf16": 0.35, "avx512_vnni": 0.5, "avx_vnni": 0.5, "avx2": 0.5,
                       "none": 1.0}


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", type=_precision_list, default=None,
                        help="comma list of ours' paths, of auto, fp32, bf16, int8, fp16 (default: every path the "
                             "device can run: " + ",".join(default_precisions()) + " on this CPU)")
    parser.add_argument("--images", type=int, default=30, help="dev images to time and compare (default 30)")
    parser.add_argument("--batch-size", type=int, default=8, help="predict_batch size for throughput (default 8)")
    parser.add_argument("--passes", type=int, default=2, help="timed passes per path, taking turns (default 2)")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"), help="JSON result file")
    parser.add_argument("--quick", action="store_true", help="tiny random weights, 2 images: a smoke test")
    parser.add_argument("--weights-dir", type=Path, help="use these weights instead of finding or writing them")
    parser.add_argument("--images-dir", type=Path, default=os.environ.get("GANORIGIN_DEV_DATA"),
                        help="folder of test images (default: GANORIGIN_DEV_DATA; synthetic images without it)")
    parser.add_argument("--ufd-head", type=Path, default=os.environ.get("GANORIGIN_UFD_HEAD_FILE"),
                        help="a real fc_weights.pth to put into the random weights (default: GANORIGIN_UFD_HEAD_FILE)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where random weights are written")
    parser.add_argument("--device", default="cpu", help="torch device every path runs on: cpu (default) or cuda")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a path name, or "all"
    parser.add_argument("--paths", help=argparse.SUPPRESS)  # for --child all: comma list of path names
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--image-list", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _check_device(parser, args.device)
    emulation = emulation_settings()
    if args.child:
        return _child(args)
    if args.quick:
        args.images = min(args.images, 2)
    precisions = args.precisions or default_precisions(args.device)
    paths = [BASELINE, *(f"ours-{p}" for p in precisions)]
    print(f"CPU: {describe_machine(_machine(emulation, args.device))}", flush=True)
    if emulation["emulated"]:
        print(emulation["note"], flush=True)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    weights_dir, weights_note = _weights(args)
    print(weights_note, flush=True)
    images = _images(args.images_dir, args.images, args.cache_dir)
    image_list = args.cache_dir / "bench-images.json"
    image_list.write_text(json.dumps([str(p) for p in images]))

    # Each of ours runs a one-time agreement probe on its first start and caches the verdict (in its
    # own cache here, so each path's first start really runs it); that first start is reported apart
    # from the cold start a user sees afterwards. --quick makes one start per path.
    starts = {}
    for path in paths:
        shutil.rmtree(_check_cache(args, path), ignore_errors=True)
        print(f"starting {path} in fresh processes ...", flush=True)
        first = _spawn(path, weights_dir, image_list, args) if path != BASELINE and not args.quick else None
        cold = _spawn(path, weights_dir, image_list, args)
        starts[path] = {"first": first or cold, "cold": cold}
    print(f"timing {len(paths)} paths in turns on {len(images)} images ...", flush=True)
    timed = _spawn("all", weights_dir, image_list, args, paths=paths)
    runs = {}
    for path in paths:
        first, cold = starts[path]["first"], starts[path]["cold"]
        runs[path] = {**timed["paths"][path], "threads": cold["threads"], "cold_start_s": cold["cold_start_s"],
                      "first_start_s": first["cold_start_s"], "peak_rss_gb": cold["peak_rss_gb"],
                      "first_start_peak_rss_gb": first["peak_rss_gb"], "peak_gpu_memory_gb": cold["peak_gpu_memory_gb"],
                      "cold_start_precision": cold["precision"], "first_start_precision": first["precision"],
                      "probe_warnings": sorted({*first["probe_warnings"], *cold["probe_warnings"],
                                                *timed["paths"][path]["probe_warnings"]})}
    machine = _machine(emulation, args.device)
    result = {
        "machine": machine,
        "weights": weights_note,
        "quick": args.quick,
        "images": [str(p) for p in images],
        "batch_size": args.batch_size,
        "passes": args.passes,
        "path_order": paths,
        "paths": runs,
        "commfor_reference": timed["commfor_reference"],
        "ratios": {path: _ratios(runs[BASELINE], runs[path]) for path in paths if path != BASELINE},
        "agreement": {path: agreement(runs[BASELINE]["answers"], runs[path]["answers"], timed["commfor_reference"])
                      for path in paths if path != BASELINE},
        "command": "python -m benchmarks.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    result["targets"] = {path: _targets(result, path) for path in result["ratios"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(format_table(result))
    print(f"Results written to {args.out}")
    return 0


def _check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """``--device`` names a device this machine has, or the run stops here with the reason."""
    from ganorigin import ConfigurationError
    from ganorigin.factory import as_device

    try:
        as_device(device)
    except ConfigurationError as error:
        parser.error(str(error))


def _precision_list(text: str) -> list:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    wrong = [name for name in names if name not in OURS_PRECISIONS]
    if wrong or not names:
        raise argparse.ArgumentTypeError(f"precisions are a comma list of {', '.join(OURS_PRECISIONS)}; got {text!r}")
    return list(dict.fromkeys(names))


def default_precisions(device: str = "cpu") -> list:
    """Every path the device can run: on a CPU ``auto``; ``bf16`` on the bf16 classes (where oneDNN runs bf16);
    ``int8`` on any x86 CPU. On a GPU ``auto`` (bf16 where it runs bf16) and ``fp16``."""
    from ganorigin.accel import cpu_has_bf16_matrix_units

    if not device.startswith("cpu"):
        return ["auto", "fp16"]
    precisions = ["auto"]
    if cpu_has_bf16_matrix_units():
        precisions.append("bf16")
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86"):
        precisions.append("int8")
    return precisions


def emulation_settings(env=None) -> dict:
    """Whether a run is emulated (``ONEDNN_MAX_CPU_ISA`` or ``GANORIGIN_CPU_ISA`` set), with the
    values of both, and of ``MKL_ENABLE_INSTRUCTIONS``."""
    env = os.environ if env is None else env
    values = {name: env.get(name) or None for name in RECORDED_ENV}
    emulated = any(values[name] for name in EMULATION_ENV)
    note = None
    if emulated:
        note = ("EMULATED: " + ", ".join(f"{name}={values[name] or '(unset)'}" for name in EMULATION_ENV)
                + "; ours' bf16 and int8 kernels, and every convolution, are oneDNN's, which honours ONEDNN_MAX_CPU_ISA")
        if values["MKL_ENABLE_INSTRUCTIONS"]:
            note += f"; MKL_ENABLE_INSTRUCTIONS={values['MKL_ENABLE_INSTRUCTIONS']}"
        else:
            note += ("; MKL_ENABLE_INSTRUCTIONS unset, so fp32 matrix products in MKL (the baseline's, and the "
                     "exact parts of ours) still use every instruction this CPU has")
        note += "."
    return {"emulated": emulated, "env": values, "note": note}


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
    if args.quick:
        return folder, (f"Weights: tiny RANDOM weights from {folder} (--quick: a smoke test of the benchmark, "
                        "not a measurement).")
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


def _spawn(path: str, weights_dir: Path, image_list: Path, args, paths: Optional[list] = None) -> dict:
    out = args.cache_dir / f"bench-{path}.json"
    command = [sys.executable, "-m", "benchmarks.bench", "--child", path, "--weights-dir", str(weights_dir),
               "--image-list", str(image_list), "--out", str(out), "--batch-size", str(args.batch_size),
               "--cache-dir", str(args.cache_dir), "--passes", str(args.passes), "--device", args.device]
    if paths:
        command += ["--paths", ",".join(paths)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "GANORIGIN_CACHE_DIR": str(_check_cache(args, path))}
    started = time.time()
    subprocess.run([*command, "--started", repr(started)], check=True, env=env, cwd=ROOT)
    return json.loads(out.read_text())


def _check_cache(args, path: str) -> Path:
    """A path's cache of precision-check verdicts (the user's own cache is left alone)."""
    return args.cache_dir / "ganorigin-cache" / path


class _ProbeWarnings(logging.Handler):
    """Collects what the probe refused (a path that disagrees, at INFO; a model that falls back to fp32, at WARNING),
    not the paths it kept."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list = []

    def emit(self, record):
        if record.levelno >= logging.WARNING or "disagrees with fp32" in record.getMessage():
            self.messages.append(record.getMessage())


def _load(path: str, weights_dir: Path, device: str = "cpu") -> tuple:
    """``(model, facts)`` for a path name: the precision it ended with, per model, and the probe's warnings."""
    import torch

    from ganorigin.accel import precision_of, resolve_precision

    handler = _ProbeWarnings()
    probe_logger = logging.getLogger("ganorigin.accel.probe")
    probe_logger.addHandler(handler)
    probe_logger.setLevel(logging.INFO)
    try:
        if path == BASELINE:
            model, requested = load_baseline(weights_dir, device), "fp32"
        else:
            requested = path.removeprefix("ours-")
            model = load_ours(weights_dir, requested, device)
    finally:
        probe_logger.removeHandler(handler)
    commfor = getattr(model, "commfor", None)  # the second detector, where the pipeline has one
    return model, {"requested": requested, "resolved": resolve_precision(requested, torch.device(device)),
                   "precision": model.precision, "detector_precision": precision_of(model.detector),
                   "encoder_precision": precision_of(model.encoder),
                   "commfor_precision": None if commfor is None else precision_of(commfor),
                   "probe_warnings": handler.messages}


def _child(args) -> int:
    """A fresh process. For one path: its start (process start -> model ready) and its peak memory
    once it has served a few requests. For ``all``: every path loaded side by side and timed in
    turns (:func:`time_paths`)."""
    import torch

    images = [Path(p) for p in json.loads(args.image_list.read_text())]
    if args.child == "all":
        models, facts = {}, {}
        for path in args.paths.split(","):  # each of ours with its own verdict cache, as it started
            os.environ["GANORIGIN_CACHE_DIR"] = str(_check_cache(args, path))
            models[path], facts[path] = _load(path, args.weights_dir, args.device)
        timed = time_paths(models, images, args.batch_size, passes=args.passes)
        result = {"paths": {path: {**facts[path], **timed[path]} for path in models},
                  "commfor_reference": commfor_reference(args.weights_dir, images, args.device)}
    else:
        model, facts = _load(args.child, args.weights_dir, args.device)
        result = {"cold_start_s": time.time() - args.started, **facts, "threads": torch.get_num_threads()}
        model.predict(images[0])  # what serving adds to memory: one request and one batch
        model.predict_batch(images[:BATCH_IMAGES][: args.batch_size], batch_size=args.batch_size)
        result["peak_rss_gb"] = peak_rss_bytes() / 1e9
        on_gpu = torch.device(args.device).type == "cuda"
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9 if on_gpu else None
    args.out.write_text(json.dumps(result))
    return 0


def load_baseline(weights_dir: Path, device: str = "cpu"):
    """The seed app's loading and modules: random init, whole checkpoints in memory, fp32, eager; on ``device``."""
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
    return GANOrigin(detector, encoder, attributor, device=device, align=False)


def commfor_reference(weights_dir: Path, images: list, device: str = "cpu") -> list:
    """Community Forensics' P(fake) for ``images`` in exact fp32 on ``device``: what ours' second detector is
    compared with (the baseline has none)."""
    from ganorigin.factory import commfor_scores, load_commfor
    from ganorigin.images import load_image
    from ganorigin.testing import COMMFOR_FILE

    model = load_commfor(weights_dir / COMMFOR_FILE).to(device)
    return [float(p) for p in commfor_scores(model, [load_image(path) for path in images])]


def load_ours(weights_dir: Path, precision: Optional[str] = "auto", device: str = "cpu"):
    import hashlib

    from ganorigin import GANOrigin, WeightSources
    from ganorigin.testing import UFD_HEAD_FILE

    head = hashlib.sha256((weights_dir / UFD_HEAD_FILE).read_bytes()).hexdigest()
    sources = WeightSources(weights_dir=str(weights_dir), ufd_head_sha256=head, local_files_only=True)
    return GANOrigin.from_pretrained(sources, device=device, align=False, precision=precision)


def time_paths(models: dict, images: list, batch_size: int, passes: int = 2) -> dict:
    """Per path: stage and end-to-end latency over ``images``, answers, and ``predict_batch``
    throughput. The paths take turns in blocks, the order reversed each pass (A B C, then C B A,
    ...), each block a whole pass over the images as a server would see them; an image's time is
    its median over the passes, and the throughput the best pass (noise only ever slows a pass
    down)."""
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
    before = _rescored(model)  # each fast detector's images near a verdict's edge, scored again exactly
    prediction = model.predict(path)
    t5 = time.perf_counter()
    after = _rescored(model)
    answer = {"image": str(path), "fake_probability": prediction.fake_probability, "fake": prediction.is_fake,
              "attribution": prediction.attribution_label, "rescored_exactly": after[0] > before[0],
              "commfor_rescored_exactly": after[1] > before[1]}
    if prediction.commfor_probability is not None:  # the second detector's score and what it says
        answer.update(commfor_probability=prediction.commfor_probability, commfor_threshold=prediction.commfor_threshold,
                      commfor_band=prediction.commfor_band, commfor_state=prediction.detector_states["commfor"])
    return (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), answer


def _rescored(model) -> tuple:
    """How many images UFD's and Community Forensics' fast detectors have scored again exactly so far."""
    return getattr(model.detector, "rescored", 0), getattr(model.commfor, "rescored", 0)


def time_batch(model, images: list, batch_size: int) -> dict:
    """The CLI path: ``predict_batch`` over every image (decoding included)."""
    t0 = time.perf_counter()
    model.predict_batch(images, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return {"batch_seconds": seconds, "throughput_images_per_s": len(images) / seconds}


def agreement(baseline: list, ours: list, commfor_reference: Optional[list] = None) -> dict:
    """Max |delta fake probability|, max |delta logit| (over the images whose probability is not
    saturated in float32, where the logit is recoverable) and the shares of identical verdicts and
    attributions, and how many of ours' images its detector found borderline and scored again exactly; with
    ``commfor_reference`` (Community Forensics' fp32 P(fake) per image), the same for ours' second detector
    against it (its verdicts: fake, real or unsure, by ours' threshold and band)."""
    from ganorigin.verdict import detector_state

    pairs = list(zip(baseline, ours))
    logits = [(_logit(a["fake_probability"]), _logit(b["fake_probability"])) for a, b in pairs]
    logits = [(a, b) for a, b in logits if a is not None and b is not None]
    result = {
        "images": len(pairs),
        "max_fake_probability_delta": max(abs(a["fake_probability"] - b["fake_probability"]) for a, b in pairs),
        "max_fake_logit_delta": max((abs(a - b) for a, b in logits), default=None),
        "logit_images": len(logits),
        "identical_verdicts": sum(a["fake"] == b["fake"] for a, b in pairs) / len(pairs),
        "identical_attributions": sum(a["attribution"] == b["attribution"] for a, b in pairs) / len(pairs),
        "rescored_images": sum(bool(b.get("rescored_exactly")) for b in ours),
        "commfor_rescored_images": sum(bool(b.get("commfor_rescored_exactly")) for b in ours),
    }
    commfor = [(want, b) for want, b in zip(commfor_reference or (), ours) if "commfor_probability" in b]
    if commfor:
        result["max_commfor_probability_delta"] = max(abs(want - b["commfor_probability"]) for want, b in commfor)
        result["identical_commfor_verdicts"] = sum(
            detector_state(want, b["commfor_threshold"], b["commfor_band"]) == b["commfor_state"] for want, b in commfor
        ) / len(commfor)
    return result


def _logit(p: float) -> Optional[float]:
    return float(np.log(p) - np.log1p(-p)) if 1e-6 < p < 1 - 1e-6 else None


def _ratios(base: dict, ours: dict) -> dict:
    """``ours / baseline`` for every stage's p50 and p95, the starts, memory and throughput."""
    ratios = {}
    for stage in STAGES:
        for q in ("p50", "p95"):
            ratios[f"{stage}_{q}"] = ours["latency"][stage][f"{q}_ms"] / base["latency"][stage][f"{q}_ms"]
    for key in ("cold_start_s", "peak_rss_gb", "throughput_images_per_s"):
        ratios[key] = ours[key] / base[key]
    ratios["first_start_s"] = ours["first_start_s"] / base["cold_start_s"]  # the baseline has no probe
    return ratios


def _targets(result: dict, path: str) -> dict:
    """The issues' targets for one of ours; the end-to-end one is the CPU class's."""
    run, agree = result["paths"][path], result["agreement"][path]
    on_cpu = result["machine"].get("device", "cpu").startswith("cpu")  # on a GPU: no slower than the baseline
    cls = result["machine"]["cpu_class"] if on_cpu else "none"
    target = {**TARGETS, "end_to_end_p50_ratio": E2E_TARGET_BY_CLASS.get(cls, 1.0)}
    measured = {
        "end_to_end_p50_ratio": result["ratios"][path]["end_to_end_p50"],
        "cold_start_s": run["cold_start_s"],
        "peak_rss_gb": run["peak_rss_gb"],
        "throughput_images_per_s": run["throughput_images_per_s"],
        "max_fake_probability_delta": agree["max_fake_probability_delta"],
    }
    if "max_commfor_probability_delta" in agree:  # the second detector against its own fp32, by the same bar
        target["max_commfor_probability_delta"] = target["max_fake_probability_delta"]
        measured["max_commfor_probability_delta"] = agree["max_commfor_probability_delta"]
    met = {k: (v >= target[k] if k == "throughput_images_per_s" else v <= target[k]) for k, v in measured.items()}
    met["identical_answers"] = (agree["identical_verdicts"] == 1.0 and agree["identical_attributions"] == 1.0
                                and agree.get("identical_commfor_verdicts", 1.0) == 1.0)
    return {"target": target, "measured": measured, "met": met}


def _machine(emulation: dict, device: str = "cpu") -> dict:
    import torch

    from ganorigin.accel.precision import cpu_class, cpu_flags, cpu_model_name

    flags = cpu_flags()
    return {
        "cpu": cpu_model_name(),
        "cpu_class": cpu_class(),
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "device": device,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else None,
        "emulated": emulation["emulated"],
        "emulation_env": emulation["env"],
        "emulation_note": emulation["note"],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "source": _source_version(),
    }


def _source_version() -> Optional[str]:
    """The commit of the code measured (with "+changes" when ``ganorigin/`` differs from it), where git can tell."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10)
        changed = subprocess.run(["git", "status", "--porcelain", "--", "ganorigin", "benchmarks"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def describe_machine(m: dict) -> str:
    """One line naming the CPU, its class and flags, torch, the date, and native or EMULATED."""
    flags = ", ".join(m["cpu_flags"]) or "none of " + ", ".join(CPU_FLAGS)
    env = m["emulation_env"]
    mode = ("**EMULATED** (" + ", ".join(f"{k}={env[k] or 'unset'}" for k in EMULATION_ENV)
            + (f", MKL_ENABLE_INSTRUCTIONS={env['MKL_ENABLE_INSTRUCTIONS']}" if env.get("MKL_ENABLE_INSTRUCTIONS") else "")
            + ")") if m["emulated"] else "native"
    source = f"; code {m['source']}" if m.get("source") else ""
    gpu = f"; every path on {m['device']}, {m['gpu']}" if m.get("gpu") else ""
    return (f"{m['cpu']}, {m['cores']} cores, cpu_class {m['cpu_class']}, flags: {flags}; torch {m['torch']}{gpu}; "
            f"{m['date']}{source}; {mode}")


def _number(value: float) -> str:
    """Three significant digits, without exponents for the sizes a benchmark shows."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def format_table(result: dict) -> str:
    """Markdown: the CPU; one row per path (ours with their ratio to the baseline); the stages."""
    m, paths = result["machine"], result["paths"]
    order = result.get("path_order") or list(paths)
    base = paths[BASELINE]
    mark = " (emulated)" if m["emulated"] else ""

    def cell(path, value, base_value):
        text = _number(value)
        return text if path == BASELINE else f"{text} ({value / base_value:.2f}x)"

    lines = [f"CPU: {describe_machine(m)}", ""]
    if m["emulated"]:
        lines += [m["emulation_note"], ""]
    lines += ["| path | precision used | end to end p50 (ms) | end to end p95 (ms) | detect p50 (ms) "
              "| encode p50 (ms) | throughput, predict_batch "
              f"x{result['batch_size']} (img/s) | cold start (s) | first start incl. probe (s) | peak RSS (GB) "
              "| max abs ΔP(fake) | same verdicts | same attributions |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for path in order:
        run, lat = paths[path], paths[path]["latency"]
        used = f"CLIP {run['detector_precision']} / e4e {run['encoder_precision']}"
        if run.get("commfor_precision"):
            used += f" / CommFor {run['commfor_precision']}"
        if path == BASELINE:
            first, agree_cells = "—", ["—", "—", "—"]
        else:
            a = result["agreement"][path]
            first = cell(path, run["first_start_s"], base["cold_start_s"])
            agree_cells = [f"{a['max_fake_probability_delta']:.2e}", f"{a['identical_verdicts']:.0%}",
                           f"{a['identical_attributions']:.0%}"]
        name = f"{path}{mark}" if path != BASELINE else f"{path} (fp32){mark}"
        row = [name, used,
               cell(path, lat["end_to_end"]["p50_ms"], base["latency"]["end_to_end"]["p50_ms"]),
               cell(path, lat["end_to_end"]["p95_ms"], base["latency"]["end_to_end"]["p95_ms"]),
               cell(path, lat["detect"]["p50_ms"], base["latency"]["detect"]["p50_ms"]),
               cell(path, lat["encode"]["p50_ms"], base["latency"]["encode"]["p50_ms"]),
               cell(path, run["throughput_images_per_s"], base["throughput_images_per_s"]),
               cell(path, run["cold_start_s"], base["cold_start_s"]), first,
               cell(path, run["peak_rss_gb"], base["peak_rss_gb"]), *agree_cells]
        if path != BASELINE:
            row[2] = f"**{row[2]}**"
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Stages (ms/image, p50 / p95; ours / baseline at p50):", "",
              "| stage | " + " | ".join(order) + " |", "|---|" + "---:|" * len(order)]
    for stage in STAGES:
        cells = []
        for path in order:
            lat, b = paths[path]["latency"][stage], base["latency"][stage]
            text = f"{_number(lat['p50_ms'])} / {_number(lat['p95_ms'])}"
            cells.append(text if path == BASELINE else f"{text} ({lat['p50_ms'] / b['p50_ms']:.2f}x)")
        lines.append(f"| {stage.replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines.append("")
    for path in order:
        run = paths[path]
        if run.get("probe_warnings"):
            lines.append(f"Probe on {path}: " + " / ".join(run["probe_warnings"]))
        if path != BASELINE and {run.get("cold_start_precision"), run.get("first_start_precision")} != {run["precision"]}:
            lines.append(f"Note: {path} started as {run.get('first_start_precision')} (first start), "
                         f"{run.get('cold_start_precision')} (cold start), and was timed as {run['precision']}.")
        if path != BASELINE and path in result["agreement"]:
            a = result["agreement"][path]
            if a.get("max_fake_logit_delta") is not None:
                lines.append(f"{path}: max |Δ logit| {a['max_fake_logit_delta']:.3f} on the {a['logit_images']} "
                             "images whose P(fake) is not saturated.")
            if a.get("rescored_images"):
                lines.append(f"{path}: {a['rescored_images']} of {a['images']} images were borderline for the fast "
                             "detector and scored again exactly.")
            if a.get("commfor_rescored_images"):
                lines.append(f"{path}: {a['commfor_rescored_images']} of {a['images']} images were near a verdict's "
                             "edge for Community Forensics' fast path and scored again exactly.")
            if "max_commfor_probability_delta" in a:
                lines.append(f"{path}: Community Forensics' P(fake) against its own fp32: max |Δ| "
                             f"{a['max_commfor_probability_delta']:.2e}, same verdicts {a['identical_commfor_verdicts']:.0%}.")
    with_commfor = [path for path in order if paths[path].get("commfor_precision")]
    if with_commfor:
        lines.append(f"{', '.join(with_commfor)} also run the second detector (Community Forensics); the baseline, "
                     "as the original app, does not.")
    if any(paths[path].get("peak_gpu_memory_gb") for path in order):
        lines.append("Peak GPU memory (after a first request and a first batch): " + ", ".join(
            f"{path} {paths[path]['peak_gpu_memory_gb']:.2f} GB" for path in order) + ".")
    lines.append(f"{len(result['images'])} images, {result.get('passes', 2)} passes taking turns in one process; "
                 f"load average {m['load_average_1m']:.1f} at the end. {result['weights']}")
    for path, targets in ({} if result.get("quick") else result["targets"]).items():  # tiny weights: no targets
        lines.append(f"Targets, {path} (end to end ≤ {targets['target']['end_to_end_p50_ratio']}x for "
                     f"{m['gpu'] or m['cpu_class']}): " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in targets["met"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
