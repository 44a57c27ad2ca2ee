"""Memory while converting: give back the pages of memory-mapped fp32 weights once they are used.

The pages are clean copies of the checkpoint file: touched again, they are re-read from disk, so
giving them back never changes a value. It keeps a conversion (fp32 file -> packed bf16) or an
fp32 probe forward from holding the whole fp32 checkpoint in memory next to the converted copy.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import re
import sys
from typing import Iterable, Sequence

import torch
from torch import nn

_MADV_DONTNEED = 4  # Linux


def release_file_pages(tensors: Iterable[torch.Tensor]) -> None:
    """Let the kernel drop the resident pages behind tensors memory-mapped from a file.

    Tensors that are not wholly inside a file mapping (ordinary memory) are left alone; a no-op
    off Linux.
    """
    mappings = _file_mappings()
    if not mappings:
        return
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    page = mmap.PAGESIZE
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.layout != torch.strided:
            continue
        storage = tensor.untyped_storage()
        start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        if not any(low <= start and end <= high for low, high in mappings):
            continue
        first, last = -(-start // page) * page, end // page * page  # whole pages only
        if last > first:
            madvise(first, last - first, _MADV_DONTNEED)


def give_back(originals: Iterable[torch.Tensor]) -> None:
    """Memory of a converted part: the file pages behind its fp32 weights, and the conversion's
    freed temporaries (glibc keeps freed heap memory, which would add a few hundred MB to the peak)."""
    release_file_pages(originals)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


@contextlib.contextmanager
def releasing_pages(blocks: Sequence[nn.Module], every_bytes: int = 128 * 2**20):
    """While active, ``blocks`` give back the pages of their memory-mapped weights after their
    forward, about every ``every_bytes``, so an fp32 forward never holds the whole checkpoint."""
    pending, pending_bytes = [], 0

    def after_forward(block, args, output):
        nonlocal pending_bytes
        pending.extend(block.parameters())
        pending_bytes += sum(t.nbytes for t in block.parameters())
        if pending_bytes >= every_bytes:
            release_file_pages(pending)
            pending.clear()
            pending_bytes = 0

    hooks = [block.register_forward_hook(after_forward) for block in blocks]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        release_file_pages(pending)


_MAPPING = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+ +/.*$", re.MULTILINE)


def _file_mappings() -> list:
    """``(start, end)`` of this process's mappings backed by a file (from /proc/self/maps)."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        with open("/proc/self/maps", "rb") as f:
            maps = f.read()
    except OSError:
        return []
    return [(int(m.group(1), 16), int(m.group(2), 16)) for m in _MAPPING.finditer(maps)
            if not m.group(0).endswith(b" (deleted)")]
