"""Linear and convolution layers whose weights are stored once in the layout the CPU's matrix
kernels read (no per-call weight reorder), with fused activations, and the transformer blocks built
on them (OpenAI CLIP's, timm's ViT's), all on oneDNN: bf16 (for CPUs with native bf16) and int8 with
activations quantised per call (dynamic quantisation; for CPUs with VNNI or AVX2 only)."""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .precision import cpu_class, cpu_has_bf16_matrix_units

# The activations a packed linear can fuse (oneDNN post-ops), and what each computes when run unfused
# (given the output and the activation's scalars, e.g. a LeakyReLU's slope).
ACTIVATIONS = {"none": lambda y: y, "swish": F.silu, "gelu": F.gelu, "leaky_relu": F.leaky_relu}
_ONEDNN_ALGORITHM = {"gelu": "none"}  # exact (erf) GELU, as nn.GELU()


class PackedLinear(nn.Module):
    """A linear layer whose weight is stored once in oneDNN's blocked layout for the CPU's matrix
    units (``dtype``, usually bf16), with an optional fused activation (a key of ``ACTIVATIONS``).
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
            return ACTIVATIONS[self.activation](y)
        flat = x.reshape(-1, self.in_features).to(self.dtype)
        y = torch.ops.mkldnn._linear_pointwise(flat, self.packed_weight, self.bias, self.activation, [],
                                               _ONEDNN_ALGORITHM.get(self.activation, ""))
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


def int8_weight_bits(encoder: bool = False) -> int:
    """Bits of the int8 paths' weights on this CPU: 8, except e4e's (``encoder``) on CPUs without VNNI
    (class ``avx2``), which get 7. There the int8 dot product (``vpmaddubsw``) adds pairs of uint8 x
    int8 products in 16 bits, which full 8-bit weights and activations can saturate (255 * 127 * 2 >
    32767; 255 * 63 * 2 is not). Measured on AVX2 (emulated), full-size random weights: with 8-bit
    weights e4e's codes moved up to 8.8% (relative) from fp32 against 3.0% with 7-bit ones, while the
    transformers' linears, whose inputs (normalised tokens, GELU outputs) seldom come near that limit,
    lost more to 7-bit rounding than to saturation: CLIP's P(fake) on the probe image moved 0.0059 with 7
    bits against 0.0003 with 8, Community Forensics' 0.0136 against 0.0033."""
    return 7 if encoder and cpu_class() == "avx2" else 8


def quantize_weight(weight: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``weight`` as a per-output-channel symmetric int8 tensor using ``bits`` bits (``qint8``)."""
    weight = weight.detach().float()
    levels = 2 ** (bits - 1) - 1
    scales = (weight.abs().amax(dim=tuple(range(1, weight.dim()))) / levels).clamp_min(1e-12).double()
    zeros = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch 2.14 deprecates its quantized tensors in favour of torchao, which has no build for
        # this torch yet; these ops still run.
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor", category=UserWarning)
        return torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)


def quantize_input(x: torch.Tensor, memory: torch.Tensor) -> tuple:
    """``x`` as uint8 over its own range, widened to include 0 (so zero padding stays exact):
    ``(values, scale, zero_point)``; ``memory`` is ``x``'s memory viewed as one dimension."""
    low, high = torch.aminmax(memory)
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = max((high - low) / 255, 1e-12)
    zero_point = int(round(-low / scale))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor", category=UserWarning)
        quantized = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8)
    # its bytes are the uint8 values: viewed, not copied as ``int_repr()`` would (0.48 against 0.79 ms
    # for e4e's largest input, one thread)
    values = torch.empty(0, dtype=torch.uint8).set_(quantized.untyped_storage(), quantized.storage_offset(),
                                                   quantized.shape, quantized.stride())
    return values, scale, zero_point


def quantize_tokens(x: torch.Tensor) -> tuple:
    """The rows (tokens) of 2-D ``x`` as uint8, each symmetric over its own largest magnitude around
    the zero point 128: ``(values, scales)``, a token's value being ``scale * (q - 128) / 127``."""
    scales = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    return (x * (127.0 / scales)).round_().add_(128).to(torch.uint8), scales


class Int8Linear(nn.Module):
    """A linear layer on oneDNN's int8 kernels: per-output-channel int8 weights
    (:func:`quantize_weight`) packed once, activations quantised to 8 bits per call over their own
    range (dynamic quantisation), fp32 out, with an optional fused activation (a key of
    ``ACTIVATIONS``, with its ``scalars``). With a gradient wanted (the heat map) it runs on the
    dequantised weight."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str = "none",
                 weight_bits: int = 8, scalars: Sequence = ()):
        super().__init__()
        self.activation, self.scalars = activation, list(scalars)
        self.out_features, self.in_features = weight.shape
        qweight = quantize_weight(weight, weight_bits)
        self.weight_scales = qweight.q_per_channel_scales().float()
        self.weight_zero_points = torch.zeros(self.out_features, dtype=torch.long)
        self.packed = torch.ops.onednn.qlinear_prepack(qweight.int_repr(), None)
        self.bias = None if bias is None else bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            weight = self.packed.to_dense().T.float() * self.weight_scales[:, None]
            return ACTIVATIONS[self.activation](F.linear(x.float(), weight, self.bias), *self.scalars)
        flat = x.reshape(-1, self.in_features).float().contiguous()
        return self.quantized_forward(*quantize_input(flat, flat.view(-1))).view(*x.shape[:-1], self.out_features)

    def quantized_forward(self, values: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
        """The layer on inputs already quantised: uint8 ``values`` (rows of ``in_features``) meaning
        ``scale * (values - zero_point)``."""
        return torch.ops.onednn.qlinear_pointwise(
            values, scale, zero_point, self.packed, self.weight_scales, self.weight_zero_points, self.bias,
            1.0, 0, torch.float32, self.activation, self.scalars, _ONEDNN_ALGORITHM.get(self.activation, ""),
        )


class TwoPartInt8Linear(nn.Module):
    """A linear layer on oneDNN's int8 kernels with about twice int8's weight precision, for layers
    whose rounding shows in the answer (attention's projections). The weight is rounded to int8 per
    output channel, and the remainder of that rounding to int8 again; both parts are packed as one
    weight of twice the outputs, so one kernel call does the work of two :class:`Int8Linear`.
    Activations are quantised per token (:func:`quantize_tokens`), so each token keeps its own
    range. fp32 out, no fused activation."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], weight_bits: int = 8):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        coarse = quantize_weight(weight, weight_bits)
        remainder = quantize_weight(weight.detach().float() - coarse.dequantize(), weight_bits)
        parts = torch.cat([coarse.int_repr(), remainder.int_repr()])
        self.weight_scales = torch.cat([coarse.q_per_channel_scales(), remainder.q_per_channel_scales()]).float()
        self.weight_zero_points = torch.zeros(2 * self.out_features, dtype=torch.long)
        self.packed = torch.ops.onednn.qlinear_prepack(parts, None)
        self.bias = None if bias is None else bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            coarse, remainder = (self.packed.to_dense().T.float() * self.weight_scales[:, None]).chunk(2)
            return F.linear(x.float(), coarse + remainder, self.bias)
        qx, token_scales = quantize_tokens(x.reshape(-1, self.in_features).float())
        both = torch.ops.onednn.qlinear_pointwise(
            qx, 1 / 127.0, 128, self.packed, self.weight_scales, self.weight_zero_points, None,
            1.0, 0, torch.float32, "none", [], "",
        )
        y = (both[:, : self.out_features] + both[:, self.out_features :]).mul_(token_scales)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.view(*x.shape[:-1], self.out_features)


class Int8Conv2d(nn.Module):
    """``nn.Conv2d`` on oneDNN's int8 kernels, as :class:`Int8Linear`: int8 weights packed once, the
    input quantised per call, fp32 out. Inputs and outputs are channels_last.

    (torch's ``quantized.conv2d_dynamic`` is not used: it quantises the output to the *input's*
    range, which clips every output of a conv that follows a ReLU-like activation.)"""

    def __init__(self, conv: nn.Conv2d, weight_bits: int = 8):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("Int8Conv2d takes convolutions with explicit zero padding only.")
        qweight = quantize_weight(conv.weight, weight_bits)
        self.weight_scales = qweight.q_per_channel_scales().float()
        self.weight_zero_points = torch.zeros(conv.out_channels, dtype=torch.long)
        self.geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        self.packed = torch.ops.onednn.qconv_prepack(qweight.int_repr(), self.weight_scales, 1.0, 0, *self.geometry, None)
        self.bias = None if conv.bias is None else conv.bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous(memory_format=torch.channels_last)
        qx, scale, zero_point = quantize_input(x, x.permute(0, 2, 3, 1).reshape(-1))  # NHWC in memory
        return torch.ops.onednn.qconv2d_pointwise(
            qx, scale, zero_point, self.packed, self.weight_scales, self.weight_zero_points, self.bias, *self.geometry,
            1.0, 0, torch.float32, "none", [], "",
        )


class Int8UnfoldedConv2d(nn.Module):
    """``nn.Conv2d`` as one int8 matrix product over its input's patches: the input quantised as
    :class:`Int8Conv2d` quantises it, its uint8 patches gathered (the zero point as the padding) and
    multiplied by the int8 weights in one oneDNN int8 linear. The same integer sums as
    :class:`Int8Conv2d`, so the same answer up to the order of summing; faster where oneDNN's int8
    convolution is slow, on many channels and small maps. One thread, 512->512 3x3 stride 2, against
    :class:`Int8Conv2d`: on 32x32 maps 3.5-3.9 against 4.5-4.9 ms on AMD Zen 4 and AVX-512-VNNI
    (emulated), 18.4 against 19.7 ms on AVX2 (emulated); on 16x16, 1.0-2.8 against 2.3-4.3 ms; on 8x8
    and less two to ten times faster. Output channels_last; ``activation`` and ``scalars`` fused as
    :class:`Int8Linear`'s."""

    def __init__(self, conv: nn.Conv2d, weight_bits: int = 8, activation: str = "none", scalars: Sequence = ()):
        super().__init__()
        if (conv.padding_mode != "zeros" or isinstance(conv.padding, str) or conv.groups != 1
                or conv.dilation != (1, 1)):
            raise ValueError("Int8UnfoldedConv2d takes ungrouped, undilated convolutions with explicit zero padding only.")
        self.kernel_size, self.padding, self.stride = conv.kernel_size, conv.padding, conv.stride
        rows = conv.weight.detach().permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # the patches' (y, x, channel) order
        self.linear = Int8Linear(rows, conv.bias, activation, weight_bits, scalars)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous(memory_format=torch.channels_last)
        batch, channels, height, width = x.shape
        (kh, kw), (ph, pw), (sh, sw) = self.kernel_size, self.padding, self.stride
        values, scale, zero_point = quantize_input(x, x.permute(0, 2, 3, 1).reshape(-1))
        padded = values.new_full((batch, height + 2 * ph, width + 2 * pw, channels), zero_point)
        padded[:, ph : ph + height, pw : pw + width] = values.permute(0, 2, 3, 1)
        rows, cols = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
        step_b, step_y, step_x, _ = padded.stride()
        patches = padded.as_strided((batch, rows, cols, kh, kw, channels),
                                    (step_b, step_y * sh, step_x * sw, step_y, step_x, 1)).reshape(-1, kh * kw * channels)
        return self.linear.quantized_forward(patches, scale, zero_point).view(batch, rows, cols, -1).permute(0, 3, 1, 2)


class ExactLinear(nn.Module):
    """``F.linear`` on the given weight and bias, shared with the layer they come from (no copy)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def linear_for(precision: str):
    """``(weight, bias, activation) -> module``: the packed linear layer for ``precision`` on a CPU."""
    if precision == "int8":
        return lambda weight, bias, activation="none": Int8Linear(weight, bias, activation, int8_weight_bits())
    return lambda weight, bias, activation="none": PackedLinear(weight, bias, torch.bfloat16, activation)


# How attention's projections (q/k/v, then the output) may run in int8, per CPU, in the order to try them:
# the probe takes the first that agrees with fp32 (ganorigin.accel.probe.accelerate). Plain int8 weights
# for all of them moved the full-size CLIP's P(fake) twice as far from fp32 as finer weights (mean |delta|
# over 16 dev images 0.0034 against 0.0016; the weights' rounding, not the activations', measured). So:
# - "bf16" with native bf16 (AMX, AVX-512-BF16): bf16 PackedLinear (AMD EPYC Zen 4, one thread: 8.7 ms for
#   257x1024x3072 against 10.8 ms as TwoPartInt8Linear);
# - "two-part" with VNNI: TwoPartInt8Linear, as little change in P(fake) as exact weights; else "exact" (Community
#   Forensics on AVX-512-VNNI, emulated on Zen 4, full-size random weights: its P(fake) on the probe image moved
#   0.0073 from fp32 with two-part attention, refused, and 0.0026 with exact attention; over 24 dev images 0.0063
#   and 0.0036 at most; without this it ran all in fp32);
# - without VNNI (class avx2), where two int8 products cost more than one fp32 one (18.6 against 14.8 ms),
#   "int8-qkv" (q/k/v in plain int8, the output projection exact), else "exact". AVX2 emulated on Zen 4,
#   full-size random weights, one thread: CLIP 1265 -> 1030 ms, its P(fake) on the probe image 0.0022 from
#   fp32 (0.0094 with the output projection in int8 too); Community Forensics' moved 0.0164 with q/k/v in
#   int8 (0.0134 with its first block exact; refused: it runs "exact").
ATTENTION_PATHS = {"native bf16": ("bf16",), "vnni": ("two-part", "exact"), "avx2": ("int8-qkv", "exact")}


def attention_paths(precision: str) -> tuple:
    """The ways attention's projections may run for ``precision`` on this CPU, in the order to try
    them: :data:`ATTENTION_PATHS` in int8, ``("bf16",)`` in bf16."""
    if precision != "int8" or cpu_has_bf16_matrix_units():
        return ATTENTION_PATHS["native bf16"]
    return ATTENTION_PATHS["avx2" if cpu_class() == "avx2" else "vnni"]


def attention_linears(precision: str, path: Optional[str] = None) -> tuple:
    """``(qkv, out)``: for attention's q/k/v and output projections, each ``(weight, bias) -> module``,
    for ``precision`` the way ``path`` says (one of :func:`attention_paths`; its first when ``None``)."""
    paths = attention_paths(precision)
    path = path or paths[0]
    if path not in paths:
        raise ValueError(f"attention path {path!r} is not one of {paths} for {precision} here.")
    if path == "bf16":
        make = linear_for("bf16")
        return make, make
    if path == "two-part":
        make = lambda weight, bias: TwoPartInt8Linear(weight, bias, int8_weight_bits())  # noqa: E731
        return make, make
    if path == "int8-qkv":
        return (lambda weight, bias: Int8Linear(weight, bias, weight_bits=int8_weight_bits())), ExactLinear
    return ExactLinear, ExactLinear


def self_attention(qkv: nn.Module, out: nn.Module, x: torch.Tensor, heads: int, queries: Optional[int] = None) -> torch.Tensor:
    """Multi-head self-attention of normalised tokens ``x`` (B, T, width), from a fused ``qkv``
    projection to the ``out`` projection, in fp32: for every token, or for the first ``queries``
    (which still attend to all)."""
    batch, tokens, width = x.shape
    q, k, v = qkv(x).view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, T, hs)
    if queries is not None:
        q = q[:, :, :queries]
    attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, q.shape[2], width)
    return out(attended).float()


QUICK_GELU_SCALE = 1.702  # QuickGELU(y) = y * sigmoid(1.702 y) = swish(1.702 y) / 1.702


class PackedResidualBlock(nn.Module):
    """OpenAI CLIP's transformer block (open_clip ``ResidualAttentionBlock`` with QuickGELU and no
    LayerScale) on packed linears for ``precision``: LayerNorms and the residual stream stay fp32,
    and QuickGELU is fused into the first MLP layer as swish, with its 1/1.702 folded into the
    second.

    ``"bf16"``: every linear is a bf16 :class:`PackedLinear`, attention runs on the bf16 q/k/v
    (fp32 accumulation). ``"int8"``: the MLP (two thirds of the block's work) is
    :class:`Int8Linear`; attention's projections run the way ``attention`` says, one of
    :func:`attention_paths` for this CPU (its first when ``None``).

    ``class_token_only``: the block returns the class token (the first) alone, for a last block
    whose other outputs nothing reads; it then skips their attention output and MLP (exact). In int8
    that one token's MLP runs exact fp32, on the original layers: on one token the product is bound by
    reading the weights, so int8 saves little there, and its rounding would fall on the one token the
    answer reads (tiny random CLIP, AMD Zen 4: P(fake) on the probe image moved 0.0053 from fp32 with
    that MLP in int8, 0.0002 with it exact).
    """

    def __init__(self, block: nn.Module, precision: str, class_token_only: bool = False,
                 attention: Optional[str] = None):
        super().__init__()
        self.class_token_only = class_token_only
        attn, mlp = block.attn, block.mlp
        self.ln_1, self.ln_2 = block.ln_1, block.ln_2
        self.heads, self.batch_first = attn.num_heads, attn.batch_first
        qkv, out = attention_linears(precision, attention)
        self.qkv = qkv(attn.in_proj_weight, attn.in_proj_bias)
        self.out = out(attn.out_proj.weight, attn.out_proj.bias)
        if class_token_only and precision == "int8":
            self.fc, self.proj = nn.Sequential(mlp.c_fc, mlp.gelu), mlp.c_proj  # exact, see above
            return
        mlp_linear = linear_for(precision)
        self.fc = mlp_linear(mlp.c_fc.weight * QUICK_GELU_SCALE, mlp.c_fc.bias * QUICK_GELU_SCALE, "swish")
        self.proj = mlp_linear(mlp.c_proj.weight / QUICK_GELU_SCALE, mlp.c_proj.bias)

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
        queries = 1 if self.class_token_only else None
        x = x[:, :queries] + self_attention(self.qkv, self.out, self.ln_1(x), self.heads, queries)
        x = x + self.proj(self.fc(self.ln_2(x))).float()
        return x if self.batch_first else x.transpose(0, 1)


class PackedViTBlock(nn.Module):
    """timm's ViT ``Block`` (pre-norm; no LayerScale, q/k norm or attention norm; exact GELU) on packed
    linears for ``precision``, as :class:`PackedResidualBlock`: LayerNorms and the residual stream stay
    fp32, GELU is fused into the first MLP layer; ``attention`` and ``class_token_only`` as there."""

    def __init__(self, block: nn.Module, precision: str, class_token_only: bool = False,
                 attention: Optional[str] = None):
        super().__init__()
        self.class_token_only = class_token_only
        attn, mlp = block.attn, block.mlp
        self.norm1, self.norm2, self.heads = block.norm1, block.norm2, attn.num_heads
        qkv, out = attention_linears(precision, attention)
        self.qkv = qkv(attn.qkv.weight, attn.qkv.bias)
        self.proj = out(attn.proj.weight, attn.proj.bias)
        if class_token_only and precision == "int8":
            self.fc1, self.fc2 = nn.Sequential(mlp.fc1, mlp.act), mlp.fc2  # exact, as PackedResidualBlock's
            return
        mlp_linear = linear_for(precision)
        self.fc1 = mlp_linear(mlp.fc1.weight, mlp.fc1.bias, "gelu")
        self.fc2 = mlp_linear(mlp.fc2.weight, mlp.fc2.bias)

    @staticmethod
    def supports(block: nn.Module) -> bool:
        """True for the blocks of a plain timm ViT (as Community Forensics'); anything else is left as it is."""
        from timm.models.vision_transformer import Block

        identities = ("ls1", "ls2", "drop_path1", "drop_path2")
        attn, mlp = block.attn, getattr(block, "mlp", None)
        return (
            type(block) is Block
            and all(isinstance(getattr(block, name), nn.Identity) for name in identities)
            and all(isinstance(getattr(attn, name, nn.Identity()), nn.Identity) for name in ("q_norm", "k_norm", "norm"))
            and isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none"
            and isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity)
            and attn.qkv.bias is not None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        queries = 1 if self.class_token_only else None
        x = x[:, :queries] + self_attention(self.qkv, self.proj, self.norm1(x), self.heads, queries)
        return x + self.fc2(self.fc1(self.norm2(x))).float()
