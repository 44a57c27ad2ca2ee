"""Reading checkpoint files safely (no code runs) and putting their tensors into modules."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..errors import WeightsFormatError


def load_torch_file(path: Path) -> dict:
    """``torch.load`` with ``weights_only=True`` (no code runs), memory-mapped when the file allows."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Files in the legacy (pre-1.6) serialization cannot be memory-mapped.
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsFormatError(
            f"Could not read {path} as a PyTorch checkpoint with weights_only=True "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "It may be truncated, or hold Python objects other than tensors."
        ) from e


def load_tensors(path: Path, prefix: str = "") -> dict:
    """The tensors whose names start with ``prefix`` from ``.safetensors`` or a torch file; the
    others are never read into memory (safetensors reads by key, torch files are memory-mapped)."""
    if Path(path).suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        except Exception as e:
            raise WeightsFormatError(f"Could not read {path} as safetensors ({e}).") from e
    sd = load_torch_file(path)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict):
        raise WeightsFormatError(f"{path} holds a {type(sd).__name__}, not a state dict of tensors.")
    return {k: v for k, v in sd.items() if k.startswith(prefix)}


def strict_load(module: nn.Module, state_dict: dict, path: Path) -> None:
    """Load every key, exactly: a mismatch names the file and the keys, never passes silently.

    ``assign=True`` lets a module built on the meta device take the tensors without ever
    allocating random weights.
    """
    try:
        module.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as e:
        raise WeightsFormatError(
            f"{path} does not fit {type(module).__name__}: {str(e)[:1500]}"
        ) from e
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if leftover:
        raise WeightsFormatError(f"{path} left {leftover[:5]} of {type(module).__name__} unset.")
