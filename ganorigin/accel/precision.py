"""Which precision a model runs in on this device: chosen by what the processor can do.

``precision`` (or ``GANORIGIN_PRECISION``) is one of:

- ``"auto"`` (default): bf16 on CPUs with native bf16 matrix units (Intel AMX, ``amx_bf16`` in
  /proc/cpuinfo), bf16 or fp16 on CUDA, exact fp32 everywhere else;
- ``"fp32"``: the exact original numerics;
- ``"bf16"`` / ``"fp16"`` (fp16 on CUDA only): forced, still agreement-checked.
"""

from __future__ import annotations

import os
import platform
from typing import Optional

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags() -> frozenset:
    """The processor's feature flags (``/proc/cpuinfo``); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16_matrix_units() -> bool:
    """True on CPUs with Intel AMX bf16 tiles (Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


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
    if requested == "bf16" and device.type == "cpu" and not torch.backends.mkldnn.is_available():
        raise ValueError("precision='bf16' on CPU needs a torch build with oneDNN (mkldnn); use 'fp32'.")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_bf16_matrix_units() and torch.backends.mkldnn.is_available():
        return "bf16"
    return "fp32"
