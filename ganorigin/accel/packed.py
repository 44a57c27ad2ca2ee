"""Linear and convolution layers whose weights are stored once in the layout the CPU's matrix
kernels read (no per-call weight reorder), with fused activations, and the transformer blocks built
on them (OpenAI CLIP's, timm's ViT's): bf16 (oneDNN, for CPUs with native bf16) and int8 (dynamic
quantisation, for CPUs with VNNI or AVX2 only)."""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .precision import cpu_class

# The activations a packed linear can fuse (oneDNN post-ops), and what each computes when run unfused.
ACTIVATIONS = {"none": lambda y: y, "swish": F.silu, "gelu": F.gelu}
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


class Int8Linear(nn.Module):
    """A linear layer with per-output-channel int8 weights, prepacked once for torch's quantized
    engine, and activations quantised on the fly per call (dynamic quantisation); fp32 in and out.
    ``reduce_range`` quantises activations to 7 bits, which keeps the 16-bit accumulation of CPUs
    without VNNI (AVX2 only) from saturating; with VNNI the full 8 bits are used. ``activation``:
    a key of ``ACTIVATIONS``. With a gradient wanted (the heat map) it runs on the dequantised
    weight."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str = "none",
                 reduce_range: bool = False):
        super().__init__()
        self.activation, self.reduce_range = activation, reduce_range
        self.out_features, self.in_features = weight.shape
        weight = weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
        zeros = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # torch 2.14 deprecates its quantized tensors in favour of torchao, which has no build for
            # this torch yet; these ops still run and are what fbgemm/oneDNN's int8 kernels take.
            warnings.filterwarnings("ignore", message="torch.quantize_per_tensor", category=UserWarning)
            qweight = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            qweight, bias = torch.ops.quantized.linear_unpack(self.packed)
            y = F.linear(x.float(), qweight.dequantize(), bias)
        else:
            flat = x.reshape(-1, self.in_features).float().contiguous()
            y = torch.ops.quantized.linear_dynamic(flat, self.packed, self.reduce_range).view(*x.shape[:-1], self.out_features)
        return ACTIVATIONS[self.activation](y)


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
        reduce_range = cpu_class() == "avx2"
        return lambda weight, bias, activation="none": Int8Linear(weight, bias, activation, reduce_range)
    return lambda weight, bias, activation="none": PackedLinear(weight, bias, torch.bfloat16, activation)


def attention_linear_for(precision: str):
    """The linear layer of attention's projections: packed for bf16; exact fp32 for int8, which
    halves the int8 path's disagreement with fp32 (measured on the full-size CLIP: max |delta
    P(fake)| 0.0024 against 0.0053 with every linear in int8)."""
    return linear_for(precision) if precision != "int8" else ExactLinear


def self_attention(qkv: nn.Module, out: nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head self-attention of normalised tokens ``x`` (B, T, width), from a fused ``qkv``
    projection to the ``out`` projection, in fp32."""
    batch, tokens, width = x.shape
    q, k, v = qkv(x).view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, T, hs)
    attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
    return out(attended).float()


QUICK_GELU_SCALE = 1.702  # QuickGELU(y) = y * sigmoid(1.702 y) = swish(1.702 y) / 1.702


class PackedResidualBlock(nn.Module):
    """OpenAI CLIP's transformer block (open_clip ``ResidualAttentionBlock`` with QuickGELU and no
    LayerScale) on packed linears for ``precision``: LayerNorms and the residual stream stay fp32,
    and QuickGELU is fused into the first MLP layer as swish, with its 1/1.702 folded into the
    second.

    ``"bf16"``: every linear is a bf16 :class:`PackedLinear`, attention runs on the bf16 q/k/v
    (fp32 accumulation). ``"int8"``: the MLP (two thirds of the block's work) is
    :class:`Int8Linear`; attention's projections stay exact fp32 (:func:`attention_linear_for`).
    """

    def __init__(self, block: nn.Module, precision: str):
        super().__init__()
        attn, mlp = block.attn, block.mlp
        self.ln_1, self.ln_2 = block.ln_1, block.ln_2
        self.heads, self.batch_first = attn.num_heads, attn.batch_first
        attention = attention_linear_for(precision)
        self.qkv = attention(attn.in_proj_weight, attn.in_proj_bias)
        self.out = attention(attn.out_proj.weight, attn.out_proj.bias)
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
        x = x + self_attention(self.qkv, self.out, self.ln_1(x), self.heads)
        x = x + self.proj(self.fc(self.ln_2(x))).float()
        return x if self.batch_first else x.transpose(0, 1)


class PackedViTBlock(nn.Module):
    """timm's ViT ``Block`` (pre-norm; no LayerScale, q/k norm or attention norm; exact GELU) on packed
    linears for ``precision``, as :class:`PackedResidualBlock`: LayerNorms and the residual stream stay
    fp32, GELU is fused into the first MLP layer, int8 keeps attention's projections exact."""

    def __init__(self, block: nn.Module, precision: str):
        super().__init__()
        attn, mlp = block.attn, block.mlp
        self.norm1, self.norm2, self.heads = block.norm1, block.norm2, attn.num_heads
        attention = attention_linear_for(precision)
        self.qkv = attention(attn.qkv.weight, attn.qkv.bias)
        self.proj = attention(attn.proj.weight, attn.proj.bias)
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
        x = x + self_attention(self.qkv, self.proj, self.norm1(x), self.heads)
        return x + self.fc2(self.fc1(self.norm2(x))).float()
