"""Benchmark: what skipping attribution (e4e) for an image called real would save, on a named CPU.

    python -m benchmarks.attribution_skip [--weights-dir DIR] [--images-dir DIR] [--images 12] [--passes 2]
                                          [--precision auto] [--cache-dir DIR] [--out FILE] [--quick]

Issue 15 asks to measure the option of not encoding images far below the threshold (the original ran
e4e only for images it called fake). One process holds four pipelines over the same models: the
original-style fp32 baseline and GANOrigin (``--precision``), each as it is and with e4e replaced by
a module that returns no codes at once, which times an analysis whose attribution was skipped:
decoding, provenance, the degradation gate and the detectors, nothing of e4e. They take turns in
whole passes over the same images (the order reversed each pass; ``benchmarks.second_detector``'s
timing); an image's time is its median over the passes; each p50 is given against the baseline's. ``... without e4e`` of the baseline is what the
original app spent on an image it called real.

Without ``--weights-dir`` it writes full-size random weights in the real formats once into
``--cache-dir`` (``--quick``: tiny ones and two images, a smoke test, not a measurement). The result
(JSON, ``--out``) names the CPU as ``benchmarks.bench`` does (emulated or native).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "baseline"


class NoCodes(nn.Module):
    """An encoder that computes nothing: ``features`` zeros per image, at once."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.device_marker = nn.Parameter(torch.zeros(0), requires_grad=False)  # where the pipeline looks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.features)


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    from benchmarks.bench import DEFAULT_CACHE

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--images-dir", type=Path, default=None)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=Path("attribution-skip.json"))
    parser.add_argument("--quick", action="store_true", help="tiny weights, two images: a smoke test")
    parser.add_argument("--ufd-head", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.passes = 2, 1
    return args


def without_e4e(model):
    """The same pipeline (models, workers, settings) with an encoder that computes nothing."""
    from ganorigin import GANOrigin

    return GANOrigin(model.detector, NoCodes(model.attributor.n_features), model.attributor, threshold=model.threshold,
                     device=model.device, align=False, commfor=model.commfor, policy=model.policy)


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench import _images, _machine, _weights, emulation_settings, load_baseline, load_ours
    from benchmarks.second_detector import time_pipelines

    folder, weights_note = _weights(args)
    images = _images(args.images_dir, args.images, args.cache_dir)
    baseline, ours = load_baseline(folder), load_ours(folder, args.precision)
    pipelines = {BASELINE: baseline, f"{BASELINE} without e4e": without_e4e(baseline),
                 f"ours-{args.precision}": ours, f"ours-{args.precision} without e4e": without_e4e(ours)}
    p50 = {name: entry["p50_ms"] for name, entry in time_pipelines(pipelines, images, args.passes).items()}
    result = {
        "machine": _machine(emulation_settings()), "weights": weights_note, "images": len(images),
        "passes": args.passes, "precisions": ours.precisions,
        "p50_ms": p50, "ratio_p50": {name: value / p50[BASELINE] for name, value in p50.items()},
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(format_result(result))
    print(f"Wrote {args.out}")
    return 0


def format_result(result: dict) -> str:
    from benchmarks.bench import describe_machine

    lines = [describe_machine(result["machine"]), result["weights"],
             f"ours: {result['precisions']}; {result['images']} images x {result['passes']} passes",
             f"{'pipeline':36s} {'p50 ms':>8s} {'x baseline':>10s}"]
    for name, value in result["p50_ms"].items():
        lines.append(f"{name:36s} {value:8.0f} {result['ratio_p50'][name]:10.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
