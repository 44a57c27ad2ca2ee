"""``ganorigin`` / ``python -m ganorigin``: predict, provenance, extract, train, evaluate, explain, robustness,
feedback export and demo-weights.

Every command that loads weights takes the same flags as ``GANOrigin.from_pretrained``:
``--weights`` (a folder or ``org/repo[@revision]``), ``--offline``, ``--cache-dir``, ``--device``.
Expected problems (missing weights, bad folders, no images) print one message and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from .errors import GANOriginError

EXIT_ERROR = 2
TEST_WEIGHTS_WARNING = ("these are random test weights from `ganorigin demo-weights`: every answer is meaningless "
                        "(unset GANORIGIN_WEIGHTS_DIR, or pass other --weights, for the real ones).")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_CommandFormatter(args.command))
    handler.addFilter(lambda record: not getattr(record, "test_weights", False))  # said once, by _weights
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    try:
        if getattr(args, "device", None):
            from .factory import as_device

            as_device(args.device)  # a device this machine lacks is said first, before weights load or Ray starts
        _check_out(args)
        return args.run(args)
    except GANOriginError as e:
        print(f"ganorigin {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        if e.filename is None:  # not about a file the command was given or writes: a fault, with its traceback
            raise
        print(f"ganorigin {args.command}: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"ganorigin {args.command}: interrupted; {_left_behind(args)}", file=sys.stderr)
        return 130


class _CommandFormatter(logging.Formatter):
    """Log records as the command's own messages: ``ganorigin predict: warning: ...``."""

    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        return f"ganorigin {self.command}: {record.levelname.lower()}: {record.getMessage()}"


def _left_behind(args) -> str:
    """What an interrupted command leaves, in words."""
    if args.command == "extract" or (getattr(args, "engine", None) == "ray" and args.command in ("predict", "evaluate")):
        return "what was finished is kept: run the same command again to do only the rest."
    if args.command in ("predict", "provenance") and args.out:
        return f"the rows written so far are in {args.out}."
    return "its output is missing or incomplete."


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="ganorigin", description="Detect GAN-generated faces and name the GAN.")
    parser.add_argument("--version", action="version", version=f"ganorigin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_predict(commands)
    _add_provenance(commands)
    _add_extract(commands)
    _add_train(commands)
    _add_explain(commands)
    _add_evaluate(commands)
    _add_robustness(commands)
    _add_feedback(commands)
    _add_demo_weights(commands)
    return parser


def _add_predict(commands) -> None:
    p = commands.add_parser("predict", help="analyse images and videos, one output row per image or video",
                            description="Analyse image files, folders (recursive) or .txt lists of paths; video "
                            "files (MP4, M4V, MOV, 3GP, WebM, MKV, AVI) among them give one row per clip.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image or video files, folders, or .txt lists of paths")
    p.add_argument("--frames", action="store_true", help="one row per sampled video frame instead of per clip")
    p.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl",
                   help="output format (default: jsonl; parquet: a folder of part files, --engine ray)")
    p.add_argument("--out", type=Path, help="output file (default: stdout)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    _progress_flag(p)
    _model_flags(p)
    _engine_flags(p)
    p.set_defaults(run=_predict)


def _add_provenance(commands) -> None:
    p = commands.add_parser("provenance", help="read where images say they came from (no weights needed)",
                            description="Read C2PA Content Credentials, IPTC / XMP / EXIF source fields, generator "
                            "settings and invisible Stable Diffusion watermarks from image files, folders (recursive) "
                            "or .txt lists of paths; one row per file. JSON lines also carry every detail.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders, or .txt lists of paths")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="output format (default: jsonl)")
    p.add_argument("--out", type=Path, help="output file (default: stdout)")
    p.add_argument("--prompt", action="store_true", help="also report generator prompts (default: generator and model)")
    _progress_flag(p)
    p.set_defaults(run=_provenance)


def _add_extract(commands) -> None:
    p = commands.add_parser("extract", help="encode DATA_DIR/<class>/* into e4e feature shards (resumable)",
                            description="Encode DATA_DIR/<class>/<images> with e4e into resumable .npz shards. "
                            "Re-running with the same --out skips images already encoded.")
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="one folder of images per GAN: DATA_DIR/<class>/")
    p.add_argument("--out", type=Path, required=True, metavar="LATENTS", help="folder of the feature shards")
    p.add_argument("--augment", type=int, default=0, metavar="K",
                   help="also encode K copies per image resized to a random side in [64, 1024] (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation (default: 0)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    p.add_argument("--shard-size", type=int, default=512, help="images per shard file (default: 512)")
    p.add_argument("--limit", type=int, help="stop after about N newly encoded images, each augmented copy counted "
                   "(status 0; run again to go on)")
    aligned = p.add_mutually_exclusive_group()
    aligned.add_argument("--align", dest="align", action="store_true", default=None,
                         help="FFHQ-align the largest face first, as predict does (default: on when dlib is installed)")
    aligned.add_argument("--no-align", dest="align", action="store_false",
                         help="encode the images as they are (for models used with --no-align)")
    p.add_argument("--prune", action="store_true",
                   help="remove the latents of images no longer in DATA_DIR (default: keep them, with a warning)")
    _progress_flag(p)
    _weight_flags(p)
    _engine_flags(p)
    p.set_defaults(run=_extract)


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="fit the scaler + calibrated linear SVM on extracted features",
                            description="Fit StandardScaler + linear SVM (sigmoid-calibrated) on LATENTS, report "
                            "held-out metrics, learn the open-set threshold, save a safe (non-pickle) model.")
    p.add_argument("latents", type=Path, metavar="LATENTS", help="the folder `extract` wrote")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR", help="folder of the trained model")
    p.add_argument("--test-size", type=float, default=0.2, help="held-out fraction (default: 0.2)")
    p.add_argument("--cv", type=int, metavar="K", help="K-fold cross-validation instead of one split")
    p.add_argument("--C", type=float, default=1.0, help="SVM regularisation (default: 1.0)")
    p.add_argument("--coverage", type=float, default=0.95,
                   help="share of held-out known-GAN samples the open-set rule keeps (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the folds and the SVM (default: 0)")
    p.add_argument("--export-joblib", action="store_true",
                   help="also write the original gan_attribution_model.pkl, gan_scaler.pkl, gan_label_encoder.pkl")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload MODEL_DIR to this Hub model repo (needs a token)")
    p.set_defaults(run=_train)


def _add_explain(commands) -> None:
    p = commands.add_parser("explain", help="heat map and frequency view of one image, as PNG files",
                            description="Write IMAGE's detector heat map (occlusion on a GPU, input x gradient on a "
                            "CPU, or --method) and its frequency view into --out.")
    p.add_argument("image", type=Path, metavar="IMAGE", help="one image file")
    p.add_argument("--out", type=Path, default=Path("explain"), help="output folder (default: ./explain)")
    p.add_argument("--method", choices=("auto", "gradient", "occlusion"), default="auto",
                   help="heat map method (default auto: occlusion on a GPU, input x gradient on a CPU)")
    _weight_flags(p)
    p.set_defaults(run=_explain)


def _add_evaluate(commands) -> None:
    p = commands.add_parser("evaluate", help="detection and attribution metrics on labelled folders",
                            description="DATA_DIR/real, DATA_DIR/<gan label> for known GANs, any other folder = "
                            "unknown generator. Writes report.json, predictions.csv, roc.png and "
                            "attribution_confusion.png.")
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="DATA_DIR/real and one folder per generator")
    p.add_argument("--out", type=Path, default=Path("evaluation"), help="output folder (default: ./evaluation)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    _progress_flag(p)
    _model_flags(p)
    _engine_flags(p)
    p.set_defaults(run=_evaluate)


def _add_robustness(commands) -> None:
    p = commands.add_parser("robustness", help="how scores and verdicts move under re-compression and resizing",
                            description="Re-score every image under DIR after JPEG q90/q75/q60/q40, resizing to "
                            "x0.75/x0.5 and to <= 768/512 px, a PNG round trip, and the web (<= 768 px, JPEG 60) and "
                            "hard (<= 512 px, JPEG 40) protocols. Writes robustness.csv (one row per image and "
                            "degradation), robustness_summary.csv and robustness.png into --out.")
    p.add_argument("data_dir", type=Path, metavar="DIR", help="a folder of images (recursive)")
    p.add_argument("--out", type=Path, default=Path("robustness"), help="output folder (default: ./robustness)")
    _progress_flag(p)
    _model_flags(p)
    p.set_defaults(run=_robustness)


def _add_feedback(commands) -> None:
    p = commands.add_parser("feedback", help="reports that a verdict was wrong (from the web app)",
                            description="Work with the reports people sent with \"This verdict is wrong\".")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="write the reported images as a labelled folder for `evaluate`",
                                description="Write every reported image that was kept (with consent) into "
                                "OUT/<class>/: real/, one folder per GAN label, other-generator/. `ganorigin evaluate "
                                "OUT` then measures the model on the reported mistakes.")
    export.add_argument("out", type=Path, metavar="OUT", help="the folder to write (made if missing)")
    export.add_argument("--from", dest="source", type=Path, metavar="FOLDER",
                        help="the feedback folder (default: GANORIGIN_FEEDBACK_DIR, else feedback/ in the cache)")
    export.set_defaults(run=_feedback_export)


def _add_demo_weights(commands) -> None:
    p = commands.add_parser("demo-weights", help="write random test weights to try the app and CLI without the real ones",
                            description="Write a complete weights folder with random values (and a "
                            "TEST_WEIGHTS.json marker) into DIR, and print the commands that run the app and the "
                            "CLI on it. The answers are meaningless; the real weights download on first use.")
    p.add_argument("dir", type=Path, metavar="DIR", help="the folder to write (made if missing)")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny",
                   help="tiny: small stand-ins, seconds, ~30 MB (default); full: the real architectures, ~2.6 GB")
    p.add_argument("--seed", type=int, default=0, help="seed of the random values (default: 0)")
    p.set_defaults(run=_demo_weights)


def _weight_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("weights")
    g.add_argument("--weights", metavar="SOURCE", help="a weights folder or Hub repo 'org/name[@revision]' "
                   "(default: GANORIGIN_WEIGHTS_DIR / GANORIGIN_REPO_ID or the original repo)")
    g.add_argument("--offline", action="store_true", help="use only local and cached files")
    g.add_argument("--cache-dir", help="download cache (default: GANORIGIN_CACHE_DIR or the Hugging Face cache)")
    g.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda if available)")


def _progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def _engine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine", "--engine ray: a Ray Data job, resumable (see README, Scaling out)")
    g.add_argument("--engine", choices=("local", "ray"), default="local", help="where to run (default: local)")
    g.add_argument("--address", help="Ray cluster to join: 'auto' or ray://HOST:10001 (default: start a local one)")
    g.add_argument("--actors", type=int, help="model actors (default: one per GPU, else 1)")
    g.add_argument("--cpus-per-actor", type=float,
                   help="CPUs (and torch threads) per model actor (default: its share, less what decoding needs)")


def _model_flags(p: argparse.ArgumentParser) -> None:
    _weight_flags(p)
    g = p.add_argument_group("model")
    g.add_argument("--threshold", type=float, help="fake-probability threshold (default: 0.89, the original's)")
    g.add_argument("--commfor-threshold", type=float,
                   help="Community Forensics' (the any-generator detector's) threshold (default: 0.5, the authors')")
    g.add_argument("--no-align", dest="align", action="store_false", default=None,
                   help="do not FFHQ-align faces before attribution")


def _sources(args):
    from .hub import WeightSources

    _check_weights_folder(args.weights)
    sources = WeightSources.parse(args.weights)
    return replace(sources, local_files_only=args.offline or sources.local_files_only,
                   cache_dir=args.cache_dir or sources.cache_dir)


def _check_weights_folder(value: Optional[str]) -> None:
    """``--weights`` that names a folder (not a Hub id ``org/name``) must be an existing folder."""
    if value is None:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise _usage(f"--weights {value} is a file; pass the folder that holds the weight files, or a Hub repo "
                     "id 'org/name[@revision]'.")
    hub_id = value.partition("@")[0]
    if path.is_absolute() or value.startswith((".", "~")) or hub_id.count("/") != 1 or "\\" in value:
        raise _usage(f"--weights {value}: no such folder. Pass an existing weights folder, or a Hub repo id "
                     "'org/name[@revision]'.")


def _thresholds(args) -> dict:
    """The command's thresholds, as keyword arguments: ``threshold`` (UFD's) and ``commfor_threshold``."""
    from .pipeline import check_threshold
    from .result import DEFAULT_THRESHOLD
    from .verdict import COMMFOR_THRESHOLD

    thresholds = {}
    for name, default in (("threshold", DEFAULT_THRESHOLD), ("commfor_threshold", COMMFOR_THRESHOLD)):
        value = getattr(args, name, None)
        try:
            thresholds[name] = check_threshold(default if value is None else value)
        except ValueError as e:
            raise _usage(f"--{name.replace('_', '-')}: {e}") from e
    return thresholds


def _load_model(args):
    from .pipeline import GANOrigin

    return GANOrigin.from_pretrained(_weights(args), **_thresholds(args), device=args.device,
                                     align=getattr(args, "align", None))


def _weights(args):
    """The command's weight sources; says on stderr when they are random test weights (``demo-weights``)."""
    from .hub import holds_test_weights

    sources = _sources(args)
    if holds_test_weights(sources):
        print(f"ganorigin {args.command}: warning: {TEST_WEIGHTS_WARNING}", file=sys.stderr)
    return sources


def _ray_commands():
    """``ganorigin.scale.commands``; without Ray installed, a ConfigurationError that says how to get it."""
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in ("ray", "pyarrow")):
        from .errors import ConfigurationError

        raise ConfigurationError("--engine ray needs Ray, which is not installed: pip install 'ganorigin[ray]' "
                                 "(from a clone: pip install -e '.[ray]').")
    from .scale import commands

    return commands


def _usage(message: str) -> GANOriginError:
    from .errors import DatasetError

    return DatasetError(message)


EXPLAIN_VIDEO = "This file is a video, not an image: explain takes images (ganorigin predict analyses videos)."
PROVENANCE_VIDEO = ("This file is a video, not an image: provenance is read from images (ganorigin predict "
                    "analyses videos).")


def _is_video_file(path: Path) -> bool:
    """A video by its first bytes (an MP4 named .png is a video); by its name where it cannot be read, or is no
    regular file (a pipe would block)."""
    from .video import VIDEO_EXTENSIONS, is_video

    if not path.is_file():
        return path.suffix.lower() in VIDEO_EXTENSIONS
    try:
        with open(path, "rb") as f:
            return is_video(f.read(16))
    except OSError:
        return path.suffix.lower() in VIDEO_EXTENSIONS


def _predict(args) -> int:
    from .training import IMAGE_EXTENSIONS, RowWriter, find_images, predict_paths
    from .video import VIDEO_EXTENSIONS

    if args.batch_size < 1:
        raise _usage("--batch-size must be >= 1.")
    if args.engine == "ray":
        return _ray_commands().predict(args, _weights(args), _thresholds(args))
    if args.format == "parquet":
        raise _usage("--format parquet needs --engine ray.")
    paths = find_images(args.paths, IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)
    if not paths:
        raise _usage(f"no images or videos found in {', '.join(args.paths)} "
                     f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))}).")
    _warn_empty_folders(args, paths, "images or videos")
    videos = [path for path in paths if _is_video_file(path)]
    model = _load_model(args)
    stream = _output(args.out)
    try:
        writer = RowWriter(stream, args.format)
        rows = predict_paths(model, [path for path in paths if path not in videos], batch_size=args.batch_size,
                             progress=args.progress, on_row=writer.write)
        rows += _predict_videos(model, videos, args, writer)
    finally:
        if args.out:
            stream.close()
    failed = sum(row["error"] is not None for row in rows)
    if failed:
        print(f"ganorigin predict: {failed} of {len(rows)} files could not be analysed (see their 'error').",
              file=sys.stderr)
    return 1 if failed else 0


def _predict_videos(model, videos: list, args, writer) -> list[dict]:
    """One row per clip (``--frames``: per sampled frame); a clip that cannot be read gets its error row."""
    from .errors import InvalidVideoError
    from .video.rows import failed_video_row, video_rows

    rows, labels = [], list(model.attributor.labels)
    for path in videos:
        try:
            result = model.predict_video(path, threshold=args.threshold, batch_size=args.batch_size)
            new = video_rows(path, result, labels, frames=args.frames)
        except InvalidVideoError as e:
            new = [failed_video_row(path, labels, f"{path}: {e}")]
        for row in new:
            writer.write(row)
        rows += new
    return rows


def _provenance(args) -> int:
    from tqdm import tqdm

    from .errors import InvalidImageError
    from .provenance import read_provenance
    from .training import IMAGE_EXTENSIONS, RowWriter, find_images

    paths = find_images(args.paths)
    if not paths:
        raise _usage(f"no images found in {', '.join(args.paths)} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}).")
    _warn_empty_folders(args, paths, "images")
    stream = _output(args.out)
    writer, failed = RowWriter(stream, args.format), 0
    try:
        for path in tqdm(paths, desc="provenance", unit="img", disable=not args.progress):
            try:
                provenance, error = read_provenance(path, include_prompt=args.prompt), None
            except InvalidImageError as e:
                why = PROVENANCE_VIDEO if _is_video_file(path) else e
                provenance, error = None, f"{path}: {why}"  # as predict's rows: the error starts with the path
                failed += 1
            writer.write(_provenance_row(path, provenance, error, details=args.format == "jsonl"))
    finally:
        if args.out:
            stream.close()
    if failed:
        print(f"ganorigin {args.command}: {failed} of {len(paths)} files could not be read (see their 'error').",
              file=sys.stderr)
    return 1 if failed else 0


def _warn_empty_folders(args, found: list, what: str) -> None:
    """A folder named on the command line in which nothing was found is said, not passed over."""
    found = [path.resolve() for path in found]
    for entry in map(Path, args.paths):
        if entry.is_dir() and not any(path.is_relative_to(entry.resolve()) for path in found):
            print(f"ganorigin {args.command}: warning: no {what} in {entry}.", file=sys.stderr)


FOLDER_OUTPUTS = ("extract", "train", "explain", "evaluate", "robustness", "feedback")


def _check_out(args) -> None:
    """``--out`` of the kind the command writes: a folder (made if missing), or a file (rows)."""
    out = getattr(args, "out", None)
    if out is None or not Path(out).exists():
        return
    folder = args.command in FOLDER_OUTPUTS or getattr(args, "format", None) == "parquet"
    if folder and not Path(out).is_dir():
        raise _usage(f"--out {out} is a file; {args.command} writes a folder there (made if missing).")
    if not folder and Path(out).is_dir():
        raise _usage(f"--out {out} is a folder; {args.command} writes its rows to a file.")


def _output(path: Optional[Path]):
    """The rows' stream: ``path`` (its folders made, as every command makes its --out folder), else stdout."""
    if path is None:
        return sys.stdout
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", newline="", encoding="utf-8")


def _provenance_row(path, provenance, error: Optional[str], *, details: bool) -> dict:
    """``path``, strength, summary, one column per kind of evidence, ``error``; ``details``: everything."""
    from .provenance import SECTION_NAMES

    columns = provenance.to_row() if provenance else dict.fromkeys(("strength", "summary", *SECTION_NAMES))
    row = {"path": str(path), **columns, "error": error}
    if details:
        row["details"] = provenance.to_dict() if provenance else None
    return row


def _extract(args) -> int:
    from .factory import as_device, load_encoder
    from .hub import resolve_file
    from .training import extract_features
    from .training.features import check_extract_settings

    check_extract_settings(args.augment, args.batch_size, args.shard_size, args.limit)  # before the weights load
    _check_class_folders(args)
    sources = _weights(args)
    if args.engine == "ray":
        summary = _ray_commands().extract(args, sources)
    else:
        encoder = load_encoder(resolve_file("e4e.ffhq_encode", sources))
        if args.device:
            encoder = encoder.to(as_device(args.device))
        summary = extract_features(
            args.data_dir, args.out, encoder, augment=args.augment, seed=args.seed, batch_size=args.batch_size,
            shard_size=args.shard_size, limit=args.limit, align=args.align, prune=args.prune, progress=args.progress,
        )
    for path, error in dict(summary.failed).items():  # once per file, however many copies it was to give
        print(f"ganorigin extract: could not read {path}: {error}", file=sys.stderr)
    state = "complete" if summary.complete else "stopped early; run the same command again to resume"
    unreadable = len(dict(summary.failed))
    print(f"{summary.encoded} encoded, {summary.already_done} already done, {len(summary.failed)} could not be read"
          + (f" ({unreadable} file{'s' if unreadable != 1 else ''})" if unreadable else "")
          + f", {summary.total} in all ({state}). Latents: {args.out}")
    if summary.changed:
        print(f"Dropped {_rows(summary.changed)} whose image changed since it was encoded (encoded again where "
              "readable).")
    if summary.gone and summary.pruned:
        print(f"Removed {_rows(summary.gone)} of images no longer in {args.data_dir}.")
    elif summary.gone:
        print(f"ganorigin extract: warning: {args.out} holds latents of images no longer in {args.data_dir} "
              f"({summary.gone}); train uses them too. Run again with --prune to remove them.", file=sys.stderr)
    return 1 if summary.failed else 0  # stopping at --limit is what was asked for


def _rows(count: int) -> str:
    """``count`` latent rows, in words (an image's augmented copies are rows of their own)."""
    return f"{count} latent row{'s' if count != 1 else ''} (augmented copies included)"


def _check_class_folders(args) -> None:
    """Refuse a DATA_DIR without class folders of images; warn of images outside every class folder."""
    from .training import labelled_images
    from .training.data import loose_images

    labelled_images(args.data_dir)
    if loose := loose_images(args.data_dir):
        print(f"ganorigin {args.command}: warning: {len(loose)} image(s) directly in {args.data_dir}, such as "
              f"{loose[0].name}, are in no class folder and are left out.", file=sys.stderr)


def _train(args) -> int:
    from .hub.trained_model import save_attribution_model
    from .training import load_latents, save_confusion_png, train_attribution_model
    from .training.fit import check_folds

    check_folds(args.cv)  # before the latents load
    if not args.C > 0:
        raise _usage(f"--C must be greater than 0; got {args.C:g}.")
    for flag, value in (("--coverage", args.coverage), ("--test-size", None if args.cv else args.test_size)):
        if value is not None and not 0.0 < value < 1.0:
            raise _usage(f"{flag} must be between 0 and 1 (both out); got {value:g}.")
    if args.push_to_hub:
        _check_hub_upload(args.push_to_hub)  # before the work, not after it
    latents = load_latents(args.latents)
    result = train_attribution_model(latents.features, latents.labels, groups=latents.groups, aligned=latents.aligned,
                                     encoder=latents.encoder, test_size=args.test_size, cv=args.cv, C=args.C,
                                     coverage=args.coverage, seed=args.seed, names=latents.paths)
    path = save_attribution_model(result, args.out, export_joblib=args.export_joblib)
    png = save_confusion_png(result.confusion, list(result.label_encoder.classes_), args.out / "confusion_matrix.png",
                             f"Held-out attribution ({result.recipe['evaluation']})")
    print(f"Trained on {result.n_train} samples ({result.n_train_sources} source images), evaluated on "
          f"{result.n_test} ({result.n_test_sources} source images; {result.recipe['evaluation']}).")
    print(result.report)
    print(f"{'Cross-validated' if args.cv else 'Held-out'} accuracy: {result.accuracy:.4f}")
    print(f"Open-set threshold (RMS distance to nearest class centroid): {result.attributor.unknown_threshold:.4f}")
    print(f"Model: {path}\nConfusion matrix: {png}")
    if args.push_to_hub:
        _push_to_hub(args.out, args.push_to_hub)
    return 0


def _check_hub_upload(repo_id: str) -> None:
    """Refuse an upload that cannot work, before training: a malformed repo id, or no token."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise _usage(f"--push-to-hub {repo_id!r} is not a Hub repo id like 'org/name'.") from None
    if "/" not in repo_id:
        raise _usage(f"--push-to-hub {repo_id!r}: name the owner too, as in 'org/name'.")
    if get_token() is None:
        raise _usage("--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN.")


def _push_to_hub(folder: Path, repo_id: str) -> None:
    """Upload the model folder (token from `hf auth login` or HF_TOKEN)."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message="Upload GANOrigin attribution model")
    except (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError) as e:  # httpx2: huggingface_hub's HTTP client
        raise _usage(f"Upload of {folder} to {repo_id} failed ({e}); the model is saved there. Check the network, "
                     "the repo id and your token (`hf auth login` or HF_TOKEN).") from e
    print(f"Uploaded to {commit.commit_url}")


def _explain(args) -> int:
    from .errors import InvalidImageError
    from .explain import frequency_view, gradient_heatmap, occlusion_heatmap
    from .images import load_image

    if args.image.is_dir():
        raise _usage(f"{args.image} is a folder; explain takes one image file.")
    try:
        image = load_image(args.image)  # a file that is no image is refused before the weights load
    except InvalidImageError as e:
        why = EXPLAIN_VIDEO if _is_video_file(args.image) else e
        raise InvalidImageError(f"{args.image}: {why}") from e  # named, as predict's rows name theirs
    model = _load_model(args)
    method = args.method if args.method != "auto" else ("occlusion" if model.device.type == "cuda" else "gradient")
    heat = (occlusion_heatmap if method == "occlusion" else gradient_heatmap)(model.detector, image)
    spectrum = frequency_view(image)
    args.out.mkdir(parents=True, exist_ok=True)
    heat.image_overlay.save(args.out / "heatmap.png")
    heat.overlay.save(args.out / "heatmap_crop.png")
    spectrum.picture.save(args.out / "spectrum.png")
    print(f"fake probability {heat.fake_probability:.4f}; heat map ({method}) and frequency view written to {args.out}: "
          "heatmap.png (over the image), heatmap_crop.png (the 224 px crop CLIP saw), spectrum.png")
    print(spectrum.explanation)
    return 0


def _demo_weights(args) -> int:
    from .testing import TEST_WEIGHTS_MARKER, write_demo_weights

    if args.dir.exists() and not args.dir.is_dir():
        raise _usage(f"{args.dir} is a file; demo-weights writes into a new or empty folder.")
    if args.dir.is_dir() and any(args.dir.iterdir()) and not (args.dir / TEST_WEIGHTS_MARKER).is_file():
        raise _usage(f"{args.dir} is not empty; demo-weights writes into a new or empty folder (or one it wrote "
                     "before), so that no real weights are overwritten.")
    marker = write_demo_weights(args.dir, size=args.size, seed=args.seed)
    folder = args.dir.resolve()
    env = (f"GANORIGIN_WEIGHTS_DIR={shlex.quote(str(folder))} "
           f"GANORIGIN_UFD_HEAD_SHA256={marker['ufd_head_sha256']}")
    print(f"Wrote random {args.size} test weights to {folder}. Their answers are meaningless: they are for trying "
          "the app and the CLI, not for judging images.")
    print(f"Run the app (from the repository root):\n  {env} python app.py")
    print(f"Run the command line:\n  {env} ganorigin predict face.png")
    print(f"Or from Python:\n  from ganorigin import GANOrigin, WeightSources\n"
          f"  GANOrigin.from_pretrained(WeightSources(weights_dir={str(folder)!r}, "
          f"ufd_head_sha256={marker['ufd_head_sha256']!r}))")
    return 0


def _feedback_export(args) -> int:
    from .feedback import export_feedback, feedback_folder

    summary = export_feedback(args.source or feedback_folder(), args.out)
    exported = summary["exported"]
    counts = ", ".join(f"{label} {n}" for label, n in sorted(exported.items())) or "none"
    print(f"Exported {sum(exported.values())} reported images to {args.out} ({counts}); left out: "
          f"{summary['without_image']} without a kept image, {summary['dont_know']} marked \"don't know\".")
    return 0


def _evaluate(args) -> int:
    from .training import evaluate, format_report

    _check_class_folders(args)
    if args.engine == "ray":
        report = _ray_commands().evaluate(args, _weights(args), _thresholds(args))
    else:
        report = evaluate(_load_model(args), args.data_dir, args.out, batch_size=args.batch_size,
                          progress=args.progress)
    for failure in report["failed"]:
        print(f"ganorigin evaluate: could not read {failure['error']}", file=sys.stderr)  # the error starts with the path
    print(format_report(report))
    written = ["report.json", "predictions.csv"] + sorted(p.name for p in args.out.glob("*.png"))
    print(f"Wrote {', '.join(written[:-1])} and {written[-1]} to {args.out}.")
    return 1 if report["failed"] else 0


def _robustness(args) -> int:
    from .robustness import CLEAN, format_summary, robustness_rows, save_robustness_png, summarize
    from .training import IMAGE_EXTENSIONS, find_images, write_rows

    if not args.data_dir.exists():
        raise _usage(f"{args.data_dir} does not exist.")
    if not args.data_dir.is_dir():
        raise _usage(f"{args.data_dir} is a file; robustness takes a folder of images.")
    paths = find_images([args.data_dir])
    if not paths:
        raise _usage(f"no images found in {args.data_dir} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}).")
    model = _load_model(args)
    rows = robustness_rows(model, paths, progress=args.progress)
    summary = summarize(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, table in (("robustness.csv", rows), ("robustness_summary.csv", summary)):
        with open(args.out / name, "w", newline="") as f:
            write_rows(table, f, "csv")
    save_robustness_png(rows, summary, args.out / "robustness.png",
                        {"ufd": model.threshold, "commfor": model.commfor_threshold})
    failed = [row["error"] for row in rows if row["degradation"] == CLEAN and row["error"]]
    for error in failed:  # the error starts with the path
        print(f"ganorigin robustness: could not read {error}", file=sys.stderr)
    print(format_summary(summary))
    print(f"Wrote robustness.csv, robustness_summary.csv and robustness.png to {args.out}.")
    return 1 if failed else 0
