"""The models side by side on a CPU: one worker thread per lane (CLIP on one, e4e on the other), and
Community Forensics and e4e's style groups on whichever lane is free first.

On a 2-core CPU the detector and the encoder, each on one core at the same time, finish sooner
than one after the other on both cores (measured: 0.85x the time). Neither model's kernels scale
perfectly to two cores, and e4e waits on memory much of the time. Each lane's worker thread has its
OpenMP intra-op threads limited to its half of the cores. The limit is set per thread, via
threadpoolctl, so torch's process-wide thread setting is left alone.

Which lane finishes first depends on the CPU: CLIP's where it runs int8 on VNNI, e4e's where both
run bf16 on AMX. Work on the lane ``EITHER`` (Community Forensics; e4e's style groups, queued once the
feature maps they read are made) is taken by the first worker that has nothing of its own lane queued
before it, so that neither worker idles while there is work; a third worker would oversubscribe two
cores (measured: ``benchmarks/second_detector.py``).
"""

from __future__ import annotations

import atexit
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Optional

import torch
from threadpoolctl import threadpool_limits

EITHER = "either"
LANES = {"detector": "detector", "encoder": "encoder", "commfor": EITHER, "styles": EITHER}
GPU_LANES = dict.fromkeys(LANES, "gpu")  # one thread makes every CUDA call: a graph being recorded sees no other


class _Queue:
    """Tasks in submission order, each for one lane or for ``EITHER``; what the workers share."""

    def __init__(self):
        self.tasks: list = []
        self.threads: list = []  # the workers taking from it
        self.changed = threading.Condition()
        self.closed = False

    def put(self, lane: str, future: Future, fn: Callable[[], Any]) -> None:
        with self.changed:
            self.tasks.append((lane, future, fn))
            self.changed.notify_all()

    def take(self, lane: str) -> Optional[tuple]:
        """The first task for ``lane`` or for either lane, waiting for one; ``None`` once closed."""
        with self.changed:
            while not self.closed:
                for i, task in enumerate(self.tasks):
                    if task[0] in (lane, EITHER):
                        return self.tasks.pop(i)
                self.changed.wait()
            return None

    def close(self) -> None:
        """End the workers once they finish what they run now; what is still queued is cancelled."""
        with self.changed:
            self.closed = True
            for _, future, _ in self.tasks:
                future.cancel()
            self.tasks.clear()
            self.changed.notify_all()


_OPEN: "weakref.WeakSet[_Queue]" = weakref.WeakSet()


@atexit.register
def _end_workers() -> None:
    """Let the workers end before the interpreter does: a thread killed inside torch aborts the process."""
    queues = list(_OPEN)
    for queue in queues:
        queue.close()
    for thread in (thread for queue in queues for thread in queue.threads):
        thread.join(timeout=10)


class ModelWorkers:
    """One worker thread per lane (``"detector"``, ``"encoder"``), each with ``threads // 2``
    intra-op threads; each model runs on its lane (``LANES``; ``EITHER``: the first lane free), in
    the order submitted. The threads end when the object is collected."""

    def __init__(self, threads: int, lanes: Optional[dict] = None):
        self.lanes = dict(LANES if lanes is None else lanes)
        self._queue = _Queue()
        _OPEN.add(self._queue)
        each = max(1, threads // 2)
        for name in sorted(set(self.lanes.values()) - {EITHER}):
            thread = threading.Thread(target=_work, args=(self._queue, name, each), name=f"ganorigin-{name}",
                                      daemon=True)
            self._queue.threads.append(thread)
            thread.start()
        weakref.finalize(self, self._queue.close)

    @classmethod
    def for_device(cls, device: torch.device) -> Optional["ModelWorkers"]:
        """Workers for a CPU with at least two intra-op threads; on a CUDA GPU one worker for every model
        (``GPU_LANES``), which keeps the GPU busy while the caller's thread does the CPU's share of an analysis
        (degradation, provenance); ``None`` elsewhere."""
        threads = torch.get_num_threads()
        if device.type == "cuda":
            return cls(threads, GPU_LANES)
        return cls(threads) if device.type == "cpu" and threads >= 2 else None

    def submit(self, model: str, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on a worker thread of ``model``'s lane."""
        future: Future = Future()
        self._queue.put(self.lanes[model], future, fn)
        return future


def _work(queue: _Queue, lane: str, threads: int) -> None:
    torch.get_num_threads()  # torch sets each new thread's OpenMP threads on first use: do that first
    threadpool_limits(threads, user_api="openmp")  # then limit this thread only
    while (task := queue.take(lane)) is not None:
        _, future, fn = task
        del task
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as error:  # noqa: BLE001 - handed to the caller, as an executor does
                future.set_exception(error)
        del future, fn
