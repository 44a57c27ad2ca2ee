"""UniversalFakeDetect: a frozen CLIP ViT-L/14 image tower and one linear layer.

Ojha et al., "Towards Universal Fake Image Detectors that Generalize Across Generative Models",
CVPR 2023 (https://arxiv.org/abs/2302.10174). Re-implements the test path of
``WisconsinAIVision/UniversalFakeDetect`` (``models/clip_models.py``, ``validate.py``) on top of
open_clip's vision tower.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsFormatError

# OpenAI CLIP ViT-L/14, as open_clip's "ViT-L-14-quickgelu" vision tower (QuickGELU is what OpenAI
# trained with; plain "ViT-L-14" would build nn.GELU and drift). A plain dict: open_clip is
# imported only when a model is built, which keeps the app's start (and its "weights missing"
# page) fast. Heads are width / 64, OpenAI's head width.
VIT_L_14 = {"layers": 24, "width": 1024, "patch_size": 14, "image_size": 224}
EMBED_DIM = 768
HEAD_WIDTH = 64


class UFDDetector(nn.Module):
    """CLIP image tower (projected 768-d feature, not normalised) + ``fc = nn.Linear(768, 1)``.

    ``UFDDetector()`` builds the full ViT-L/14 with random weights (no download); pass a smaller
    ``vision_cfg`` for quick tests. ``forward`` returns logits, ``predict_proba`` sigmoid(logit).
    Pretrained weights: :func:`ganorigin.factory.create_detector`.
    """

    def __init__(self, vision_cfg=VIT_L_14, embed_dim: int = EMBED_DIM):
        from open_clip.transformer import QuickGELU, VisionTransformer

        super().__init__()
        self.vision_cfg = dict(vision_cfg) if isinstance(vision_cfg, dict) else dataclasses.asdict(vision_cfg)
        width = self.vision_cfg["width"]
        self.visual = VisionTransformer(
            image_size=self.vision_cfg["image_size"], patch_size=self.vision_cfg["patch_size"], width=width,
            layers=self.vision_cfg["layers"], heads=width // HEAD_WIDTH,
            mlp_ratio=self.vision_cfg.get("mlp_ratio", 4.0), output_dim=embed_dim, act_layer=QuickGELU,
        )
        self.fc = nn.Linear(embed_dim, 1)
        self.requires_grad_(False)
        self.eval()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)  # (B, 768): CLIP's encode_image, unnormalised

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).float()).squeeze(-1)  # (B,) logits

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward(x).float())


def clip_visual_state_dict(state_dict: dict, path: Path) -> dict:
    """The image tower's tensors from a full open_clip CLIP state dict, as float32."""
    prefix = "visual."
    visual = {k[len(prefix):]: v.float() for k, v in state_dict.items() if k.startswith(prefix)}
    if not visual:
        raise WeightsFormatError(
            f"{path} has no 'visual.*' tensors; expected an open_clip CLIP checkpoint "
            "(open_clip_model.safetensors or open_clip_pytorch_model.bin)."
        )
    return visual


def vision_cfg_from_state_dict(sd: dict) -> dict:
    """Read the ViT's size from its tensor shapes, as OpenAI's ``build_model`` does.

    Heads are width / 64, OpenAI's (and open_clip's default) head width.
    """
    try:
        width, _, patch_size, _ = sd["conv1.weight"].shape
        grid = math.isqrt(sd["positional_embedding"].shape[0] - 1)
        layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
        mlp_width = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise WeightsFormatError(f"Not a CLIP ViT image tower: missing or odd tensor ({e}).") from e
    return {"layers": layers, "width": width, "patch_size": patch_size, "image_size": grid * patch_size,
            "mlp_ratio": mlp_width / width}
