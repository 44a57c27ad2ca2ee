"""``predict``, ``extract`` and ``evaluate`` with ``--engine ray``: the same outputs as the local engine, computed on
a Ray cluster (:mod:`ganorigin.scale.batch`). The command-line parsing stays in :mod:`ganorigin.cli`."""

from __future__ import annotations

import posixpath
import sys
from pathlib import Path

from ..errors import DatasetError
from ..hub import WeightSources
from ..training import IMAGE_EXTENSIONS, labelled_images
from ..video import VIDEO_EXTENSIONS
from .batch import ActorPlan, RaySession, run_predict
from .inputs import list_inputs
from .outputs import ResultSink, read_rows


def predict(args, sources: WeightSources, thresholds: dict) -> int:
    """Rows for every input not already in ``--out``; exit status 1 when some could not be read.
    ``thresholds``: ``threshold`` (UFD's) and ``commfor_threshold``, as keyword arguments."""
    names = list_inputs(args.paths)
    if not names:
        raise DatasetError(f"no images found in {', '.join(args.paths)} "
                           f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}).")
    videos = [name for name in names if posixpath.splitext(name)[1].lower() in VIDEO_EXTENSIONS]
    if videos:
        raise DatasetError(f"--engine ray analyses images; videos run on the local engine (without --engine ray): "
                           f"{', '.join(videos[:3])}{' …' if len(videos) > 3 else ''}.")
    sink = ResultSink(args.out, args.format)
    try:
        if set(names) - sink.done:  # no Ray to start for a finished job
            with RaySession(args.address):
                _progress(args.progress)
                run_predict(names, sink, sources, **thresholds, device=args.device, align=args.align,
                            batch_size=args.batch_size, plan=ActorPlan.for_cluster(args.actors, args.cpus_per_actor))
    finally:
        sink.close()
    skipped, failed_before = len(sink.done & set(names)), len(sink.done_failed & set(names))
    print(f"{sink.written - sink.failed} analysed, {sink.failed} could not be read, {skipped} already in the output"
          + (f" ({failed_before} of them could not be read)" if failed_before else "") + f", {len(names)} in all.",
          file=sys.stderr)
    return 1 if sink.failed or failed_before else 0  # as the run that wrote those rows


def evaluate(args, sources: WeightSources, thresholds: dict):
    """The local ``evaluate`` report from rows computed on Ray; the rows are kept (and resumed) in
    ``OUT/predictions.parquet``."""
    from ..hub import resolve
    from ..pipeline import load_attributor
    from ..training.evaluate import evaluation_report

    items = labelled_images(args.data_dir)
    rows_dir = Path(args.out) / "predictions.parquet"
    sink = ResultSink(rows_dir, "parquet")
    with RaySession(args.address):
        _progress(args.progress)
        run_predict([str(path) for _, path in items], sink, sources, **thresholds, device=args.device,
                    align=args.align, batch_size=args.batch_size,
                    plan=ActorPlan.for_cluster(args.actors, args.cpus_per_actor))
    by_path = {row["path"]: row for row in read_rows(rows_dir, "parquet")}
    attributor, _ = load_attributor(resolve(sources))
    return evaluation_report(items, [by_path[str(path)] for _, path in items], attributor, thresholds["threshold"],
                             args.data_dir, args.out)


def extract(args, sources: WeightSources):
    """The local ``extract`` shards, encoded on Ray; returns the local engine's summary."""
    from ..training.features import check_extract_settings
    from .extract import run_extract

    check_extract_settings(args.augment, args.batch_size, args.shard_size, args.limit)
    with RaySession(args.address):
        _progress(args.progress)
        return run_extract(args.data_dir, args.out, sources, augment=args.augment, seed=args.seed,
                           batch_size=args.batch_size, shard_size=args.shard_size, limit=args.limit,
                           align=args.align, prune=args.prune, device=args.device,
                           plan=ActorPlan.for_cluster(args.actors, args.cpus_per_actor))


def _progress(show: bool) -> None:
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = show
