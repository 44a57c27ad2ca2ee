"""How far int8 CLIP moves UFD's P(fake) from fp32: with its first N blocks kept exact, in each of
this CPU's ways of running attention's projections (``ganorigin.accel.attention_paths``).

    python scripts/int8_variants.py --weights-dir DIR [--images-dir ../shared/data/dev] [--images 8]
                                    [--exact 0,1,2]

Prints, for each variant, |delta P(fake)| on the probe image (what decides at first start) and the max
and mean on the images. Run it with ``GANORIGIN_CPU_ISA`` / ``ONEDNN_MAX_CPU_ISA`` set to see another CPU
class (``avx2``: q/k/v in int8, then exact). The UFD head file's digest is not checked: random test weights work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ganorigin.accel import convert, packed  # noqa: E402
from ganorigin.accel.precision import cpu_class  # noqa: E402
from ganorigin.accel.probe import probe_images  # noqa: E402
from ganorigin.factory import detector_scores, load_detector  # noqa: E402
from ganorigin.testing import CLIP_FILE, UFD_HEAD_FILE  # noqa: E402
from ganorigin.training import find_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, required=True)
    parser.add_argument("--images-dir", type=Path, default=Path("../shared/data/dev"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--exact", default="0,1,2", help="comma list of how many first blocks to keep exact")
    args = parser.parse_args()
    detector = load_detector(args.weights_dir / CLIP_FILE, args.weights_dir / UFD_HEAD_FILE).eval()
    paths = find_images([args.images_dir])
    paths = paths[:: max(1, len(paths) // args.images)][: args.images]
    images = probe_images() + [Image.open(path).convert("RGB") for path in paths]
    reference = detector_scores(detector, images)
    print(f"CPU class {cpu_class()}; {len(paths)} images from {args.images_dir}")
    for attention in packed.attention_paths("int8"):
        for exact in (int(n) for n in args.exact.split(",")):
            convert.CLIP_INT8_EXACT_BLOCKS = exact
            fast = convert.fast_detector(detector, torch.device("cpu"), "int8", attention)
            delta = np.abs(detector_scores(fast, images) - reference)
            print(f"attention {attention}, first {exact} block(s) exact: probe image {delta[0]:.4f}, "
                  f"images max {delta[1:].max():.4f}, mean {delta[1:].mean():.4f}")


if __name__ == "__main__":
    main()
