"""The fast inference path: reduced-precision matrix maths where the hardware has it, checked
against exact fp32 once per machine and weights, with an automatic fall-back when it disagrees.

``precision`` (or ``GANORIGIN_PRECISION``) is one of:

- ``"auto"`` (default): bf16 on CPUs with native bf16 matrix units (Intel AMX, ``amx_bf16`` in
  /proc/cpuinfo), bf16 or fp16 on CUDA, exact fp32 everywhere else;
- ``"fp32"``: the exact original numerics (eager fp32, modules as loaded);
- ``"bf16"`` / ``"fp16"`` (fp16 on CUDA only): forced, still agreement-checked.

The reduced-precision path folds e4e's BatchNorms that follow a convolution into it (exact
algebra; the BatchNorm that *precedes* a zero-padded conv is left alone, since folding its shift
would be wrong at the borders), stores conv/linear weights in the low dtype on CPU, runs e4e in
channels_last, and keeps norms, embeddings, CLIP's attention and the UFD head in fp32 under autocast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .checkpoints import strict_load
from .detector import UFDDetector
from .encoder import BottleneckIRSE, E4EEncoder, EqualLinear

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Agreement the fast path must keep with fp32 on the probe images (the benchmark's bar is 0.01).
MAX_FAKE_PROBABILITY_DELTA = 0.005
MAX_ATTRIBUTION_PROBABILITY_DELTA = 0.01
PROBE_SIZE = 256


def cpu_has_bf16_matrix_units() -> bool:
    """True on CPUs with Intel AMX bf16 tiles (Sapphire Rapids and later), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    """``"auto"``/``None`` -> the fastest mode this device runs natively; validates the rest."""
    requested = (precision or os.environ.get("GANORIGIN_PRECISION") or "auto").lower()
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {requested!r}.")
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device; on CPU use 'bf16', 'fp32' or 'auto'.")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_bf16_matrix_units():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def fold_encoder_batchnorms(encoder: E4EEncoder) -> None:
    """Fold every BatchNorm that directly follows a conv into that conv (in place, eval only)."""
    layer = encoder.input_layer
    layer[0], layer[1] = fuse_conv_bn_eval(layer[0], layer[1]), nn.Identity()
    for unit in encoder.body:
        if not isinstance(unit, BottleneckIRSE):
            continue
        res = unit.res_layer
        res[3], res[4] = fuse_conv_bn_eval(res[3], res[4]), nn.Identity()
        if isinstance(unit.shortcut_layer, nn.Sequential):
            short = unit.shortcut_layer
            short[0], short[1] = fuse_conv_bn_eval(short[0], short[1]), nn.Identity()


def _cast_matmul_weights(module: nn.Module, dtype: torch.dtype) -> None:
    """Store the weights that feed matrix units in ``dtype``; norms and embeddings stay fp32."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d, EqualLinear)):
            sub.to(dtype)
        elif isinstance(sub, nn.MultiheadAttention) and sub.in_proj_weight is not None:
            sub.in_proj_weight.data = sub.in_proj_weight.data.to(dtype)
            sub.in_proj_bias.data = sub.in_proj_bias.data.to(dtype)


def _attention_in_fp32(attention: nn.MultiheadAttention) -> None:
    """Make this attention module run in fp32 even inside an autocast region."""
    forward = attention.forward

    def forward_fp32(query, key, value, *args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return forward(query.float(), key.float(), value.float(), *args, **kwargs)

    attention.forward = forward_fp32


def prepared_precision(module: nn.Module) -> str:
    """The precision ``module`` was prepared for ("fp32" when untouched)."""
    return getattr(module, "_ganorigin_precision", "fp32")


def prepare_detector(detector: UFDDetector, device: torch.device, precision: str) -> None:
    """Make ``detector`` ready for ``precision`` in place (the fp32 head is left as it is)."""
    if precision == "fp32":
        return
    detector._ganorigin_precision = precision
    if device.type != "cpu":
        return  # CUDA autocast casts on the fly and keeps fp32 master weights
    # The MLPs (two thirds of ViT-L/14's FLOPs) go to bf16; attention stays fp32. Under CPU
    # autocast, batched attention took a bf16 path that was ~100x slower and moved P(fake) by 0.012
    # on the probe images; with fp32 attention it moves 0.002, at any batch size, 1.9x faster.
    for block in detector.visual.transformer.resblocks:
        _cast_matmul_weights(block.mlp, DTYPES[precision])
        _attention_in_fp32(block.attn)


def prepare_encoder(encoder: E4EEncoder, device: torch.device, precision: str) -> None:
    """Fold BatchNorms, switch to channels_last and (on CPU) store conv weights in the low dtype."""
    if precision == "fp32":
        return
    encoder._ganorigin_precision = precision
    fold_encoder_batchnorms(encoder)
    encoder.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        _cast_matmul_weights(encoder, DTYPES[precision])


def probe_images() -> list[Image.Image]:
    """Two deterministic images for the agreement check: a smooth face-like blob and fine noise."""
    yy, xx = np.mgrid[0:PROBE_SIZE, 0:PROBE_SIZE] / PROBE_SIZE
    blob = np.exp(-((xx - 0.5) ** 2 / 0.06 + (yy - 0.45) ** 2 / 0.1))
    smooth = np.stack([0.3 + 0.6 * blob, 0.25 + 0.5 * blob, 0.2 + 0.4 * blob * yy], axis=-1)
    noise = np.random.default_rng(0).random((PROBE_SIZE, PROBE_SIZE, 3))
    return [Image.fromarray((255 * a).astype(np.uint8), "RGB") for a in (smooth, noise)]


def compare(reference: tuple, fast: tuple) -> dict:
    """Agreement of ``(fake_probabilities, attribution_probabilities)`` pairs, per model: the fake
    probability depends only on the detector, the attribution only on the encoder."""
    fake_delta = float(np.max(np.abs(reference[0] - fast[0])))
    gan_delta = float(np.max(np.abs(reference[1] - fast[1])))
    same_argmax = bool((reference[1].argmax(1) == fast[1].argmax(1)).all())
    detector_ok = fake_delta <= MAX_FAKE_PROBABILITY_DELTA
    encoder_ok = gan_delta <= MAX_ATTRIBUTION_PROBABILITY_DELTA and same_argmax
    return {"ok": detector_ok and encoder_ok, "detector_ok": detector_ok, "encoder_ok": encoder_ok,
            "max_fake_probability_delta": fake_delta, "max_attribution_probability_delta": gan_delta}


def check_key(weight_files: Optional[list], device: torch.device, precision: str) -> Optional[str]:
    """A cache key for one (weights, machine, torch, precision); ``None`` when the weights are unknown."""
    if not weight_files:
        return None
    parts = [precision, device.type, torch.__version__, cpu_model_name()]
    for path in weight_files:
        stat = Path(path).stat()
        parts.append(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _check_cache_file() -> Path:
    root = os.environ.get("GANORIGIN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "ganorigin"
    )
    return Path(root) / "precision-checks.json"


def cached_check(key: Optional[str]) -> Optional[dict]:
    if key is None:
        return None
    try:
        return json.loads(_check_cache_file().read_text()).get(key)
    except (OSError, ValueError):
        return None


def store_check(key: Optional[str], result: dict) -> None:
    if key is None:
        return
    path = _check_cache_file()
    try:
        checks = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        checks = {}
    checks[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(checks, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("Could not cache the precision check in %s (%s); it will run again next start.", path, e)


def rebuild_fp32(module: nn.Module, state: dict) -> nn.Module:
    """A fresh exact-fp32 copy of a detector or encoder from a state dict taken before
    :func:`prepare_detector` / :func:`prepare_encoder` changed it."""
    with torch.device("meta"):
        if isinstance(module, UFDDetector):
            fresh = UFDDetector(module.vision_cfg, embed_dim=module.fc.in_features)
        else:
            fresh = E4EEncoder(module.config)
    strict_load(fresh, state, Path("<fp32 weights>"))
    if isinstance(module, E4EEncoder):
        fresh.latent_avg = module.latent_avg
    return fresh


def run_probe(predict: Callable[[list], tuple]) -> tuple:
    """``predict(images) -> (fake_probabilities, attribution_probabilities)`` on the probe images."""
    fake, gan = predict(probe_images())
    return np.asarray(fake, dtype=np.float64), np.asarray(gan, dtype=np.float64)
