"""Preprocessing as data: each model's weights record names the transform it expects."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import functional as TF


@dataclass(frozen=True)
class CenterCropNormalize:
    """CenterCrop(``crop_size``) at native resolution (smaller images are zero-padded), ToTensor,
    Normalize. No resize: UFD must see the pixels as they are."""

    crop_size: int
    mean: tuple
    std: tuple

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return TF.normalize(TF.to_tensor(TF.center_crop(image, [self.crop_size])), self.mean, self.std)


@dataclass(frozen=True)
class ResizeNormalize:
    """Resize to ``size`` x ``size`` (bilinear), ToTensor, Normalize."""

    size: int
    mean: tuple
    std: tuple

    def __call__(self, image: Image.Image) -> torch.Tensor:
        x = TF.to_tensor(image.resize((self.size, self.size), Image.BILINEAR))
        return TF.normalize(x, self.mean, self.std)


@dataclass(frozen=True)
class ResizeCenterCropNormalize:
    """torchvision's ``Resize(resize)`` (shorter side, bilinear, antialiased), ``CenterCrop(crop_size)``,
    ToTensor, Normalize: the usual ImageNet-style test transform."""

    resize: int
    crop_size: int
    mean: tuple
    std: tuple

    def __call__(self, image: Image.Image) -> torch.Tensor:
        x = TF.center_crop(TF.resize(image, [self.resize], interpolation=TF.InterpolationMode.BILINEAR), [self.crop_size])
        return TF.normalize(TF.to_tensor(x), self.mean, self.std)
