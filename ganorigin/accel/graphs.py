"""CUDA graphs: a model's whole forward replayed as one launch.

One image at a time, a GPU spends most of a forward waiting for Python to launch its hundreds of small
kernels. A CUDA graph records those launches once, for one input
shape, and replays them with one call: the same kernels on the same memory, so the same numbers. Only
inference is replayed: a forward that needs gradients (a heat map's) or runs hooks (the agreement probe's)
runs as usual."""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Optional

import torch

logger = logging.getLogger(__name__)

MAX_GRAPHS = 8  # input shapes (batch sizes) recorded per model; others run as usual


class CUDAGraphs:
    """Runs ``forward`` (a tensor -> tensor function of fixed weights) by replaying a CUDA graph recorded for
    the input's shape and dtype the first time it is seen, up to ``max_graphs`` shapes. Thread-safe: one
    replay at a time, since a graph's input and output live in fixed memory."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], max_graphs: int = MAX_GRAPHS):
        self.forward, self.max_graphs = forward, max_graphs
        self._graphs: dict = {}
        self._lock = threading.Lock()

    def replays(self, x: torch.Tensor) -> bool:
        """Whether :meth:`__call__` would replay a graph for ``x``: a CUDA tensor, no gradients wanted, and its
        shape recorded already or room to record it."""
        return (x.is_cuda and not torch.is_grad_enabled()
                and (self._key(x) in self._graphs or len(self._graphs) < self.max_graphs))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` from the graph for ``x``'s shape, recording it first when it is new. Where recording
        fails, this and every later call runs ``forward`` as usual, and a warning says so."""
        with self._lock, torch.inference_mode():
            graph = self._graphs.get(self._key(x))
            if graph is None:
                try:
                    graph = self._graphs[self._key(x)] = self._record(x)
                except RuntimeError as error:
                    self.max_graphs = len(self._graphs)  # record no more
                    logger.warning("Could not record a CUDA graph (%s); the model runs without.", error)
                    return self.forward(x)
            static_input, replay, static_output = graph
            static_input.copy_(x)
            replay.replay()
            return static_output.clone()

    def _record(self, x: torch.Tensor) -> tuple:
        static_input = x.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm up off the default stream: libraries set themselves up here
            for _ in range(2):
                self.forward(static_input)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads may use the GPU
            static_output = self.forward(static_input)
        return static_input, graph, static_output

    @staticmethod
    def _key(x: torch.Tensor) -> tuple:
        return tuple(x.shape), x.dtype, x.device

    def __len__(self) -> int:
        return len(self._graphs)


def runs_hooks(module: torch.nn.Module) -> bool:
    """Whether a forward of ``module`` runs hooks (global ones, or its modules'): a replay would skip them."""
    from torch.nn.modules import module as modules

    return bool(modules._global_forward_hooks or modules._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in module.modules()))


def cuda_graphs_for(forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> Optional[CUDAGraphs]:
    """:class:`CUDAGraphs` of ``forward`` on a CUDA ``device`` (unless ``GANORIGIN_CUDA_GRAPHS=0``); ``None``
    elsewhere."""
    if device.type != "cuda" or os.environ.get("GANORIGIN_CUDA_GRAPHS", "1") == "0":
        return None
    return CUDAGraphs(forward)
