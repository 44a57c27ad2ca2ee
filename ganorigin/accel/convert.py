"""Acceleration as a transform: each function takes a model and returns a *new* module.

The model given is never changed. The new module shares every part it does not convert with
it (no copy of the unconverted weights), and replaces the parts it converts:

- CPU, bf16 or int8: every CLIP block becomes a :class:`~ganorigin.accel.packed.PackedResidualBlock`,
  every Community Forensics ViT block a :class:`~ganorigin.accel.packed.PackedViTBlock`, on bf16
  (oneDNN) or int8 (dynamic quantisation) linears.
- CPU, bf16: e4e's BatchNorms that follow a convolution are folded into it (exact algebra; the
  BatchNorm that *precedes* a zero-padded conv is left alone, since folding its shift would be
  wrong at the borders), its convolutions are packed with their LeakyReLUs fused, and it runs in
  channels_last under bf16 autocast. For int8 there is no faster e4e: dynamic quantisation has no
  convolutions, and packed fp32 convolutions ran 5x slower than eager ones with oneDNN limited to
  AVX2 (measured), so e4e stays exact fp32 there (:func:`converts`).
- CUDA and mps: autocast does the casting and fp32 master weights stay; the detectors' heads stay fp32.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..models.commfor import CommForDetector
from ..models.detector import UFDDetector
from ..models.encoder import BottleneckIRSE, E4EEncoder
from .memory import give_back
from .packed import PackedConv2d, PackedLinear, PackedResidualBlock, PackedViTBlock
from .precision import DTYPES


class Accelerated(nn.Module):
    """A converted model: runs ``module`` with its inputs in ``memory_format``, under autocast to
    ``precision`` when ``autocast_device`` is set. ``precision`` says what the model runs in."""

    def __init__(self, module: nn.Module, precision: str, autocast_device: Optional[str] = None,
                 channels_last: bool = False):
        super().__init__()
        self.module, self.precision = module, precision
        self.autocast_device, self.channels_last = autocast_device, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        cast = (torch.autocast(self.autocast_device, dtype=DTYPES[self.precision]) if self.autocast_device
                else contextlib.nullcontext())
        with cast:
            return self.module(x).float()


def precision_of(module: nn.Module) -> str:
    """The precision ``module`` runs in: an :class:`Accelerated` model's, else ``"fp32"``."""
    return module.precision if isinstance(module, Accelerated) else "fp32"


def replace_modules(root: nn.Module, replacements: dict) -> nn.Module:
    """A copy of ``root`` with the submodule at each dotted path in ``replacements`` replaced.

    Only the modules on the way to a replaced one are copied (shallowly); every other submodule,
    parameter and buffer is shared with ``root``, which is left as it was.
    """
    new_root = _shallow(root)
    copied = {id(new_root)}
    for path, child in replacements.items():
        parent, *names = new_root, *path.split(".")
        for name in names[:-1]:
            current = parent._modules[name]
            if id(current) not in copied:
                current = parent._modules[name] = _shallow(current)
                copied.add(id(current))
            parent = current
        parent._modules[names[-1]] = child
    return new_root


def _shallow(module: nn.Module) -> nn.Module:
    twin = copy.copy(module)
    twin._modules = dict(module._modules)
    return twin


def converts(kind: str, device: torch.device, precision: str) -> bool:
    """Whether there is a faster ``kind`` (``"detector"``, ``"encoder"``, ``"commfor"``) for ``precision`` on ``device``."""
    if precision == "fp32":
        return False
    return not (kind == "encoder" and device.type == "cpu" and precision == "int8")


def fast_detector(detector: UFDDetector, device: torch.device, precision: str) -> nn.Module:
    """The detector for ``precision`` on ``device``, as a new module (the fp32 head stays)."""
    if device.type != "cpu":
        visual = Accelerated(detector.visual, precision, autocast_device=device.type)
        return Accelerated(replace_modules(detector, {"visual": visual}), precision)
    replacements = {}
    for i, block in enumerate(detector.visual.transformer.resblocks):
        if PackedResidualBlock.supports(block):
            replacements[f"visual.transformer.resblocks.{i}"] = PackedResidualBlock(block, precision)
            give_back(block.parameters())  # one block's fp32 pages at a time
    return Accelerated(replace_modules(detector, replacements), precision)


def fast_commfor(commfor: CommForDetector, device: torch.device, precision: str) -> nn.Module:
    """Community Forensics for ``precision`` on ``device``, as a new module: on a CPU every ViT
    block packed (:class:`PackedViTBlock`), elsewhere the blocks under autocast; the patch
    embedding, final norm and head stay fp32."""
    if device.type != "cpu":
        blocks = Accelerated(commfor.vit.blocks, precision, autocast_device=device.type)
        return Accelerated(replace_modules(commfor, {"vit.blocks": blocks}), precision)
    replacements = {}
    for i, block in enumerate(commfor.vit.blocks):
        if PackedViTBlock.supports(block):
            replacements[f"vit.blocks.{i}"] = PackedViTBlock(block, precision)
            give_back(block.parameters())
    return Accelerated(replace_modules(commfor, replacements), precision)


def fold_encoder_batchnorms(encoder: E4EEncoder) -> dict:
    """``{path: module}`` replacing each conv followed by a BatchNorm with the folded conv, and that
    BatchNorm with ``nn.Identity`` (eval only; exact algebra)."""
    pairs = [("input_layer", encoder.input_layer, 0, 1)]
    for i, unit in enumerate(encoder.body):
        if isinstance(unit, BottleneckIRSE):
            pairs.append((f"body.{i}.res_layer", unit.res_layer, 3, 4))
            if isinstance(unit.shortcut_layer, nn.Sequential):
                pairs.append((f"body.{i}.shortcut_layer", unit.shortcut_layer, 0, 1))
    folded = {}
    for path, sequence, conv, norm in pairs:
        folded[f"{path}.{conv}"] = fuse_conv_bn_eval(sequence[conv], sequence[norm])
        folded[f"{path}.{norm}"] = nn.Identity()
    return folded


def fast_encoder(encoder: E4EEncoder, device: torch.device, precision: str) -> nn.Module:
    """The encoder for ``precision`` on ``device``, as a new module: BatchNorms folded and, on a
    CPU, every convolution and linear packed in the low dtype with LeakyReLUs fused."""
    replacements = fold_encoder_batchnorms(encoder)
    if device.type != "cpu":
        return Accelerated(replace_modules(encoder, replacements), precision, autocast_device=device.type)
    dtype = DTYPES[precision]
    for i, block in enumerate(encoder.styles):  # conv, LeakyReLU, conv, LeakyReLU, ...: fuse each pair
        for j in range(0, len(block.convs), 2):
            slope = block.convs[j + 1].negative_slope
            replacements[f"styles.{i}.convs.{j}"] = PackedConv2d(block.convs[j], dtype, "leaky_relu", [slope])
            replacements[f"styles.{i}.convs.{j + 1}"] = nn.Identity()
        linear = block.linear  # EqualLinear: its 1/sqrt(in) scale goes into the packed weight
        replacements[f"styles.{i}.linear"] = PackedLinear(linear.weight * linear.scale, linear.bias, dtype)
        give_back(block.parameters())
    originals = []
    for path, module in encoder.named_modules():
        if isinstance(module, nn.Conv2d) and path not in replacements:
            replacements[path] = PackedConv2d(module, dtype)
            originals += list(module.parameters())
            if len(originals) >= 32:
                give_back(originals)
                originals = []
    for path, module in list(replacements.items()):  # the folded convs
        if isinstance(module, nn.Conv2d):
            replacements[path] = PackedConv2d(module, dtype)
            originals += list(encoder.get_submodule(path).parameters())
    give_back(originals)
    return Accelerated(replace_modules(encoder, replacements), precision, autocast_device="cpu", channels_last=True)


def page_blocks(model: nn.Module) -> list:
    """The blocks whose pages an fp32 forward of ``model`` gives back as it goes
    (:func:`ganorigin.accel.memory.releasing_pages`)."""
    if isinstance(model, UFDDetector):
        return list(model.visual.transformer.resblocks)
    if isinstance(model, CommForDetector):
        return list(model.vit.blocks)
    return [model.input_layer, *model.body, *model.styles, model.latlayer1, model.latlayer2]
