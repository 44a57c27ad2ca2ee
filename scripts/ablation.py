"""What each part of the CPU fast path buys: one model forward at a time, per variant.

    python scripts/ablation.py [--weights-dir DIR] [--images 8] [--repeats 5]

Uses the weights the benchmark wrote (``~/.cache/ganorigin-bench/full``: full-size random weights
in the real formats) unless given others, and dev images from ``../shared/data/dev``. For each
variant it prints the median time per image and the agreement with exact fp32: max |delta logit|
for CLIP, relative error of the W+ codes for e4e. Not part of CI; the README's Performance
section quotes its output.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ganorigin import fast  # noqa: E402
from ganorigin.bench import DEFAULT_CACHE, DEV_IMAGES, _images  # noqa: E402
from ganorigin.detector import UFDDetector, ufd_transform  # noqa: E402
from ganorigin.encoder import E4EEncoder, e4e_transform  # noqa: E402
from ganorigin.images import load_image  # noqa: E402
from ganorigin.parallel import ModelWorkers  # noqa: E402
from ganorigin.weights import CLIP_FILES, E4E_FILE, UFD_HEAD_FILE  # noqa: E402

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, default=DEFAULT_CACHE / "full")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    images = [load_image(p) for p in _images(DEV_IMAGES, args.images, DEFAULT_CACHE)]
    clip_path = next(args.weights_dir / f for f in CLIP_FILES if (args.weights_dir / f).is_file())
    print(f"{torch.get_num_threads()} threads, {fast.cpu_model_name()}, bf16 matrix units: {fast.cpu_has_bf16_matrix_units()}")

    crops = [ufd_transform(im)[None] for im in images]
    exact = UFDDetector.from_files(clip_path, args.weights_dir / UFD_HEAD_FILE)
    reference = _logits(exact, crops)
    clip_variants = {
        "CLIP fp32 (the original)": (exact, torch.autocast("cpu", enabled=False)),
        "CLIP fp32 weights under bf16 autocast": (exact, torch.autocast("cpu", dtype=torch.bfloat16)),
    }
    packed = copy.deepcopy(exact)
    fast.prepare_detector(packed, CPU, "bf16")
    clip_variants["CLIP packed bf16 (ours)"] = (packed, torch.autocast("cpu", enabled=False))
    for name, (model, context) in clip_variants.items():
        with context:
            seconds = _median_seconds(lambda: model(crops[0]), args.repeats)
            delta = np.abs(_logits(model, crops) - reference).max()
        print(f"{name:45s} {seconds * 1e3:7.1f} ms   max |delta logit| {delta:.4f}")

    batch = torch.stack([e4e_transform(im) for im in images])
    encoder = E4EEncoder.from_checkpoint(args.weights_dir / E4E_FILE)
    with torch.inference_mode():
        codes = encoder(batch)
    folded = copy.deepcopy(encoder)
    fast.fold_encoder_batchnorms(folded)
    folded.to(memory_format=torch.channels_last)
    ours = E4EEncoder.from_checkpoint(args.weights_dir / E4E_FILE)
    fast.prepare_encoder(ours, CPU, "bf16")
    last = batch.to(memory_format=torch.channels_last)
    e4e_variants = {
        "e4e fp32 (the original)": (encoder, batch, 1, torch.autocast("cpu", enabled=False)),
        "e4e folded, channels_last, bf16 autocast": (folded, last, 1, torch.autocast("cpu", dtype=torch.bfloat16)),
        "e4e packed bf16 (ours), 1 image": (ours, last, 1, torch.autocast("cpu", dtype=torch.bfloat16)),
        "e4e packed bf16 (ours), 2 images per forward": (ours, last, 2, torch.autocast("cpu", dtype=torch.bfloat16)),
    }
    for name, (model, x, step, context) in e4e_variants.items():
        with context, torch.inference_mode():
            seconds = _median_seconds(lambda: model(x[:step]), args.repeats) / step
            out = torch.cat([model(x[i : i + step]) for i in range(0, len(x), step)]).float()
        error = float((out - codes).norm() / codes.norm())
        print(f"{name:45s} {seconds * 1e3:7.1f} ms   codes relative error {error:.4f}")

    workers = ModelWorkers(torch.get_num_threads())
    one_after_other = _median_seconds(lambda: (_clip(packed, crops[0]), _e4e(ours, last[:1])), args.repeats)
    def side_by_side_once():
        detection = workers.submit("detector", lambda: _clip(packed, crops[0]))
        workers.submit("encoder", lambda: _e4e(ours, last[:1])).result()
        detection.result()

    side_by_side = _median_seconds(side_by_side_once, args.repeats)
    print(f"{'CLIP then e4e, all threads':45s} {one_after_other * 1e3:7.1f} ms")
    print(f"{'CLIP and e4e side by side, half each':45s} {side_by_side * 1e3:7.1f} ms   ({side_by_side / one_after_other:.2f}x)")


def _clip(model, x):
    with torch.inference_mode():
        return model(x)


def _e4e(model, x):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
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
