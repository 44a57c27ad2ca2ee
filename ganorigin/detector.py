"""UniversalFakeDetect: a frozen CLIP ViT-L/14 image tower and one linear layer.

Ojha et al., "Towards Universal Fake Image Detectors that Generalize Across Generative Models",
CVPR 2023 (https://arxiv.org/abs/2302.10174). Re-implements the test path of
``WisconsinAIVision/UniversalFakeDetect`` (``models/clip_models.py``, ``validate.py``) on top of
open_clip's vision tower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

from .checkpoints import load_torch_file, load_tensors, strict_load
from .errors import WeightsFormatError

# OpenAI CLIP ViT-L/14, as open_clip's "ViT-L-14-quickgelu" vision config (QuickGELU is what OpenAI
# trained with; plain "ViT-L-14" would build nn.GELU and drift). A plain dict of
# open_clip.model.CLIPVisionCfg fields: open_clip is imported only when a model is built, which
# keeps the app's start (and its "weights missing" page) fast.
VIT_L_14 = {"layers": 24, "width": 1024, "patch_size": 14, "image_size": 224}
EMBED_DIM = 768


@dataclass(frozen=True)
class UFDPreprocessCfg:
    """UFD's test-time transform. Unlike open_clip's own it never resizes: CLIP sees the
    centre 224 px at native resolution, where GAN artefacts live (smaller images are zero-padded)."""

    crop_size: int = 224
    mean: tuple = (0.48145466, 0.4578275, 0.40821073)
    std: tuple = (0.26862954, 0.26130258, 0.27577711)


UFD_PREPROCESS = UFDPreprocessCfg()


def ufd_transform(image: Image.Image, cfg: UFDPreprocessCfg = UFD_PREPROCESS) -> torch.Tensor:
    """RGB PIL image -> normalised (3, 224, 224) tensor: CenterCrop, ToTensor, Normalize."""
    x = TF.to_tensor(TF.center_crop(image, [cfg.crop_size]))
    return TF.normalize(x, cfg.mean, cfg.std)


class UFDDetector(nn.Module):
    """CLIP image tower (projected 768-d feature, not normalised) + ``fc = nn.Linear(768, 1)``.

    ``UFDDetector()`` builds the full ViT-L/14 with random weights (no download); pass a smaller
    ``vision_cfg`` for quick tests. ``forward`` returns logits, ``predict_proba`` sigmoid(logit).
    """

    def __init__(self, vision_cfg=VIT_L_14, embed_dim: int = EMBED_DIM):
        from open_clip.model import _build_vision_tower

        super().__init__()
        self.vision_cfg = vision_cfg
        self.visual = _build_vision_tower(embed_dim, vision_cfg, quick_gelu=True)
        self.fc = nn.Linear(embed_dim, 1)
        self.requires_grad_(False)
        self.eval()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)  # (B, 768): CLIP's encode_image, unnormalised

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x).float()
        with torch.autocast(x.device.type, enabled=False):  # the head stays fp32 on the fast path
            return self.fc(features).squeeze(-1)  # (B,) logits

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward(x).float())

    @classmethod
    def from_files(cls, clip_path: Path, head_path: Path, device: Optional[torch.device] = None) -> "UFDDetector":
        """Build from an open_clip CLIP checkpoint (only ``visual.*`` is read) and ``fc_weights.pth``."""
        visual = clip_visual_state_dict(load_tensors(clip_path, prefix="visual."), clip_path)
        head = load_torch_file(head_path)
        head = {k: v.float() for k, v in head.items()}
        if head.get("weight") is None or head.get("bias") is None:
            raise WeightsFormatError(f"{head_path} should hold 'weight' and 'bias'; found {sorted(head)}.")
        with torch.device("meta"):
            model = cls(vision_cfg=vision_cfg_from_state_dict(visual), embed_dim=head["weight"].shape[1])
        strict_load(model.visual, visual, clip_path)
        strict_load(model.fc, head, head_path)
        return model.to(device) if device is not None else model


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
