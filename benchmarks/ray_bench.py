"""Images per second of ``predict``: the local engine against Ray Data with 1 and 2 model actors.

    python -m benchmarks.ray_bench --images-dir DIR [--images 16] [--size full|tiny] [--weights-dir DIR]
                                   [--out ray-bench.json]

Random weights in the real formats (``--size full``: the real architectures, the default; ``tiny``:
small stand-ins, which measure Ray's overhead, not the models) unless ``--weights-dir`` names real
ones. Every run scores the same images (``--images-dir`` or ``GANORIGIN_DEV_DATA``). A run's
*steady* rate counts the images after its first batch (model loading and Ray's start excluded);
Ray's per-image overhead is its 1-actor steady time per image minus the local one. The CPU is named
from /proc/cpuinfo. A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import cpu_model
from ganorigin import GANOrigin, WeightSources
from ganorigin.result import DEFAULT_THRESHOLD
from ganorigin.scale.batch import ActorPlan, RaySession, run_predict
from ganorigin.scale.outputs import ResultSink
from ganorigin.testing import write_test_weights
from ganorigin.training import find_images, predict_paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-dir", type=Path, default=os.environ.get("GANORIGIN_DEV_DATA"), required=False)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("ray-bench.json"))
    args = parser.parse_args()
    if args.images_dir is None:
        parser.error("--images-dir (or GANORIGIN_DEV_DATA) is required")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    names = [str(p) for p in find_images([args.images_dir])][: args.images]
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        sources = _sources(args, Path(tmp))
        results = {"cpu": cpu_model(), "cores": os.cpu_count(), "images": len(names),
                   "weights": str(args.weights_dir) if args.weights_dir else f"random {args.size}",
                   "batch_size": args.batch_size, "runs": {}}
        results["runs"]["local"] = _local(names, sources, args.batch_size)
        cores = os.cpu_count() or 1
        with RaySession(num_cpus=cores + 1):  # one more logical CPU for the decode stage beside the actors
            for actors in (1, 2):
                plan = ActorPlan(actors=actors, cpus=max(1, cores // actors))
                results["runs"][f"ray-{actors}"] = _ray(names, sources, args.batch_size, plan, Path(tmp) / f"ray{actors}")
    local, ray1 = results["runs"]["local"], results["runs"]["ray-1"]
    results["ray_overhead_ms_per_image"] = round(1000 * (1 / ray1["steady_images_per_s"] - 1 / local["steady_images_per_s"]), 1)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _sources(args, tmp: Path) -> WeightSources:
    if args.weights_dir:
        return WeightSources.from_env(weights_dir=str(args.weights_dir), local_files_only=True)
    folder = write_test_weights(tmp / "weights", size=args.size)
    from ganorigin.hub.integrity import sha256_file

    return WeightSources(weights_dir=str(folder), ufd_head_sha256=sha256_file(folder / "fc_weights.pth"),
                         local_files_only=True)


def _local(names: list, sources: WeightSources, batch_size: int) -> dict:
    start = time.perf_counter()
    model = GANOrigin.from_pretrained(sources)
    loaded = time.perf_counter()
    first = predict_paths(model, names[:batch_size], batch_size=batch_size, progress=False)
    warm = time.perf_counter()
    rest = predict_paths(model, names[batch_size:], batch_size=batch_size, progress=False)
    end = time.perf_counter()
    return _rates(len(first) + len(rest), len(rest), start, warm, end, load_s=loaded - start)


def _ray(names: list, sources: WeightSources, batch_size: int, plan: ActorPlan, out: Path) -> dict:
    arrivals: list = []
    sink = ResultSink(out, "parquet")
    start = time.perf_counter()
    run_predict(names, sink, sources, threshold=DEFAULT_THRESHOLD, batch_size=batch_size, plan=plan,
                on_rows=lambda table: arrivals.append((time.perf_counter(), table.num_rows)))
    end = time.perf_counter()
    rates = _rates(sum(n for _, n in arrivals), sum(n for _, n in arrivals[1:]), start, arrivals[0][0], end)
    return {"actors": plan.actors, "cpus_per_actor": plan.cpus, **rates}


def _rates(total: int, steady: int, start: float, warm: float, end: float, **extra) -> dict:
    return {"images_per_s": round(total / (end - start), 3), "steady_images_per_s": round(steady / (end - warm), 3),
            "wall_s": round(end - start, 1), **{k: round(v, 1) for k, v in extra.items()}}


if __name__ == "__main__":
    main()
