"""Benchmark: how long reading an image's provenance takes, per image and per stage.

    python -m benchmarks.provenance [--images-dir DIR] [--out provenance-bench.json]

Times ``read_provenance(path)`` on every image of ``--images-dir`` (default ``GANORIGIN_DEV_DATA``,
else ``../shared/data/dev``) and on a 20 MP JPEG (5472 x 3648, quality 90) made here, and splits
it into stages: reading the file, the metadata (container walk, XMP / EXIF, generator settings),
the C2PA check, decoding through the gate, and the watermark read. ``predict`` decodes the image
anyway and hands the decoded image on, so what provenance adds to a verdict is every stage but
the decode. Also reports the highest watermark bit agreement among the (unmarked) images: the
margin below the "found" thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ganorigin.images import load_image, read_image_bytes
from ganorigin.provenance import read_provenance
from ganorigin.provenance.containers import read_container
from ganorigin.provenance.credentials import read_content_credentials
from ganorigin.provenance.generators import read_generator_settings
from ganorigin.provenance.metadata import read_fields, read_metadata, texts_of
from ganorigin.provenance.watermarks import FOUND_AT, read_watermarks
from ganorigin.training import find_images

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("read", "metadata", "c2pa", "decode", "watermark")


def time_stages(path: Path) -> tuple[dict, object]:
    """Seconds per stage of one image (the stages of ``read_provenance``), and the watermark reading."""
    seconds, t = {}, time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[stage], t = now - t, now

    data = read_image_bytes(path)
    lap("read")
    container = read_container(data)
    fields = read_fields(container)
    read_metadata(fields)
    read_generator_settings(texts_of(fields, container))
    lap("metadata")
    read_content_credentials(data, container.mime)
    lap("c2pa")
    decoded = load_image(data)
    lap("decode")
    marks = read_watermarks(decoded)
    lap("watermark")
    return seconds, marks


def summarise(paths: list) -> dict:
    totals, stages, agreement = [], {s: [] for s in STAGES}, {}
    for path in paths:
        start = time.perf_counter()
        read_provenance(path)
        totals.append(time.perf_counter() - start)
        seconds, marks = time_stages(path)
        for stage, value in seconds.items():
            stages[stage].append(value)
        for reading in marks.marks:
            if reading.agreement is not None:
                agreement[reading.name] = max(agreement.get(reading.name, 0.0), reading.agreement)
    added = [sum(stages[s][i] for s in STAGES if s != "decode") for i in range(len(paths))]
    return {
        "images": len(paths),
        "total_ms": {"p50": ms(totals, 0.5), "p95": ms(totals, 0.95)},
        "added_to_a_verdict_ms": {"p50": ms(added, 0.5), "p95": ms(added, 0.95)},
        "stages_ms_p50": {stage: ms(values, 0.5) for stage, values in stages.items()},
        "stages_ms_p95": {stage: ms(values, 0.95) for stage, values in stages.items()},
        "max_watermark_agreement": {name: round(a, 3) for name, a in agreement.items()},
    }


def ms(seconds: list, quantile: float) -> float:
    return round(1000 * float(np.quantile(seconds, quantile)), 1)


def twenty_megapixel_jpeg(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:3648, 0:5472].astype(np.float32)
    pixels = np.stack([x / 5472 * 200, y / 3648 * 200, (x + y) / 9120 * 200], axis=-1)
    pixels += rng.normal(0, 12, pixels.shape).astype(np.float32)
    path = folder / "20mp.jpg"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images-dir", type=Path,
                        default=Path(os.environ.get("GANORIGIN_DEV_DATA", ROOT.parent / "shared" / "data" / "dev")))
    parser.add_argument("--out", type=Path, default=Path("provenance-bench.json"))
    args = parser.parse_args()
    result = {"cpu": cpu_model(), "cores": os.cpu_count(), "found_at": FOUND_AT}
    if args.images_dir.is_dir():
        result["images_dir"] = summarise(find_images([args.images_dir]))
    with tempfile.TemporaryDirectory() as folder:
        big = twenty_megapixel_jpeg(Path(folder))
        summarise([big])  # warm-up: first-call costs are not the image's
        result["jpeg_20mp"] = summarise([big] * 5)
        result["jpeg_20mp"]["bytes"] = big.stat().st_size
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
