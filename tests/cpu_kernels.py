"""What this machine's oneDNN kernels can do, for tests whose subject needs a kernel some CPUs lack."""

from __future__ import annotations

import os

import pytest

from ganorigin.accel.precision import cpu_flags, onednn_runs_bf16

BF16_RUNS = onednn_runs_bf16()
needs_bf16 = pytest.mark.skipif(not BF16_RUNS, reason="this CPU's oneDNN has no bf16 kernels (they need AVX-512 or "
                                                       "AVX-NE-CONVERT); the bf16 path cannot run here")

# Without VNNI (real, or oneDNN limited to AVX2) oneDNN's int8 products add pairs of uint8 x int8 products in 16
# bits, which 8-bit weights can saturate; 7-bit ones cannot (ganorigin.accel.packed.int8_weight_bits).
INT8_SATURATES = (not cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"}
                  or os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("SSE41", "AVX", "AVX2"))
UNSATURATED_BITS = 7 if INT8_SATURATES else 8
