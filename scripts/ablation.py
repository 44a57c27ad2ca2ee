"""What each part of the CPU fast path buys: one model forward at a time, per variant.

    python scripts/ablation.py [--weights-dir DIR] [--dev-data DIR] [--images 8] [--repeats 5]

Uses the weights the benchmark wrote (``<cache>/ganorigin-bench/full``: full-size random weights in
the real formats) unless given others, and images from ``--dev-data`` (or GANORIGIN_DEV_DATA;
synthetic noise images without either). For each variant it prints the median time per image and
the agreement with exact fp32: max |delta logit| for CLIP, relative error of the W+ codes for e4e.
Not part of CI; docs/performance.md quotes its output.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import DEFAULT_CACHE, _images  # noqa: E402
from ganorigin.accel import (  # noqa: E402
    ModelWorkers,
    cpu_has_bf16_matrix_units,
    cpu_model_name,
    fast_detector,
    fast_encoder,
    replace_modules,
)
from ganorigin.accel.convert import fold_encoder_batchnorms  # noqa: E402
from ganorigin.factory import load_detector, load_encoder  # noqa: E402
from ganorigin.hub.registry import E4E_PREPROCESS, UFD_PREPROCESS  # noqa: E402
from ganorigin.images import load_image  # noqa: E402
from ganorigin.testing import CLIP_FILE, E4E_FILE, UFD_HEAD_FILE  # noqa: E402

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, default=DEFAULT_CACHE / "full",
                        help=f"a folder with {CLIP_FILE}, {UFD_HEAD_FILE} and {E4E_FILE}")
    parser.add_argument("--dev-data", type=Path, default=os.environ.get("GANORIGIN_DEV_DATA"),
                        help="folder of test images (env GANORIGIN_DEV_DATA; synthetic images without it)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    missing = [f for f in (CLIP_FILE, UFD_HEAD_FILE, E4E_FILE) if not (args.weights_dir / f).is_file()]
    if missing:
        parser.error(f"--weights-dir {args.weights_dir} lacks {', '.join(missing)} "
                     "(python -m benchmarks.bench writes full-size random weights there)")
    if args.dev_data is not None and not args.dev_data.is_dir():
        parser.error(f"--dev-data {args.dev_data}: not a folder")
    if args.dev_data is None:
        print("no --dev-data or GANORIGIN_DEV_DATA: timing synthetic noise images")
    images = [load_image(p) for p in _images(args.dev_data, args.images, DEFAULT_CACHE)]
    print(f"{torch.get_num_threads()} threads, {cpu_model_name()}, bf16 matrix units: {cpu_has_bf16_matrix_units()}")

    crops = [UFD_PREPROCESS(im)[None] for im in images]
    exact = load_detector(args.weights_dir / CLIP_FILE, args.weights_dir / UFD_HEAD_FILE)
    reference = _logits(exact, crops)
    packed = fast_detector(exact, CPU, "bf16")
    clip_variants = {
        "CLIP fp32 (the original)": (exact, False),
        "CLIP fp32 weights under bf16 autocast": (exact, True),
        "CLIP packed bf16 (ours)": (packed, False),
    }
    for name, (model, autocast) in clip_variants.items():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            seconds = _median_seconds(lambda: model(crops[0]), args.repeats)
            delta = np.abs(_logits(model, crops) - reference).max()
        print(f"{name:45s} {seconds * 1e3:7.1f} ms   max |delta logit| {delta:.4f}")

    batch = torch.stack([E4E_PREPROCESS(im) for im in images])
    encoder = load_encoder(args.weights_dir / E4E_FILE)
    with torch.inference_mode():
        codes = encoder(batch)
    folded = replace_modules(encoder, fold_encoder_batchnorms(encoder))
    ours = fast_encoder(encoder, CPU, "bf16")
    last = batch.contiguous(memory_format=torch.channels_last)
    e4e_variants = {  # (model, input, images per forward, bf16 autocast)
        "e4e fp32 (the original)": (encoder, batch, 1, False),
        "e4e folded, channels_last, bf16 autocast": (folded, last, 1, True),
        "e4e packed bf16 (ours), 1 image": (ours, batch, 1, False),
        "e4e packed bf16 (ours), 2 images per forward": (ours, batch, 2, False),
    }
    for name, (model, x, step, autocast) in e4e_variants.items():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.inference_mode():
            seconds = _median_seconds(lambda: model(x[:step]), args.repeats) / step
            out = torch.cat([model(x[i : i + step]) for i in range(0, len(x), step)]).float()
        error = float((out - codes).norm() / codes.norm())
        print(f"{name:45s} {seconds * 1e3:7.1f} ms   codes relative error {error:.4f}")

    workers = ModelWorkers(torch.get_num_threads())
    one_after_other = _median_seconds(lambda: (_run(packed, crops[0]), _run(ours, batch[:1])), args.repeats)

    def side_by_side_once():
        detection = workers.submit("detector", lambda: _run(packed, crops[0]))
        workers.submit("encoder", lambda: _run(ours, batch[:1])).result()
        detection.result()

    side_by_side = _median_seconds(side_by_side_once, args.repeats)
    print(f"{'CLIP then e4e, all threads':45s} {one_after_other * 1e3:7.1f} ms")
    print(f"{'CLIP and e4e side by side, half each':45s} {side_by_side * 1e3:7.1f} ms   ({side_by_side / one_after_other:.2f}x)")


def _run(model, x):
    """One forward on the calling thread (inference mode is per thread)."""
    with torch.inference_mode():
        return model(x)


def _logits(model, crops: list) -> np.ndarray:
    with torch.inference_mode():
        return np.array([float(model(x)) for x in crops])


def _median_seconds(fn, repeats: int) -> float:
    with torch.inference_mode():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return float(np.median(times))


if __name__ == "__main__":
    main()
