"""The agreement probe: a fast module is used only where it agrees with its exact fp32 reference.

:func:`accelerate` converts a model, runs the probe images through both (:func:`probe_images`), and
returns the fast module when its scores, and the features they are computed from, agree within the bounds
below, else the reference (and logs either). The verdict is cached per (weights, machine and CPU class, torch,
precision, way of attention), so later starts skip the probe; it is judged again by the bounds of the
day (which the rescoring band sets for UFD).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from ..hub.integrity import cache_root, read_json, write_json_atomic
from ..images import load_image
from .convert import (base_model, borderline_band, fast_commfor, fast_detector, fast_encoder, page_blocks,
                      precision_of)
from .memory import releasing_pages
from .packed import attention_paths
from .precision import cpu_class, cpu_model_name

logger = logging.getLogger(__name__)

# Agreement a fast model must keep with fp32 on the probe images (the benchmark's bar is 0.01 in P(fake)).
# UFD's is judged on its logit, not P(fake): P near 0 or 1 (where the probe images may fall with real weights)
# would hide any move. int8 moves that logit by about 0.1-0.2 per image in root mean square, partly with the logit
# and partly at random, not even the same at another thread count (one image moved +0.07 on one thread, -0.15 on
# two), so one image's move is a coin toss against any bound near it. The probe measures that noise over
# five probe views, and the fast detector keeps only the answers that a move of NOISE_MARGIN times
# it cannot take more than MAX_KEPT_PROBABILITY_DELTA from fp32's: BorderlineExact scores the others again
# exactly, its band widened as far as that takes (exact_band), up to WIDEST_EXACT_BAND; noisier is refused.
MAX_KEPT_PROBABILITY_DELTA = 0.01
NOISE_MARGIN = 2.5  # the probe views' noise read 0.83-0.91x that of 24 dev faces (probe_views)
WIDEST_EXACT_BAND = 0.005  # rescoring every P(fake) in (0.005, 0.995) exactly; a logit move of 1.1 there
MAX_ATTRIBUTION_PROBABILITY_DELTA = 0.01
# Community Forensics' verdicts change at P(fake) 0.4, 0.5 and 0.6, where its scores spread. It is judged on its
# logit too, and on the noise over the same views (one image's move read 0.03-3.2 of the noise over 24 dev faces,
# the five views' 0.62-1.35, and 2.8 for the path refused on AVX2; Zen 5, four CPU classes): a typical image at 0.5
# may move by MAX_COMMFOR_PROBABILITY_DELTA, a logit's move of COMMFOR_NOISE_BOUND.
MAX_COMMFOR_PROBABILITY_DELTA = 0.005
COMMFOR_NOISE_BOUND = math.log((0.5 + MAX_COMMFOR_PROBABILITY_DELTA) / (0.5 - MAX_COMMFOR_PROBABILITY_DELTA))
# A score's move depends on where the probe image's score falls (int8 moved UFD's logit by 0.01 on an image at
# logit -3.5 and by 0.29 on one at -14); the relative error of the features the score is computed from hardly
# does (int8 CLIP: 0.013-0.016 on each of 16 dev faces and 0.015 on the probe face, AMD Zen 4). So the probe
# bounds that too. The paths kept measured 0.015-0.020 on the probe face (Zen 4, AVX-512-VNNI) and 0.026-0.031
# on AVX2 (full-size random weights): a path over the bound is off by more than any path measured, whatever
# score the probe image gets (as int8 could be on weights whose activations have outliers).
MAX_FEATURE_RELATIVE_ERROR = 0.04
PROBE_FACE = "grace_hopper.jpg"  # in matplotlib's sample data (a pinned dependency): a public-domain portrait
PROBE_SIZE = 256
FAST_PATH_VERSION = "packed-16"  # part of the cached verdicts' key: a new fast path is checked afresh
CHECKS_FILE = "precision-checks.json"

Scores = Callable[[nn.Module, list], np.ndarray]

# kind -> (converter, whether the top class must stay the same, whether it has attention to run per CPU,
#          the features: the input of this head, or the model's own output where it names none)
MODEL_NAMES = {"detector": "UFD's CLIP", "encoder": "e4e", "commfor": "Community Forensics"}
KINDS = {"detector": (fast_detector, False, True, "fc"), "encoder": (fast_encoder, True, False, None),
         "commfor": (fast_commfor, False, True, "vit.head")}
JUDGED_ON_NOISE = ("detector", "commfor")  # a logit's root mean square move over probe_views


def max_delta(kind: str) -> float:
    """The bound on the scores' move for ``kind`` (read whenever a verdict is judged): for the detectors, on the
    root mean square of their logit's move (UFD: :func:`noise_bound`; Community Forensics:
    :data:`COMMFOR_NOISE_BOUND`), for e4e on the max |delta| of the attribution probabilities."""
    if kind == "detector":
        return noise_bound(borderline_band())
    return {"encoder": MAX_ATTRIBUTION_PROBABILITY_DELTA, "commfor": COMMFOR_NOISE_BOUND}[kind]


def detector_logit_bound(band: float) -> float:
    """The largest move of UFD's logit that keeps every P(fake) a fast detector keeps within
    :data:`MAX_KEPT_PROBABILITY_DELTA`: it keeps those at most ``band`` (or at least ``1 - band``), and every
    one with the band off (0); the steepest of them is at ``band``, or at 0.5 (0.04 with the band off)."""
    step = MAX_KEPT_PROBABILITY_DELTA
    kept = min(band, 0.5 - step / 2) if band > 0 else 0.5 - step / 2
    return math.log((kept + step) / (1 - kept - step)) - math.log(kept / (1 - kept))


def noise_bound(band: float) -> float:
    """The most noise (root mean square of the logit's move) a fast UFD detector may have: what
    :data:`WIDEST_EXACT_BAND` absorbs, or with the band off (0) what :func:`detector_logit_bound` allows."""
    return detector_logit_bound(WIDEST_EXACT_BAND if band > 0 else 0.0) / NOISE_MARGIN


def exact_band(band: float, noise: float) -> Optional[float]:
    """The band :class:`~ganorigin.accel.BorderlineExact` must score again for a fast UFD detector whose logit
    moves by ``noise`` (root mean square): ``band``, or a wider one (a smaller number) where outside ``band`` a
    move of :data:`NOISE_MARGIN` times ``noise`` could take a P(fake) more than :data:`MAX_KEPT_PROBABILITY_DELTA`
    from fp32's; ``None`` when the noise is over :func:`noise_bound`."""
    if not noise <= noise_bound(band):
        return None
    move = NOISE_MARGIN * noise
    if band == 0 or move <= detector_logit_bound(band):
        return band
    # The band's edge b where logit(b + step) - logit(b) = move: b^2 - (1 - step) b + step / (e^move - 1) = 0.
    step = MAX_KEPT_PROBABILITY_DELTA
    return ((1 - step) - math.sqrt(max((1 - step) ** 2 - 4 * step / math.expm1(move), 0.0))) / 2


def probe_images(kind: Optional[str] = None) -> list:
    """The probe's images: a real face, Grace Hopper's portrait from matplotlib's sample data (int8 moves
    its features as far as dev faces', 0.015 against 0.012-0.018, where the synthetic image's moved less);
    where an install lacks it, :func:`synthetic_probe_image`. For the detectors (``kind`` in
    :data:`JUDGED_ON_NOISE`), :func:`probe_views` of it, whose logits' moves measure the fast path's noise; for
    e4e the image alone (each image costs a full fp32 forward on the first start)."""
    import matplotlib.cbook  # here: importing matplotlib costs every start that needs no probe

    try:
        path = matplotlib.cbook.get_sample_data(PROBE_FACE, asfileobj=False)
        image = load_image(Path(path).read_bytes())
    except (OSError, ValueError):
        logger.info("matplotlib's %s is missing: the probe uses a synthetic image.", PROBE_FACE)
        image = synthetic_probe_image()
    return probe_views(image) if kind in JUDGED_ON_NOISE else [image]


def probe_views(image: Image.Image) -> list:
    """Five images CLIP sees differently, its scores far apart: ``image``, mirrored, solarised, its lower half, and
    :func:`synthetic_probe_image`. Of 14 views tried, these five's moves tracked int8's noise over 24 dev faces
    best (0.83-0.91 of it on AMX, AVX-512-VNNI and AVX2; views of the face alone read 0.69-1.63 of it)."""
    width, height = image.size
    return [image, ImageOps.mirror(image), ImageOps.solarize(image, 128), image.crop((0, height // 2, width, height)),
            synthetic_probe_image()]


def synthetic_probe_image() -> Image.Image:
    """A deterministic face-like image: a smooth blob (low frequencies) under fine noise (high frequencies)."""
    yy, xx = np.mgrid[0:PROBE_SIZE, 0:PROBE_SIZE] / PROBE_SIZE
    blob = np.exp(-((xx - 0.5) ** 2 / 0.06 + (yy - 0.45) ** 2 / 0.1))
    smooth = np.stack([0.3 + 0.6 * blob, 0.25 + 0.5 * blob, 0.2 + 0.4 * blob * yy], axis=-1)
    noise = np.random.default_rng(0).random((PROBE_SIZE, PROBE_SIZE, 3))
    return Image.fromarray(np.clip(255 * (0.8 * smooth + 0.2 * noise), 0, 255).astype(np.uint8), "RGB")


def scores_and_features(model: nn.Module, scores: Scores, images: list, head: Optional[str]) -> tuple:
    """``scores(model, images)`` and, per image, the features they come from: the input of ``model``'s
    submodule ``head`` (its own output for ``None``), flattened, shape (B, D)."""
    seen = []
    target = base_model(model) if head is None else base_model(model).get_submodule(head)
    hook = (target.register_forward_hook(lambda m, args, out: seen.append(out)) if head is None else
            target.register_forward_pre_hook(lambda m, args: seen.append(args[0])))
    try:
        result = scores(model, images)
    finally:
        hook.remove()
    return result, torch.cat([f.detach().float().flatten(1).cpu() for f in seen]).numpy()


def relative_error(reference: np.ndarray, fast: np.ndarray) -> float:
    """The largest ||fast - reference|| / ||reference|| over rows."""
    reference, fast = np.asarray(reference, dtype=np.float64), np.asarray(fast, dtype=np.float64)
    return float(np.max(np.linalg.norm(fast - reference, axis=-1) / np.linalg.norm(reference, axis=-1)))


def agreement(reference: np.ndarray, fast: np.ndarray, same_argmax: bool = False) -> dict:
    """The max absolute difference of two score arrays, its root mean square (``noise``), and whether each row's
    argmax is the same."""
    reference, fast = np.asarray(reference, dtype=np.float64), np.asarray(fast, dtype=np.float64)
    argmax_same = bool((reference.argmax(-1) == fast.argmax(-1)).all()) if same_argmax else True
    return {"max_delta": float(np.max(np.abs(reference - fast))), "noise": float(np.sqrt(np.mean((reference - fast) ** 2))),
            "same_argmax": argmax_same}


def judged(check: dict, kind: str) -> dict:
    """``check`` (what the probe measured, maybe cached under other settings) judged by the bounds that hold
    now for ``kind``: with ``max_allowed`` and ``ok``; a measurement missing fails."""
    bound, features_agree = max_delta(kind), check.get("feature_error", math.inf) <= MAX_FEATURE_RELATIVE_ERROR
    if kind == "detector":
        band = exact_band(borderline_band(), check.get("noise", math.inf))
        return {**check, "max_allowed": bound, "ok": band is not None and features_agree, "band": band}
    moved = check.get("noise" if kind in JUDGED_ON_NOISE else "max_delta", math.inf)
    ok = moved <= bound and check.get("same_argmax") is True and features_agree
    return {**check, "max_allowed": bound, "ok": ok}


def accelerate(model: nn.Module, device: torch.device, precisions: Union[str, Sequence[str]], scores: Scores, *,
               kind: str, weight_files: Sequence = ()) -> nn.Module:
    """``model`` (on ``device``) converted for the first of ``precisions`` that agrees with it in
    fp32, what the probe measured and judged as its ``agreement``; ``model`` itself when none does. On a CPU the
    transformers try each precision's ways of running attention in turn
    (:func:`~ganorigin.accel.packed.attention_paths`: on AVX2, int8 q/k/v, then exact).

    Args:
        precisions: one precision, or several to try in order (:func:`ganorigin.accel.precision.candidate_precisions`).
        kind: ``"detector"`` (UFD's logit's move, in root mean square over :func:`probe_views`, at most
            :func:`noise_bound`; its ``agreement["band"]`` is the band to score again, :func:`exact_band`),
            ``"encoder"`` (attribution probabilities by ``MAX_ATTRIBUTION_PROBABILITY_DELTA``,
            same top GAN) or ``"commfor"`` (Community Forensics' logit's move, in root mean square over
            :func:`probe_views`, by ``COMMFOR_NOISE_BOUND``); for each, the features behind the scores (the head's
            input, e4e's codes) by ``MAX_FEATURE_RELATIVE_ERROR``.
        scores: ``scores(module, images)`` -> what the comparison is made on.
        weight_files: the files behind the model and its scores; name the cached verdicts.
    """
    candidates = [p for p in ([precisions] if isinstance(precisions, str) else precisions) if p != "fp32"]
    convert, same_argmax, has_attention, head = KINDS[kind]
    steps = [(precision, attention) for precision in candidates
             for attention in (attention_paths(precision) if has_attention and device.type == "cpu" else (None,))]
    checks, reference = read_json(_checks_file()), None
    for step, (precision, attention) in enumerate(steps):
        options = {"attention": attention} if attention else {}
        key = _check_key(kind, weight_files, device, precision, attention)
        fast, cached = None, isinstance(checks.get(key), dict)  # what the probe measured (anything else is not)
        if cached:
            check = judged(checks[key], kind)
        else:
            if reference is None:
                images = probe_images(kind)
                with releasing_pages(page_blocks(model)):
                    reference = scores_and_features(model, scores, images, head)
            fast = convert(model, device, precision, **options)
            fast_scores, fast_features = scores_and_features(fast, scores, images, head)
            check = agreement(reference[0], fast_scores, same_argmax=same_argmax)
            check = judged({**check, "feature_error": relative_error(reference[1], fast_features),
                            "images": len(images)}, kind)
            if key is not None:
                checks[key] = check
                if not write_json_atomic(_checks_file(), checks):
                    logger.warning("Could not cache the precision check in %s; it runs again next start.",
                                   _checks_file())
        probe = "the probe of an earlier start" if cached else "the probe"
        if check["ok"]:
            logger.info("%s runs %s: it agrees with fp32 on %s (%s).", MODEL_NAMES[kind], _describe(precision, attention),
                        probe, _measured(check, kind))
            return _accepted(fast if fast is not None else convert(model, device, precision, **options), check)
        later = steps[step + 1:]
        logger.log(logging.INFO if later else logging.WARNING, "%s in %s disagrees with fp32 on %s (%s); %s.",
                   MODEL_NAMES[kind], _describe(precision, attention), probe, _measured(check, kind),
                   f"trying {_describe(*later[0])}" if later else "it runs exact fp32")
    return model


def _accepted(fast: nn.Module, check: dict) -> nn.Module:
    fast.agreement = check
    return fast


def _describe(precision: str, attention: Optional[str]) -> str:
    return f"{precision} (attention: {attention})" if attention and attention != precision else precision


def _measured(check: dict, kind: str) -> str:
    """What the probe measured, in words: each score's and the features' move against its bound."""
    score = {"detector": "UFD's logit", "encoder": "the attribution probabilities",
             "commfor": "its logit"}[kind]
    moved = (f"{check.get('noise', math.nan):.4f} in root mean square over {check.get('images')} probe views"
             if kind in JUDGED_ON_NOISE else f"{check.get('max_delta', math.nan):.4f}")
    allowed = " with GANORIGIN_EXACT_BORDERLINE=0" if kind == "detector" and borderline_band() == 0 else ""
    words = [f"{score} moved {moved}, at most {check['max_allowed']:.4f} allowed{allowed}",
             f"its features {check.get('feature_error', math.nan):.1%}, at most {MAX_FEATURE_RELATIVE_ERROR:.0%}"]
    if check.get("same_argmax") is False:
        words.append("the top GAN changed")
    return "; ".join(words)


def precision_summary(detector: nn.Module, encoder: nn.Module) -> str:
    """``"bf16"`` when both models run it, ``"fp32"`` when neither, else e.g. ``"int8 (CLIP only)"``."""
    d, e = precision_of(detector), precision_of(encoder)
    if d == e:
        return d
    if "fp32" in (d, e):
        return f"{e} (e4e only)" if d == "fp32" else f"{d} (CLIP only)"
    return f"CLIP {d}, e4e {e}"


def _check_key(kind: str, weight_files: Sequence, device: torch.device, precision: str,
               attention: Optional[str] = None) -> Optional[str]:
    """A key for one (model, weights, machine, torch, precision and way of attention); ``None`` when
    the weights are unknown.

    The machine is the CPU's name and the class GANOrigin takes it for (``GANORIGIN_CPU_ISA`` can
    say another) and the instruction sets oneDNN may use (``ONEDNN_MAX_CPU_ISA``): each changes the
    fast path's numbers, so each gets its own check.
    """
    if not weight_files:
        return None
    parts = [kind, precision, attention or "", FAST_PATH_VERSION, device.type, torch.__version__, cpu_model_name(),
             cpu_class(), os.environ.get("ONEDNN_MAX_CPU_ISA", "")]
    for path in weight_files:
        stat = Path(path).stat()
        parts.append(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _checks_file() -> Path:
    return cache_root() / "ganorigin" / CHECKS_FILE
