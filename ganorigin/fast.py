"""The fast inference path: reduced-precision matrix maths where the hardware has it, checked
against exact fp32 once per machine and weights, with an automatic fall-back when it disagrees.

``precision`` (or ``GANORIGIN_PRECISION``) is one of:

- ``"auto"`` (default): bf16 on CPUs with native bf16 matrix units (Intel AMX, ``amx_bf16`` in
  /proc/cpuinfo), bf16 or fp16 on CUDA, exact fp32 everywhere else;
- ``"fp32"``: the exact original numerics (eager fp32, modules as loaded);
- ``"bf16"`` / ``"fp16"`` (fp16 on CUDA only): forced, still agreement-checked.

On CPU the reduced-precision path stores every conv/linear weight once in oneDNN's blocked bf16
layout (no per-call weight reorder) and fuses activations into them: CLIP's blocks run packed
linears with bf16 attention, QuickGELU fused as ``swish(1.702 x) / 1.702``, and an fp32 residual
stream with fp32 LayerNorms; e4e's BatchNorms that follow a convolution are folded into it (exact
algebra; the BatchNorm that *precedes* a zero-padded conv is left alone, since folding its shift
would be wrong at the borders), its convolutions are packed, LeakyReLUs fused, and it runs in
channels_last. On CUDA, autocast does the casting and fp32 master weights stay.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .checkpoints import release_file_pages, strict_load
from .detector import UFDDetector
from .encoder import BottleneckIRSE, E4EEncoder

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Agreement the fast path must keep with fp32 on the probe image (the benchmark's bar is 0.01).
MAX_FAKE_PROBABILITY_DELTA = 0.005
MAX_ATTRIBUTION_PROBABILITY_DELTA = 0.01
PROBE_SIZE = 256
FAST_PATH_VERSION = "packed-3"  # part of the cached verdicts' key: a new fast path is checked afresh


def cpu_has_bf16_matrix_units() -> bool:
    """True on CPUs with Intel AMX bf16 tiles (Sapphire Rapids and later), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


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


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def inference_context(module: nn.Module, device: torch.device):
    """What a prepared detector or encoder runs under: autocast to its precision, except the CPU
    detector, whose packed blocks cast for themselves (its patch embedding, norms and projection
    stay exact fp32)."""
    if isinstance(module, UFDDetector) and device.type == "cpu":
        return contextlib.nullcontext()
    return autocast(device, prepared_precision(module))


def fold_encoder_batchnorms(encoder: E4EEncoder) -> None:
    """Fold every BatchNorm that directly follows a conv into that conv (in place, eval only)."""
    pairs = [(encoder.input_layer, 0, 1)]
    for unit in encoder.body:
        if isinstance(unit, BottleneckIRSE):
            pairs.append((unit.res_layer, 3, 4))
            if isinstance(unit.shortcut_layer, nn.Sequential):
                pairs.append((unit.shortcut_layer, 0, 1))
    originals = []
    for sequence, conv, norm in pairs:
        originals += [*sequence[conv].parameters(), *sequence[norm].parameters(), *sequence[norm].buffers()]
        sequence[conv], sequence[norm] = fuse_conv_bn_eval(sequence[conv], sequence[norm]), nn.Identity()
    release_file_pages(originals)


@contextlib.contextmanager
def releasing_pages(model: nn.Module, every_bytes: int = 128 * 2**20):
    """While active, the blocks of ``model`` (CLIP transformer blocks; e4e stage units and style
    heads) give back the pages of their memory-mapped weights after their forward, about every
    ``every_bytes``, so an fp32 forward (the agreement probe) never holds the whole fp32
    checkpoint in memory."""
    if isinstance(model, UFDDetector):
        blocks = list(model.visual.transformer.resblocks)
    else:
        blocks = [model.input_layer, *model.body, *model.styles, model.latlayer1, model.latlayer2]
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


def prepared_precision(module: nn.Module) -> str:
    """The precision ``module`` was prepared for ("fp32" when untouched)."""
    return getattr(module, "_ganorigin_precision", "fp32")


def prepare_detector(detector: UFDDetector, device: torch.device, precision: str) -> None:
    """Make ``detector`` ready for ``precision`` in place (the fp32 head is left as it is)."""
    if precision == "fp32":
        return
    detector._ganorigin_precision = precision
    if device.type != "cpu":
        return  # CUDA autocast casts on the fly and keeps fp32 master weights
    blocks = detector.visual.transformer.resblocks
    for i, block in enumerate(blocks):
        if PackedResidualBlock.supports(block):
            blocks[i] = PackedResidualBlock(block, DTYPES[precision])
            _give_back(block.parameters())  # one block's fp32 pages at a time


def prepare_encoder(encoder: E4EEncoder, device: torch.device, precision: str) -> None:
    """Fold BatchNorms, switch to channels_last and (on CPU) pack the convolutions in the low dtype."""
    if precision == "fp32":
        return
    encoder._ganorigin_precision = precision
    fold_encoder_batchnorms(encoder)
    if device.type == "cpu":
        dtype = DTYPES[precision]
        for block in encoder.styles:  # conv, LeakyReLU, conv, LeakyReLU, ...: fuse each pair
            convs, originals = block.convs, list(block.parameters())
            for i in range(0, len(convs), 2):
                convs[i] = PackedConv2d(convs[i], dtype, "leaky_relu", [convs[i + 1].negative_slope])
                convs[i + 1] = nn.Identity()
            linear = block.linear  # EqualLinear: its 1/sqrt(in) scale goes into the packed weight
            block.linear = PackedLinear(linear.weight * linear.scale, linear.bias, dtype)
            _give_back(originals)
        convs = [(parent, name, child) for parent in encoder.modules() for name, child in parent.named_children()
                 if isinstance(child, nn.Conv2d)]
        originals = []
        for i, (parent, name, conv) in enumerate(convs, 1):
            setattr(parent, name, PackedConv2d(conv, dtype))
            originals += list(conv.parameters())
            if i % 16 == 0 or i == len(convs):
                _give_back(originals)
                originals = []
    encoder.to(memory_format=torch.channels_last)


def _give_back(originals) -> None:
    """Memory of a converted part: the file pages behind its fp32 weights, and the conversion's
    freed temporaries (glibc keeps freed heap memory, which would add a few hundred MB to the
    peak)."""
    release_file_pages(originals)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


class PackedLinear(nn.Module):
    """A linear layer whose weight is stored once in oneDNN's blocked layout for the CPU's matrix
    units (``dtype``, usually bf16), with an optional fused activation (``"none"`` or ``"swish"``).
    Inputs are cast to ``dtype``; the output is in ``dtype``. When a gradient is wanted (the
    explanation heat map), it runs unfused on the unpacked weight so autograd can follow."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype, activation: str = "none"):
        super().__init__()
        self.dtype, self.activation = dtype, activation
        self.out_features, self.in_features = weight.shape
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype))
        self.bias = None if bias is None else bias.detach().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            y = F.linear(x.to(self.dtype), self.packed_weight.to_dense(), self.bias)
            return F.silu(y) if self.activation == "swish" else y
        flat = x.reshape(-1, self.in_features).to(self.dtype)
        y = torch.ops.mkldnn._linear_pointwise(flat, self.packed_weight, self.bias, self.activation, [], "")
        return y.view(*x.shape[:-1], self.out_features)


class PackedConv2d(nn.Module):
    """``nn.Conv2d`` with its weight stored once in oneDNN's blocked layout (``dtype``) and an
    optional fused activation (``"leaky_relu"`` with ``[slope]``, ``"relu"``, ...)."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, activation: str = "none", scalars: Sequence = ()):
        super().__init__()
        self.dtype, self.activation, self.scalars = dtype, activation, list(scalars)
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        weight = conv.weight.detach().to(dtype).to_mkldnn()
        self.packed_weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight, self.padding, self.stride, self.dilation, self.groups
        )
        self.bias = None if conv.bias is None else conv.bias.detach().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(self.dtype), self.packed_weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            self.activation, self.scalars, "",
        )


QUICK_GELU_SCALE = 1.702  # QuickGELU(y) = y * sigmoid(1.702 y) = swish(1.702 y) / 1.702


class PackedResidualBlock(nn.Module):
    """OpenAI CLIP's transformer block (open_clip ``ResidualAttentionBlock`` with QuickGELU and no
    LayerScale) on packed low-precision linears: LayerNorms and the residual stream stay fp32,
    attention runs on the low-precision q/k/v (fp32 accumulation), and QuickGELU is fused into the
    first MLP layer as swish, with its 1/1.702 folded into the second."""

    def __init__(self, block: nn.Module, dtype: torch.dtype):
        super().__init__()
        attn, mlp = block.attn, block.mlp
        self.ln_1, self.ln_2 = block.ln_1, block.ln_2
        self.heads, self.batch_first = attn.num_heads, attn.batch_first
        self.qkv = PackedLinear(attn.in_proj_weight, attn.in_proj_bias, dtype)
        self.out = PackedLinear(attn.out_proj.weight, attn.out_proj.bias, dtype)
        self.fc = PackedLinear(mlp.c_fc.weight * QUICK_GELU_SCALE, mlp.c_fc.bias * QUICK_GELU_SCALE, dtype, "swish")
        self.proj = PackedLinear(mlp.c_proj.weight / QUICK_GELU_SCALE, mlp.c_proj.bias, dtype)

    @staticmethod
    def supports(block: nn.Module) -> bool:
        """True for the blocks of OpenAI CLIP's image tower; anything else is left as it is."""
        from open_clip.transformer import QuickGELU

        return (
            isinstance(getattr(block, "attn", None), nn.MultiheadAttention)
            and block.attn.in_proj_weight is not None
            and isinstance(block.mlp.gelu, QuickGELU)
            and isinstance(block.ls_1, nn.Identity)
            and isinstance(block.ls_2, nn.Identity)
            and not hasattr(block, "ln_1_kv")
        )

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("PackedResidualBlock runs the image tower, which has no attention mask.")
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = x.float()
        batch, tokens, width = x.shape
        qkv = self.qkv(self.ln_1(x)).view(batch, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
        x = x + self.out(attended).float()
        x = x + self.proj(self.fc(self.ln_2(x))).float()
        return x if self.batch_first else x.transpose(0, 1)


def probe_images() -> list[Image.Image]:
    """The agreement check's one deterministic image: a smooth face-like blob (low frequencies)
    under fine noise (high frequencies). One image: each costs a full fp32 forward of both models
    on the first start."""
    yy, xx = np.mgrid[0:PROBE_SIZE, 0:PROBE_SIZE] / PROBE_SIZE
    blob = np.exp(-((xx - 0.5) ** 2 / 0.06 + (yy - 0.45) ** 2 / 0.1))
    smooth = np.stack([0.3 + 0.6 * blob, 0.25 + 0.5 * blob, 0.2 + 0.4 * blob * yy], axis=-1)
    noise = np.random.default_rng(0).random((PROBE_SIZE, PROBE_SIZE, 3))
    return [Image.fromarray(np.clip(255 * (0.8 * smooth + 0.2 * noise), 0, 255).astype(np.uint8), "RGB")]


def compare(reference: tuple, fast: tuple) -> dict:
    """Agreement of ``(fake_probabilities, attribution_probabilities)`` pairs, per model: the fake
    probability depends only on the detector, the attribution only on the encoder."""
    reference, fast = [[np.asarray(a, dtype=np.float64) for a in pair] for pair in (reference, fast)]
    fake_delta = float(np.max(np.abs(reference[0] - fast[0])))
    gan_delta = float(np.max(np.abs(reference[1] - fast[1])))
    same_argmax = bool((reference[1].argmax(1) == fast[1].argmax(1)).all())
    detector_ok = fake_delta <= MAX_FAKE_PROBABILITY_DELTA
    encoder_ok = gan_delta <= MAX_ATTRIBUTION_PROBABILITY_DELTA and same_argmax
    return {"ok": detector_ok and encoder_ok, "detector_ok": detector_ok, "encoder_ok": encoder_ok,
            "max_fake_probability_delta": fake_delta, "max_attribution_probability_delta": gan_delta}


def check_key(weight_files: Optional[list], device: torch.device, precision: str) -> Optional[str]:
    """A cache key for one (weights, machine, torch, precision); ``None`` when the weights are unknown."""
    if not weight_files:
        return None
    parts = [precision, FAST_PATH_VERSION, device.type, torch.__version__, cpu_model_name()]
    for path in weight_files:
        stat = Path(path).stat()
        parts.append(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _check_cache_file() -> Path:
    root = os.environ.get("GANORIGIN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "ganorigin"
    )
    return Path(root) / "precision-checks.json"


def cached_check(key: Optional[str]) -> Optional[dict]:
    if key is None:
        return None
    try:
        return json.loads(_check_cache_file().read_text()).get(key)
    except (OSError, ValueError):
        return None


def store_check(key: Optional[str], result: dict) -> None:
    if key is None:
        return
    path = _check_cache_file()
    try:
        checks = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        checks = {}
    checks[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(checks, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("Could not cache the precision check in %s (%s); it will run again next start.", path, e)


def rebuild_fp32(module: nn.Module, state: dict) -> nn.Module:
    """A fresh exact-fp32 copy of a detector or encoder from a state dict taken before
    :func:`prepare_detector` / :func:`prepare_encoder` changed it."""
    with torch.device("meta"):
        if isinstance(module, UFDDetector):
            fresh = UFDDetector(module.vision_cfg, embed_dim=module.fc.in_features)
        else:
            fresh = E4EEncoder(module.config)
    strict_load(fresh, state, Path("<fp32 weights>"))
    if isinstance(module, E4EEncoder):
        fresh.latent_avg = module.latent_avg
    return fresh
