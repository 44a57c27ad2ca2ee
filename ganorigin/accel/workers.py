"""The models side by side on a CPU: one worker thread per lane (CLIP on one, e4e and Community Forensics on the other).

On a 2-core CPU the detector and the encoder, each on one core at the same time, finish sooner
than one after the other on both cores (measured: 0.85x the time). Neither model's kernels scale
perfectly to two cores, and e4e waits on memory much of the time. Each model gets a worker thread
whose OpenMP intra-op threads are limited to its half of the cores. The limit is set per thread,
via threadpoolctl, so torch's process-wide thread setting is left alone.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

import torch
from threadpoolctl import threadpool_limits


# Community Forensics (ViT-S/16, ~12 GMACs) queues on e4e's worker: e4e waits for face alignment
# anyway, and a third thread would oversubscribe two cores (measured: benchmarks/second_detector.py).
LANES = {"detector": "detector", "encoder": "encoder", "commfor": "encoder"}


class ModelWorkers:
    """One worker thread per lane (``"detector"``, ``"encoder"``), each with ``threads // 2``
    intra-op threads; each model runs on its lane (``LANES``), in the order submitted."""

    def __init__(self, threads: int, lanes: Optional[dict] = None):
        each = max(1, threads // 2)
        self.lanes = dict(LANES if lanes is None else lanes)
        self._pools = {
            name: ThreadPoolExecutor(1, f"ganorigin-{name}", initializer=_limit_intra_op_threads,
                                     initargs=(each,))
            for name in sorted(set(self.lanes.values()))
        }

    @classmethod
    def for_device(cls, device: torch.device) -> Optional["ModelWorkers"]:
        """Workers for a CPU with at least two intra-op threads; ``None`` elsewhere (a GPU runs the
        models one after the other, each at full width)."""
        threads = torch.get_num_threads()
        return cls(threads) if device.type == "cpu" and threads >= 2 else None

    def submit(self, model: str, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the worker thread of ``model``'s lane."""
        return self._pools[self.lanes[model]].submit(fn)


def _limit_intra_op_threads(threads: int) -> None:
    torch.get_num_threads()  # torch sets each new thread's OpenMP threads on first use: do that first
    threadpool_limits(threads, user_api="openmp")  # then limit this thread only
