"""Community Forensics: a timm ViT-S/16 at 384 px whose head is one logit, trained on thousands of generators.

Park & Owens, "Community Forensics: Using Thousands of Generators to Train Fake Image Detectors",
CVPR 2025 (https://arxiv.org/abs/2411.04125). Re-implements the inference path of
``JeongsooP/Community-Forensics`` (``models.py::ViTClassifier``): timm's
``vit_small_patch16_384`` with ``vit.head = nn.Linear(384, 1)``; P(fake) = sigmoid(logit).
The attribute is called ``vit`` as upstream, so the authors' ``model.safetensors`` (keys
``vit.*``) loads by a strict ``load_state_dict`` as it is.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import WeightsFormatError

# timm's vit_small_patch16_384 (the authors' 384 px model); the 224 px one differs only in img_size.
# Heads are embed_dim / 64, as in every timm ViT size the authors used (Ti, S).
VIT_S_16_384 = {"img_size": 384, "patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6}
HEAD_WIDTH = 64


class CommForDetector(nn.Module):
    """``vit`` = timm ``VisionTransformer`` with a ``Linear(embed_dim, 1)`` head.

    ``CommForDetector()`` builds the full ViT-S/16-384 with random weights (no download); pass a
    smaller ``vit_cfg`` for quick tests. ``forward`` returns logits, ``predict_proba``
    sigmoid(logit). Pretrained weights: :func:`ganorigin.factory.create_commfor`.
    """

    def __init__(self, vit_cfg: dict = VIT_S_16_384):
        from timm.models.vision_transformer import VisionTransformer

        super().__init__()
        self.vit_cfg = dict(vit_cfg)
        self.vit = VisionTransformer(**self.vit_cfg, num_classes=1)
        self.requires_grad_(False)
        self.eval()

    @property
    def input_size(self) -> int:
        return self.vit_cfg["img_size"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x).float().squeeze(-1)  # (B,) logits

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward(x))


def vit_cfg_from_state_dict(sd: dict) -> dict:
    """The ViT's size from the authors' tensor shapes (keys ``vit.*``)."""
    try:
        embed_dim, _, patch_size, _ = sd["vit.patch_embed.proj.weight"].shape
        grid = math.isqrt(sd["vit.pos_embed"].shape[1] - 1)  # one class token
        depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("vit.blocks."))
        mlp_width = sd["vit.blocks.0.mlp.fc1.weight"].shape[0]
        outputs = sd["vit.head.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as e:
        raise WeightsFormatError(f"Not a Community Forensics ViT state dict: missing or odd tensor ({e}).") from e
    if outputs != 1:
        raise WeightsFormatError(f"The Community Forensics head should give 1 logit, this one gives {outputs}.")
    return {"img_size": grid * patch_size, "patch_size": patch_size, "embed_dim": embed_dim, "depth": depth,
            "num_heads": embed_dim // HEAD_WIDTH, "mlp_ratio": mlp_width / embed_dim}
