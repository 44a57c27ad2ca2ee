"""``python -m benchmarks.video``: a 30 s 720p clip at 1 frame/s through ``GANOrigin.predict_video``.

Encodes a synthetic H.264 clip (a dev face drifting across a 1280x720 frame, 30 frames/s), then
times, in this one process: decoding and sampling alone (the gate, every frame decoded, one a
second converted), and the whole analysis (the first frame + one a second through ``predict_batch``,
alignment on when dlib is installed). Prints frames/s, the clip's time and the peak memory it added,
with the CPU named.

Without ``--weights-dir`` it uses the benchmark's full-size RANDOM weights in the real formats
(written once, as ``benchmarks.bench`` does): the timings hold for the real architectures; the answers
mean nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Optional

import av
from PIL import Image

from . import peak_rss_bytes
from .bench import DEFAULT_CACHE, ROOT

DEV_FACE = ROOT.parent / "shared" / "data" / "dev" / "stylegan2"


def make_clip(seconds: int, width: int, height: int, rate: int = 30) -> bytes:
    """An H.264 MP4: a face (a dev image, else a grey square) sliding across the frame."""
    faces = sorted(DEV_FACE.glob("*.png"))
    face = Image.open(faces[0]).convert("RGB") if faces else Image.new("RGB", (512, 512), (128, 110, 100))
    face = face.resize((height // 2, height // 2))
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * rate):
            canvas = Image.new("RGB", (width, height), (40, 60, 80))
            canvas.paste(face, (int((width - face.width) * i / (seconds * rate)), height // 4))
            container.mux(stream.encode(av.VideoFrame.from_image(canvas)))
        container.mux(stream.encode())
    return buffer.getvalue()


def _weights(weights_dir: Optional[Path]) -> tuple[Path, str]:
    if weights_dir:
        return weights_dir, f"weights from {weights_dir}"
    folder = DEFAULT_CACHE / "full"
    if not (folder / "e4e_ffhq_encode.pt").is_file():
        from ganorigin.testing import write_test_weights

        print(f"Writing full-size RANDOM weights to {folder} (once) ...", flush=True)
        write_test_weights(folder.with_name("full.part"), size="full")
        os.replace(folder.with_name("full.part"), folder)
    return folder, "full-size RANDOM weights in the real formats (timings real, answers meaningless)"


def _peak_mb() -> float:
    return peak_rss_bytes() / 2**20


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.video", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--fps", type=float, default=1.0, help="frames analysed per second of video")
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args(argv)

    from ganorigin import GANOrigin, WeightSources
    from ganorigin.accel.precision import cpu_model_name
    from ganorigin.video import sample_frames

    width, height = map(int, args.size.lower().split("x"))
    clip = make_clip(args.seconds, width, height)
    weights_dir, weights_note = _weights(args.weights_dir)
    head = hashlib.sha256((weights_dir / "fc_weights.pth").read_bytes()).hexdigest()
    model = GANOrigin.from_pretrained(WeightSources(weights_dir=str(weights_dir), ufd_head_sha256=head,
                                                    local_files_only=True), device="cpu")
    model.predict_video(make_clip(2, 320, 240), fps=args.fps)  # warm-up: the first forward passes
    before = _peak_mb()

    started = time.perf_counter()
    _, frames = sample_frames(clip, fps=args.fps)
    sampled = sum(1 for _ in frames)
    decode_s = time.perf_counter() - started

    started = time.perf_counter()
    result = model.predict_video(clip, fps=args.fps)
    total_s = time.perf_counter() - started

    numbers = {
        "cpu": cpu_model_name(), "cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
        "clip": f"{args.seconds} s {width}x{height} H.264, 30 frames/s, {len(clip) / 2**20:.1f} MiB",
        "weights": weights_note, "precision": model.precision, "align": model.align,
        "frames_analysed": len(result.frames), "decode_and_sample_s": round(decode_s, 2),
        "frames_sampled": sampled, "clip_s": round(total_s, 2),
        "frames_per_s": round(len(result.frames) / total_s, 3),
        "peak_rss_added_mb": round(_peak_mb() - before, 1), "peak_rss_mb": round(_peak_mb(), 1),
    }
    print(json.dumps(numbers, indent=2))
    if args.out:
        args.out.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
