"""Acceleration as a transform: each function takes a model and returns a *new* module.

The model given is never changed. The new module shares every part it does not convert with
it (no copy of the unconverted weights), and replaces the parts it converts:

- CPU, bf16 or int8: every CLIP block becomes a :class:`~ganorigin.accel.packed.PackedResidualBlock`,
  every Community Forensics ViT block a :class:`~ganorigin.accel.packed.PackedViTBlock`, on bf16
  (oneDNN) or int8 (dynamic quantisation) linears; the last block computes the class token alone
  where nothing else reads the others (:func:`reads_class_token_only`).
- CPU: e4e's BatchNorms that follow a convolution are folded into it (exact algebra; the
  BatchNorm that *precedes* a zero-padded conv is left alone, since folding its shift would be
  wrong at the borders) and it runs in channels_last; for bf16 its convolutions are packed with
  their LeakyReLUs fused, under bf16 autocast; for int8 they are dynamically quantised
  (:class:`~ganorigin.accel.packed.Int8Conv2d`, the widest as patches through one int8 linear:
  :class:`~ganorigin.accel.packed.Int8UnfoldedConv2d`).
- e4e's int8 weights use 7 bits on CPUs without VNNI (:func:`~ganorigin.accel.packed.int8_weight_bits`).
- CUDA and mps: autocast does the casting and fp32 master weights stay; the detectors' heads stay fp32. On
  CUDA each model's inference is replayed as CUDA graphs (:mod:`~ganorigin.accel.graphs`), one per batch size.
- The images a fast detector scores where rounding could change its verdict are scored again exactly
  (:class:`BorderlineExact`): UFD's near neither 0 nor 1, Community Forensics' near its threshold and band.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Optional, Sequence

import torch
from threadpoolctl import threadpool_limits
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..models.commfor import CommForDetector
from ..models.detector import UFDDetector
from ..models.encoder import BottleneckIRSE, E4EEncoder, SEModule, StyleBlocks
from .graphs import cuda_graphs_for, runs_hooks
from .memory import give_back, releasing_pages
from .packed import (Int8Conv2d, Int8Linear, Int8UnfoldedConv2d, PackedConv2d, PackedLinear, PackedResidualBlock,
                     PackedViTBlock, int8_weight_bits)
from .precision import DTYPES, cpu_class, cpu_has_bf16_matrix_units


class Accelerated(nn.Module):
    """A converted model: runs ``module`` with its inputs in ``memory_format``, under autocast to
    ``precision`` when ``autocast_device`` is set, its inference replayed as CUDA graphs when
    ``graphs_on`` is a CUDA device. ``precision`` says what the model runs in, ``agreement`` what the
    agreement probe measured when it accepted it (:func:`~ganorigin.accel.accelerate`; ``None`` before)."""

    def __init__(self, module: nn.Module, precision: str, autocast_device: Optional[str] = None,
                 channels_last: bool = False, graphs_on: Optional[torch.device] = None):
        super().__init__()
        self.module, self.precision, self.agreement = module, precision, None
        self.autocast_device, self.channels_last = autocast_device, channels_last
        self.graphs = cuda_graphs_for(self._forward, graphs_on) if graphs_on is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.graphs is not None and self.graphs.replays(x) and not runs_hooks(self.module):
            return self.graphs(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call("forward", x).float()

    def call(self, method: str, x: torch.Tensor, *args):
        """``module.<method>(x, *args)`` run as :meth:`forward` runs the module (``x`` in the memory format,
        under the autocast): for a model computed in parts, e.g. e4e's ``feature_maps`` and ``group_styles``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # No cache of cast weights: a CUDA graph must record each cast inside the forward it replays.
        cast = (torch.autocast(self.autocast_device, dtype=DTYPES[self.precision], cache_enabled=False)
                if self.autocast_device else contextlib.nullcontext())
        with cast:
            return (self.module if method == "forward" else getattr(self.module, method))(x, *args)  # hooks run


def base_model(module: nn.Module) -> nn.Module:
    """The model as built, under an :class:`Accelerated` or :class:`BorderlineExact` one (``module`` itself
    when it is not converted)."""
    if isinstance(module, BorderlineExact):
        return module.exact
    return module.module if isinstance(module, Accelerated) else module


def precision_of(module: nn.Module) -> str:
    """The precision ``module`` runs in: an :class:`Accelerated` model's (or the fast one's of a
    :class:`BorderlineExact`), else ``"fp32"``."""
    if isinstance(module, BorderlineExact):
        module = module.fast
    return module.precision if isinstance(module, Accelerated) else "fp32"


# The fast detectors score again exactly the images where rounding could change what they say.
# UFD: those it puts between BORDERLINE and 1 - BORDERLINE. int8 rounding moves UFD's logit by about 0.12 on
# average and by up to 0.36 (24 dev images, full-size random CLIP weights, AMD Zen 4, AVX-512-VNNI and AVX2:
# scratch measurement; weights and activations of both MLP layers each add a share). Where P(fake) is near 0
# or 1 that moves it by next to nothing (from the fast path's P 0.98 a logit moved 0.36 is P moved 0.0084),
# but near 0.5 by up to 0.09: nine times the 0.01 the fast paths promise, just where a verdict is decided,
# wherever the user puts UFD's threshold. Images the fast path scores outside the band keep its answer.
# GANORIGIN_EXACT_BORDERLINE sets the band (0 turns every second look off).
BORDERLINE = 0.02
# Community Forensics (its scores spread over the middle, its threshold fixed): those within COMMFOR_MARGIN of
# where its verdict changes (its threshold, and the edges of its "unsure" band). int8 moved its P(fake) by at
# most 0.0084 over 24 dev images (Zen 4, full-size random weights), and one image of them, 0.4017 in fp32,
# crossed its band's edge at 0.4.
COMMFOR_MARGIN = 0.01


def borderline_band() -> float:
    """The band :class:`BorderlineExact` reruns: ``GANORIGIN_EXACT_BORDERLINE``, else :data:`BORDERLINE`."""
    text = os.environ.get("GANORIGIN_EXACT_BORDERLINE", "").strip()
    try:
        band = float(text) if text else BORDERLINE
    except ValueError:
        band = -1.0
    if not 0.0 <= band < 0.5:
        raise ValueError(f"GANORIGIN_EXACT_BORDERLINE must be a number in [0, 0.5), got {text!r}.")
    return band


class BorderlineExact(nn.Module):
    """A fast detector (logits out) whose borderline images are scored again by the ``exact`` one: those
    whose fast P(fake) lies strictly between ``band`` and ``1 - band`` (no band: ``None``) or within
    ``margin`` of one of ``edges`` (the P(fake)s where its verdict changes) get the exact logit; the others
    keep the fast one. The exact model's memory-mapped weights are read back as it runs and given back
    block by block (:func:`~ganorigin.accel.memory.releasing_pages`), on all the intra-op threads torch had
    when this module was made, even on a worker lane limited to fewer (:mod:`~ganorigin.accel.workers`: the
    other lane is then mostly done). ``rescored`` counts the images scored again."""

    def __init__(self, fast: nn.Module, exact: nn.Module, band: Optional[float] = BORDERLINE,
                 edges: Sequence[float] = (), margin: float = 0.0):
        super().__init__()
        self.fast, self.exact, self.band = fast, exact, band
        self.edges, self.margin = tuple(edges), margin
        self.threads = torch.get_num_threads()
        self.rescored = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fast(x).float()
        probability = torch.sigmoid(logits)
        close = torch.zeros_like(probability, dtype=torch.bool)
        if self.band is not None:
            close |= (probability > self.band) & (probability < 1 - self.band)
        for edge in self.edges:
            close |= (probability - edge).abs() < self.margin
        close = close.nonzero().flatten()
        if len(close) == 0:
            return logits
        self.rescored += len(close)
        with releasing_pages(page_blocks(self.exact)), threadpool_limits(self.threads, user_api="openmp"):
            return logits.index_put((close,), self.exact(x[close]).float())


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


# CLIP's first block stays exact fp32 in int8 (1/24 of the MLP work): it takes the raw patch
# embeddings, where fine noise gives int8 its widest ranges, and its rounding passes through every later
# block. On the probe image (a face-like blob under fine noise) P(fake) then moved by 0.0008 instead of
# 0.0088 with AVX2 (7-bit weights), and 0.0012 instead of 0.0030 with AVX-512-VNNI; on 8 dev images it
# made no difference beyond noise (max 0.0061 against 0.0051, 0.0035 against 0.0027; these deltas move
# by about 0.002 from run to run). Full-size random weights; `python scripts/int8_variants.py`.
# On CPUs with native bf16 it runs in bf16 instead, whose rounding is far finer than int8's: its four
# matrix products take about 35 ms in bf16 against 84 ms exact (one thread, AMD EPYC Zen 4).
CLIP_INT8_EXACT_BLOCKS = 1
# Community Forensics' likewise: its P(fake) on 24 dev images moved from fp32 by up to 0.0146 (mean 0.0042)
# on AMD Zen 4 with every block in int8, 0.0155 (0.0048) on AVX2 and 0.0086 (0.0033) on AVX-512-VNNI
# (emulated), against 0.0055 (0.0022; the first block in bf16), 0.0060 (0.0027) and 0.0065 (0.0022; both
# exact) with its first block out of int8. Full-size random weights; one block is 1/12 of its work.
COMMFOR_INT8_EXACT_BLOCKS = 1


def int8_block_precision(index: int, precision: str, exact_blocks: int) -> Optional[str]:
    """The precision of a transformer's block ``index`` on the ``precision`` path, ``None`` for
    exact: in int8 its first ``exact_blocks`` blocks stay exact, or run in bf16 where the CPU has
    native bf16."""
    if precision != "int8" or index >= exact_blocks:
        return precision
    return "bf16" if cpu_has_bf16_matrix_units() else None


def reads_class_token_only(tower: nn.Module) -> bool:
    """True when what follows ``tower``'s last block reads the class token alone (open_clip's and
    timm's ViTs pooled by their class token, with no attention pooling and no token outputs), so
    that block may compute that token alone (``class_token_only``)."""
    if getattr(tower, "attn_pool", None) is not None or getattr(tower, "output_tokens", False):
        return False
    return getattr(tower, "pool_type", None) == "tok" or getattr(tower, "global_pool", None) == "token"


def fast_detector(detector: UFDDetector, device: torch.device, precision: str,
                  attention: Optional[str] = None) -> nn.Module:
    """The detector for ``precision`` on ``device``, as a new module (the fp32 head stays; in int8
    the first ``CLIP_INT8_EXACT_BLOCKS`` blocks stay exact, or run in bf16 where the CPU has native bf16;
    on a CPU the last block computes the class token alone, the only one CLIP's embedding reads, and
    attention's projections run as ``attention`` says: :func:`~ganorigin.accel.packed.attention_paths`)."""
    if device.type != "cpu":
        visual = Accelerated(detector.visual, precision, autocast_device=device.type)
        return Accelerated(replace_modules(detector, {"visual": visual}), precision, graphs_on=device)
    replacements = {}
    blocks = detector.visual.transformer.resblocks
    for i, block in enumerate(blocks):
        block_precision = int8_block_precision(i, precision, CLIP_INT8_EXACT_BLOCKS)
        if block_precision and PackedResidualBlock.supports(block):
            last = i == len(blocks) - 1 and reads_class_token_only(detector.visual)
            replacements[f"visual.transformer.resblocks.{i}"] = PackedResidualBlock(
                block, block_precision, last, attention if block_precision == precision else None)
            give_back(block.parameters())  # one block's fp32 pages at a time
    return Accelerated(replace_modules(detector, replacements), precision)


def fast_commfor(commfor: CommForDetector, device: torch.device, precision: str,
                 attention: Optional[str] = None) -> nn.Module:
    """Community Forensics for ``precision`` on ``device``, as a new module: on a CPU its ViT blocks
    packed (:class:`PackedViTBlock`; in int8 the first ``COMMFOR_INT8_EXACT_BLOCKS`` as
    :func:`fast_detector`'s first, the last for the class token alone; ``attention`` as there),
    elsewhere the blocks under autocast; the patch embedding, final norm and head stay fp32."""
    if device.type != "cpu":
        blocks = Accelerated(commfor.vit.blocks, precision, autocast_device=device.type)
        return Accelerated(replace_modules(commfor, {"vit.blocks": blocks}), precision, graphs_on=device)
    replacements = {}
    for i, block in enumerate(commfor.vit.blocks):
        block_precision = int8_block_precision(i, precision, COMMFOR_INT8_EXACT_BLOCKS)
        if block_precision and PackedViTBlock.supports(block):
            last = i == len(commfor.vit.blocks) - 1 and reads_class_token_only(commfor.vit)
            replacements[f"vit.blocks.{i}"] = PackedViTBlock(
                block, block_precision, last, attention if block_precision == precision else None)
            give_back(block.parameters())
    return Accelerated(replace_modules(commfor, replacements), precision)


# In int8, e4e's widest convolutions (reading the last stage's width, 512 channels: that stage and all the
# style blocks) run as one int8 product over their patches (Int8UnfoldedConv2d): oneDNN's int8 convolution
# is slow there. Per 512->512 3x3 convolution, one thread, patches against Int8Conv2d: on 32x32 maps 0.78x
# on AMD Zen 4 and AVX-512-VNNI (emulated), 0.93x on AVX2 (emulated); on 16x16 0.45-0.65x; on 8x8 and less
# 0.1-0.5x; stride 1 on 16x16 0.62-0.85x. Fewer channels on larger maps went the other way (64 channels on 128x128: 1.4-1.7x).
# On AVX2 (emulated) the patches won from 256 channels on too: one thread, 256->256 3x3 on 32x32 maps 6.6
# against 7.4 ms, stride 2 from 64x64 7.7 against 8.5, 256->512 13.0 against 17.3; 128 channels lost (9.4
# against 8.9). On AMD Zen 4 256->256 lost (4.0 against 3.7 ms), so there they start at 512.
# The style blocks (all reading 512 channels) run so in both fast paths, bf16 too. On AVX-512-BF16 without AMX
# (AMD Zen 4) their last three convolutions (on 8x8 maps and less) run in bf16 with their LeakyReLU fused instead
# (one thread, AMD EPYC Zen 4: 0.38, 0.24 and 0.11 ms against 0.44, 0.21 and 0.27 ms as int8 patches; on 16x16
# maps patches won, 1.49 against 1.98 ms). On Intel AMX the patches won at every size, against bf16 with its
# LeakyReLU fused (one thread, Sapphire Rapids, 12 different 512->512 convolutions in turn, so their weights
# come from memory as in e4e: on 32x32 maps 1.23 against 1.65 ms, 16x16 0.46 against 0.71, 8x8 0.28 against
# 0.36, 4x4 and 2x2 0.25 against 0.29-0.30), and they hold half the bytes.
STYLE_CONVS_IN_BF16 = 3


def unfolded_from(encoder: E4EEncoder) -> int:
    """In int8, e4e's convolutions reading at least this many channels run as patches (:class:`Int8UnfoldedConv2d`):
    its last stage's width; on AVX2 the one before too."""
    return encoder.config.channels[-2 if cpu_class() == "avx2" else -1]


class SharedInputStyleBlocks(nn.Module):
    """e4e's style ``blocks`` (a :class:`~ganorigin.models.encoder.StyleBlocks`, which this one stands for)
    with the first convolutions of the blocks that read the same map as one int8 product: ``first[k]`` (a
    :class:`Int8UnfoldedConv2d`) for the blocks at ``groups[k]``, whose own first convolution is then
    ``nn.Identity``. That map is quantised and gathered into patches once, and one product replaces
    several: per output channel the same integer sums, so the same styles, bitwise (one thread, 11 fine
    blocks on 64x64 maps: 268 against 312 ms on AVX2, emulated; 128 against 148 ms on AMD Zen 4). The bf16
    path runs them so too: on Intel AMX the three groups' took 30 against 62 ms as bf16 convolutions (one
    thread, Sapphire Rapids). Each image's styles are computed on their own, so they do not depend on its
    batch-mates."""

    def __init__(self, blocks: StyleBlocks, groups: Sequence[range], first: Sequence[Int8UnfoldedConv2d]):
        super().__init__()
        self.blocks, self.first = blocks, nn.ModuleList(first)
        self.groups = [tuple(indices) for indices in groups]

    def __getitem__(self, index: int) -> nn.Module:
        return self.blocks[index]

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self):
        return iter(self.blocks)

    def outputs(self, indices: range, features: torch.Tensor) -> list:
        """As :meth:`StyleBlocks.outputs <ganorigin.models.encoder.StyleBlocks.outputs>`."""
        if len(features) > 1:  # int8 quantises an input over its whole range: one image at a time
            return [torch.cat(styles) for styles in zip(*(self.outputs(indices, image) for image in features.split(1)))]
        if tuple(indices) not in self.groups:
            return self.blocks.outputs(indices, features)
        maps = self.first[self.groups.index(tuple(indices))](features).chunk(len(indices), dim=1)
        return [self.blocks[i](y) for i, y in zip(indices, maps)]


def style_groups(encoder: E4EEncoder) -> list:
    """The ranges of e4e's style blocks that read the same feature map (coarse, middle, fine), those of two or more."""
    return [indices for indices in encoder.style_groups if len(indices) >= 2]


def merged_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    """One convolution computing ``convs`` (alike but for their weights) on the same input, their outputs in turn."""
    first = convs[0]
    merged = nn.Conv2d(first.in_channels, sum(c.out_channels for c in convs), first.kernel_size, first.stride,
                       first.padding, first.dilation, first.groups, first.bias is not None, device="meta")
    merged.weight = nn.Parameter(torch.cat([c.weight.detach() for c in convs]), requires_grad=False)
    if first.bias is not None:
        merged.bias = nn.Parameter(torch.cat([c.bias.detach() for c in convs]), requires_grad=False)
    return merged


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
    CPU, the style blocks' convolutions in int8 as patches (:class:`Int8UnfoldedConv2d`; those on small
    maps as :data:`STYLE_CONVS_IN_BF16` says; the blocks that read the same map sharing their first,
    :class:`SharedInputStyleBlocks`), LeakyReLUs fused, and every other convolution and linear packed in
    bf16, or in int8 with its input quantised per call (:class:`Int8Conv2d`; those reading the last
    stage's width as patches; the gates' exact)."""
    replacements = fold_encoder_batchnorms(encoder)
    if device.type != "cpu":
        return Accelerated(replace_modules(encoder, replacements), precision, autocast_device=device.type,
                           graphs_on=device)
    int8, bits, dtype = precision == "int8", int8_weight_bits(encoder=True), DTYPES.get(precision, torch.bfloat16)
    small_in_bf16 = cpu_class() == "avx512_bf16"

    def packed(conv: nn.Conv2d) -> nn.Module:
        if not int8:
            return PackedConv2d(conv, dtype)
        wide = conv.in_channels >= unfolded_from(encoder)
        return (Int8UnfoldedConv2d if wide else Int8Conv2d)(conv, bits)

    groups = style_groups(encoder)  # in int8 on both paths: see SharedInputStyleBlocks
    first = [Int8UnfoldedConv2d(merged_conv([encoder.styles[i].convs[0] for i in indices]), bits, "leaky_relu",
                                [encoder.styles[indices[0]].convs[1].negative_slope]) for indices in groups]
    for i, block in enumerate(encoder.styles):  # conv, LeakyReLU, conv, LeakyReLU, ...: each pair fused
        for j in range(0, len(block.convs), 2):
            slope = block.convs[j + 1].negative_slope
            replacements[f"styles.{i}.convs.{j + 1}"] = nn.Identity()
            if j == 0 and any(i in indices for indices in groups):
                replacements[f"styles.{i}.convs.0"] = nn.Identity()  # SharedInputStyleBlocks runs it
                continue
            from_end = (len(block.convs) - j) // 2  # 1 for the last conv
            if not (small_in_bf16 and from_end <= STYLE_CONVS_IN_BF16):  # they read the last stage's width
                replacements[f"styles.{i}.convs.{j}"] = Int8UnfoldedConv2d(block.convs[j], bits, "leaky_relu", [slope])
            else:
                replacements[f"styles.{i}.convs.{j}"] = PackedConv2d(block.convs[j], dtype, "leaky_relu", [slope])
        linear = block.linear  # EqualLinear: its 1/sqrt(in) scale goes into the packed weight
        weight = linear.weight * linear.scale
        replacements[f"styles.{i}.linear"] = (Int8Linear(weight, linear.bias, weight_bits=bits) if int8
                                              else PackedLinear(weight, linear.bias, dtype))
        give_back(block.parameters())

    # int8 leaves the squeeze-and-excitation gates' 1x1 convolutions on 1x1 maps exact: there quantising the
    # input costs ten times the product (0.13 against 0.01 ms, one thread, AMD EPYC Zen 4)
    exact = {f"{path}.{fc}" for path, module in encoder.named_modules() if isinstance(module, SEModule)
             for fc in ("fc1", "fc2")} if int8 else set()
    originals = []
    for path, module in encoder.named_modules():
        if isinstance(module, nn.Conv2d) and path not in replacements and path not in exact:
            replacements[path] = packed(module)
            originals += list(module.parameters())
            if len(originals) >= 32:
                give_back(originals)
                originals = []
    for path, module in list(replacements.items()):  # the folded convs
        if isinstance(module, nn.Conv2d):
            replacements[path] = packed(module)
            originals += list(encoder.get_submodule(path).parameters())
    give_back(originals)
    converted = replace_modules(encoder, replacements)
    styles = SharedInputStyleBlocks(converted.styles, groups, first)
    return Accelerated(replace_modules(converted, {"styles": styles}), precision,
                       autocast_device=None if int8 else "cpu", channels_last=True)


def page_blocks(model: nn.Module) -> list:
    """The blocks whose pages an fp32 forward of ``model`` gives back as it goes
    (:func:`ganorigin.accel.memory.releasing_pages`)."""
    if isinstance(model, UFDDetector):
        return list(model.visual.transformer.resblocks)
    if isinstance(model, CommForDetector):
        return list(model.vit.blocks)
    if isinstance(model, E4EEncoder):
        return [model.input_layer, *model.body, *model.styles, model.latlayer1, model.latlayer2]
    return []
