"""Which precision a model runs in on this device: chosen by what the processor can do.

``precision`` (or ``GANORIGIN_PRECISION``) is one of:

- ``"auto"`` (default): on a CPU, per model by its instruction sets (:func:`cpu_class`,
  :data:`AUTO_CPU_PATHS`): the paths measured fastest there, tried in that order until one agrees
  with fp32 — bf16 then int8 on Intel AMX; int8 then bf16 on AVX-512-BF16 (AMD Zen 4, Intel Cooper
  Lake); int8 where integer dot products are the only fast path (AVX-512-VNNI, AVX-VNNI, AVX2); exact
  fp32 elsewhere (ARM, older x86), and for any model none of them suits. bf16 or fp16 on CUDA; fp16
  on Apple ``mps``;
- ``"fp32"``: the exact original numerics;
- ``"bf16"``, ``"int8"`` (CPU), ``"fp16"`` (CUDA, mps): forced, still agreement-checked.

``GANORIGIN_CPU_ISA`` tells the detection which class to assume (``amx``, ``avx512_bf16``,
``avx512_vnni``, ``avx_vnni``, ``avx2``, ``none``): with ``ONEDNN_MAX_CPU_ISA`` it lets one
machine measure the paths of CPUs it is not.
"""

from __future__ import annotations

import os
import platform
from typing import Optional

import torch

from ..errors import ConfigurationError

PRECISIONS = ("auto", "fp32", "bf16", "int8", "fp16")
# CPU classes, fastest first, with the flag (/proc/cpuinfo) that marks each and its native low-precision
# matrix type (what resolve_precision reports for "auto"; AUTO_CPU_PATHS has what each model tries, in order).
CPU_CLASSES = (("amx", "amx_bf16", "bf16"), ("avx512_bf16", "avx512_bf16", "bf16"),
               ("avx512_vnni", "avx512_vnni", "int8"), ("avx_vnni", "avx_vnni", "int8"), ("avx2", "avx2", "int8"))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# What "auto" tries on a CPU of each class, per model, fastest first; each next one is the fall-back when
# the probe refuses the one before, and fp32 comes last. Measured end to end against the fp32 baseline
# (benchmarks/README.md, 2 cores): on a Sapphire Rapids (AMX) bf16 0.28x, int8 0.37x; on a real AMD EPYC
# Zen 4 (AVX-512-BF16) int8 0.33x, bf16 0.45x, and per model on one core int8 was faster for all three
# (CLIP 832 against 1126 ms, e4e 655 against 844, Community Forensics 272 against 295). On CPUs with native
# bf16 the int8 path runs in bf16 the few layers where bf16 measured faster (ganorigin.accel.convert).
_INT8 = {"detector": ("int8",), "encoder": ("int8",), "commfor": ("int8",)}
AUTO_CPU_PATHS = {
    "amx": {"detector": ("bf16", "int8"), "encoder": ("bf16", "int8"), "commfor": ("bf16", "int8")},
    "avx512_bf16": {"detector": ("int8", "bf16"), "encoder": ("int8", "bf16"), "commfor": ("int8", "bf16")},
    "avx512_vnni": _INT8, "avx_vnni": _INT8, "avx2": _INT8,
}


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


def cpu_class() -> str:
    """The fastest of ``CPU_CLASSES`` this CPU has (or ``GANORIGIN_CPU_ISA``), else ``"none"``."""
    override = os.environ.get("GANORIGIN_CPU_ISA", "").strip().lower()
    names = [name for name, _, _ in CPU_CLASSES]
    if override:
        if override not in (*names, "none"):
            raise ConfigurationError(f"GANORIGIN_CPU_ISA must be one of {', '.join(names)}, none; "
                                     f"got {override!r}.")
        return override
    flags = cpu_flags()
    return next((name for name, flag, _ in CPU_CLASSES if flag in flags), "none")


def cpu_has_bf16_matrix_units() -> bool:
    """True on CPUs that run bf16 matrix maths natively (AMX or AVX-512-BF16)."""
    return _auto_cpu_precision() == "bf16" and _runnable("bf16")


def _auto_cpu_precision() -> str:
    return next((path for name, _, path in CPU_CLASSES if name == cpu_class()), "fp32")


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
        raise ConfigurationError(f"precision must be one of {', '.join(PRECISIONS)}; got {requested!r}.")
    if requested == "fp16" and device.type not in ("cuda", "mps"):
        raise ConfigurationError("precision='fp16' needs a CUDA or mps device; on CPU use 'bf16', 'int8', 'fp32' "
                                 "or 'auto'.")
    if requested == "int8" and device.type != "cpu":
        raise ConfigurationError("precision='int8' is for CPUs; on a GPU use 'auto', 'bf16', 'fp16' or 'fp32'.")
    if requested == "bf16" and device.type == "cpu" and not torch.backends.mkldnn.is_available():
        raise ConfigurationError("precision='bf16' on CPU needs a torch build with oneDNN (mkldnn); use 'fp32'.")
    if requested == "bf16" and device.type == "cpu" and not _runnable("bf16"):
        raise ConfigurationError("precision='bf16' needs a CPU whose oneDNN runs bf16 (AVX-512 or AVX-NE-CONVERT, "
                                 f"e.g. AMD Zen 4, Intel Cooper Lake and later); this one ({cpu_model_name()}) "
                                 "cannot. Use 'auto', 'int8' or 'fp32'.")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    if device.type == "cpu":
        auto = _auto_cpu_precision()
        return auto if _runnable(auto) else "fp32"
    return "fp32"


def candidate_precisions(precision: Optional[str], device: torch.device, kind: str) -> tuple:
    """The precisions to try for ``kind`` (``"detector"``, ``"encoder"``, ``"commfor"``), in order:
    the first that agrees with fp32 is used, and fp32 when none does (:func:`ganorigin.accel.accelerate`).
    One forced precision (or a GPU's) is the only candidate; ``auto`` on a CPU follows :data:`AUTO_CPU_PATHS`
    and what this torch build can run."""
    resolved = resolve_precision(precision, device)
    if (precision or os.environ.get("GANORIGIN_PRECISION") or "auto").lower() != "auto" or device.type != "cpu":
        return (resolved,)
    return tuple(p for p in AUTO_CPU_PATHS.get(cpu_class(), {}).get(kind, ()) if _runnable(p))


def _runnable(precision: str) -> bool:
    """Whether this torch build and CPU run the kernels of ``precision`` (bf16 and int8 are oneDNN's)."""
    if precision == "int8":
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")
    return onednn_runs_bf16() if precision == "bf16" else True


def onednn_runs_bf16() -> bool:
    """Whether this CPU's oneDNN has bf16 kernels at all (AVX-512 BW/VL/DQ or AVX-NE-CONVERT), whatever
    ``GANORIGIN_CPU_ISA`` says: AVX2-only CPUs such as AMD Zen 3 have none."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
