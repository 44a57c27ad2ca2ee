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
    ToTensor, Normalize: the usual ImageNet-style test transform.

    An image more elongated than ``MAX_ASPECT``:1 is first cut to its central ``MAX_ASPECT``:1 part:
    resizing all of a 16 x 50,000 strip to 440 px would allocate gigabytes for pixels the crop drops.
    The crop's pixels then differ from torchvision's only by that resize's slightly other scale."""

    MAX_ASPECT = 4.0

    resize: int
    crop_size: int
    mean: tuple
    std: tuple

    def __call__(self, image: Image.Image) -> torch.Tensor:
        longest = int(self.MAX_ASPECT * min(image.size))
        if max(image.size) > longest:
            image = TF.center_crop(image, [min(image.height, longest), min(image.width, longest)])
        x = TF.center_crop(TF.resize(image, [self.resize], interpolation=TF.InterpolationMode.BILINEAR), [self.crop_size])
        return TF.normalize(TF.to_tensor(x), self.mean, self.std)
