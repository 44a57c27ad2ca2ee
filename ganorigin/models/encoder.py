"""e4e: the encoder that projects a face into StyleGAN2's W+ space (18 x 512).

Tov et al., "Designing an Encoder for StyleGAN Image Manipulation", SIGGRAPH 2021
(https://arxiv.org/abs/2102.02766). A plain-PyTorch re-implementation of ``Encoder4Editing(50,
'ir_se')`` from ``omertov/encoder4editing`` (``models/encoders/psp_encoders.py``, ``helpers.py``).
Attribute names follow upstream, so a checkpoint loads by stripping ``encoder.`` and nothing else.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsFormatError

COARSE_END, MIDDLE_END = 3, 7  # styles 0-2 read the 16x16 map, 3-6 the 32x32, 7-17 the 64x64


@dataclass(frozen=True)
class E4EConfig:
    """IR-SE body: ``units[i]`` bottleneck units of ``channels[i]`` channels per stage.

    The default is IR-SE-50 (3/4/14/3 units, 64..512 channels) for a 1024 px StyleGAN2
    (``style_count = 2 * log2(1024) - 2 = 18``); the last stage's width is the latent size.
    """

    channels: tuple = (64, 128, 256, 512)
    units: tuple = (3, 4, 14, 3)
    style_count: int = 18

    @property
    def latent_dim(self) -> int:
        return self.channels[-1]


class SEModule(nn.Module):
    """Squeeze-and-excitation gate (reduction 16)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class Subsample(nn.Module):
    """Every ``stride``-th pixel: upstream's ``MaxPool2d(1, stride)`` shortcut, without the pooling
    kernel (a 1x1 max is the pixel itself; stride 1 is the identity)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]


class BottleneckIRSE(nn.Module):
    """ArcFace's improved residual unit with an SE gate (upstream ``bottleneck_IR_SE``)."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    """StyleGAN2's equalised linear layer: the weight is stored unscaled and multiplied by
    1/sqrt(in) at run time, so a checkpoint's weight cannot go into ``nn.Linear`` as it is."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = 1.0 / math.sqrt(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class GradualStyleBlock(nn.Module):
    """Stride-2 3x3 convs + LeakyReLU(0.01) down to 1x1, then an EqualLinear: one style vector."""

    def __init__(self, channels: int, spatial: int):
        super().__init__()
        layers = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))  # (B, C)


class StyleBlocks(nn.ModuleList):
    """The style blocks, run a group at a time: those that read the same feature map."""

    def outputs(self, indices: range, features: torch.Tensor) -> list:
        """The blocks at ``indices`` on ``features``: one (B, C) style each."""
        return [self[i](features) for i in indices]


class E4EEncoder(nn.Module):
    """e4e ``Encoder4Editing``: image (B, 3, 256, 256) in [-1, 1] -> W+ codes (B, 18, 512).

    Codes are the encoder's output *without* ``latent_avg`` (the GANOrigin SVM was trained so).
    ``E4EEncoder()`` builds the full IR-SE-50 with random weights (no download); pretrained
    weights: :func:`ganorigin.factory.create_encoder`.
    """

    def __init__(self, config: E4EConfig = E4EConfig()):
        super().__init__()
        self.config = config
        c = config.channels
        self.input_layer = nn.Sequential(nn.Conv2d(3, c[0], 3, 1, 1, bias=False), nn.BatchNorm2d(c[0]), nn.PReLU(c[0]))
        units, in_channels = [], c[0]
        for depth, count in zip(c, config.units):
            for i in range(count):
                units.append(BottleneckIRSE(in_channels, depth, stride=2 if i == 0 else 1))
                in_channels = depth
        self.body = nn.Sequential(*units)
        # Feature maps are tapped after the last unit of stages 2, 3 and 4 (upstream: 6, 20, 23).
        ends = [sum(config.units[: i + 1]) - 1 for i in range(len(config.units))]
        self._taps = tuple(ends[1:])
        spatial = [16] * COARSE_END + [32] * (MIDDLE_END - COARSE_END) + [64] * (config.style_count - MIDDLE_END)
        self.styles = StyleBlocks(GradualStyleBlock(c[-1], s) for s in spatial)
        self.latlayer1 = nn.Conv2d(c[2], c[-1], 1)
        self.latlayer2 = nn.Conv2d(c[1], c[-1], 1)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.codes([self.group_styles(features, k) for k, features in enumerate(self.feature_maps(x))])

    @property
    def style_groups(self) -> list:
        """The ranges of style blocks that read the same feature map: coarse (16x16), middle (32x32), fine (64x64)."""
        count = self.config.style_count
        ranges = [range(0, min(COARSE_END, count)), range(COARSE_END, min(MIDDLE_END, count)), range(MIDDLE_END, count)]
        return [indices for indices in ranges if len(indices)]

    def feature_maps(self, x: torch.Tensor) -> list:
        """The map each of :attr:`style_groups` reads: (B,512,16,16), (B,512,32,32), (B,512,64,64)."""
        x = self.input_layer(x)
        taps = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self._taps:
                taps.append(x)
        c1, c2, c3 = taps  # (B,128,64,64), (B,256,32,32), (B,512,16,16)
        maps = [c3]
        count = len(self.style_groups)
        if count > 1:
            maps.append(_upsample_add(c3, self.latlayer1(c2)))
        if count > 2:
            maps.append(_upsample_add(maps[1], self.latlayer2(c1)))
        return maps

    def group_styles(self, features: torch.Tensor, group: int) -> list:
        """The styles of ``style_groups[group]`` from the map it reads: one (B, C) each."""
        return self.styles.outputs(self.style_groups[group], features)

    @staticmethod
    def codes(styles_per_group: list) -> torch.Tensor:
        """W+ codes (B, 18, 512) from the styles of every group, in order: the first style, then it plus each
        other (a delta to it)."""
        w0, *deltas = [style for styles in styles_per_group for style in styles]
        return torch.stack([w0, *(w0 + delta for delta in deltas)], dim=1)


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


def checkpoint_filter_fn(checkpoint: dict, path: Path = Path("<checkpoint>")) -> tuple[dict, Optional[torch.Tensor]]:
    """``(encoder state dict, latent_avg)`` from a pSp/e4e checkpoint dict.

    Keeps exactly the ``encoder.`` keys (upstream's ``get_keys`` also matched ``encoder_*``).
    """
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise WeightsFormatError(f"{path} is not an e4e checkpoint: expected a dict with a 'state_dict' entry.")
    prefix = "encoder."
    sd = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not sd:
        raise WeightsFormatError(f"{path} has no 'encoder.*' weights.")
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    latent_avg = checkpoint.get("latent_avg")
    return sd, latent_avg.float() if isinstance(latent_avg, torch.Tensor) else None


def config_from_state_dict(sd: dict) -> E4EConfig:
    """Channels and units per stage from the tensor shapes (stages are runs of equal depth)."""
    try:
        n_units = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
        depths = [sd[f"body.{i}.res_layer.1.weight"].shape[0] for i in range(n_units)]
        style_count = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("styles."))
    except (KeyError, ValueError) as e:
        raise WeightsFormatError(f"Not an e4e encoder state dict ({e}).") from e
    channels, units = [], []
    for d in depths:
        if channels and channels[-1] == d:
            units[-1] += 1
        else:
            channels.append(d)
            units.append(1)
    if len(channels) != 4:
        raise WeightsFormatError(f"Expected an IR-SE body of 4 stages, found channel widths {channels}.")
    return E4EConfig(channels=tuple(channels), units=tuple(units), style_count=style_count)


def encoder_fingerprint(encoder: nn.Module) -> str:
    """sha256 over the encoder's state (names, dtypes, shapes, values): equal exactly for equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{values.dtype}:{tuple(values.shape)}\n".encode())
        digest.update(values.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def encoder_mismatch(trained: Optional[str], fingerprint: str) -> Optional[str]:
    """A warning when the e4e weights of ``fingerprint`` are not the ``trained`` ones an attribution
    model's features came from; None when they are, or ``trained`` is unknown."""
    if trained is None or trained == fingerprint:
        return None
    return (f"The attribution model was trained on features of other e4e weights (fingerprint {trained[:12]}) "
            f"than these ({fingerprint[:12]}): its attributions do not hold for them. Use the e4e weights it was "
            "trained with, or extract and train again with these.")
