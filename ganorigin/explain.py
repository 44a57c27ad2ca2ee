"""Why a verdict: which regions push the fake probability up, and where the image's high
frequencies carry periodic (up-sampling) artefacts.

Both are separate, on-request calls; the plain verdict never computes them.

- :func:`occlusion_heatmap`: occlusion sensitivity (Zeiler & Fergus 2014,
  https://arxiv.org/abs/1311.2901) on the 224 px centre crop UFD sees. Each patch is replaced by
  the normalisation mean (zero after normalising) and the drop in P(fake) is spread over its
  pixels: positive heat = that region pushes the fake probability up.
- :func:`gradient_heatmap`: input x gradient on the same crop, relative to the same mean-image
  baseline (so it is the first-order estimate of the occlusion drop), pooled over the ViT's
  14 px patches: one forward and one backward pass instead of one forward per patch.
- :func:`frequency_view`: log-magnitude spectrum of the grayscale high-pass residual
  (image minus its 3x3 median) of a native-resolution centre crop, plus its azimuthal average.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from torch import nn
from torchvision.transforms import functional as TF

from .hub.registry import UFD_PREPROCESS

__all__ = [
    "FREQUENCY_EXPLANATION",
    "FrequencyView",
    "HeatMap",
    "azimuthal_average",
    "frequency_view",
    "gradient_heatmap",
    "occlusion_heatmap",
]

FREQUENCY_EXPLANATION = (
    "Spectrum of the image's fine-detail residual (centre = coarse, edges = finest detail): "
    "bright isolated dots or a grid away from the centre, and peaks in the profile, are periodic "
    "up-sampling artefacts typical of GANs; a smooth fall-off is typical of camera photos."
)


@dataclass(frozen=True)
class HeatMap:
    """Heat map over the detector's 224 px centre crop.

    ``values`` (224, 224) float32: how much each region raises P(fake) (``method="occlusion"``:
    P(fake) of the crop minus P(fake) with the region hidden, averaged over the ``patch``-sized
    windows covering each pixel; ``"gradient"``: its first-order estimate per ``patch`` cell). ``overlay`` colours the crop (red = pushes
    towards fake, blue = towards real); ``image_overlay`` shows the whole image with the crop's
    heat in place and its outline drawn.
    """

    values: np.ndarray = field(repr=False)
    fake_probability: float
    method: str
    patch: int
    stride: int
    overlay: Image.Image = field(repr=False, compare=False)
    image_overlay: Image.Image = field(repr=False, compare=False)


@dataclass(frozen=True)
class FrequencyView:
    """``spectrum`` (size, size) log(1 + magnitude), zero frequency at the centre; ``profile``
    log(1 + mean magnitude) per ring of integer radius (``size // 2 + 1`` values); ``frequencies`` that radius in
    cycles per pixel (0 to 0.5); ``picture`` both, rendered; ``explanation`` how to read it."""

    spectrum: np.ndarray = field(repr=False)
    profile: np.ndarray = field(repr=False)
    frequencies: np.ndarray = field(repr=False)
    picture: Image.Image = field(repr=False, compare=False)
    explanation: str = FREQUENCY_EXPLANATION


@torch.no_grad()
def occlusion_heatmap(
    detector: nn.Module, image: Image.Image, *, patch: int = 56, stride: int = 28, batch_size: int = 16
) -> HeatMap:
    """Occlusion sensitivity of ``detector``'s P(fake) over the 224 px centre crop of ``image``.

    ``detector`` maps normalised (B, 3, 224, 224) tensors to logits (B,), like
    :class:`~ganorigin.models.UFDDetector`. Cost: one forward per patch position,
    ``((224 - patch) / stride + 1) ** 2`` (49 with the defaults), batched by ``batch_size``.
    """
    size = UFD_PREPROCESS.crop_size
    if not 0 < patch <= size or not 0 < stride <= patch:
        raise ValueError(f"Need 0 < stride <= patch <= {size}; got patch={patch}, stride={stride}.")
    device = next(detector.parameters()).device
    x = UFD_PREPROCESS(image).to(device)  # (3, 224, 224)
    starts = _starts(size, patch, stride)
    boxes = [(top, left) for top in starts for left in starts]
    with torch.inference_mode():
        p_full = torch.sigmoid(detector(x[None]).float())[0]
        drops = []
        for first in range(0, len(boxes), batch_size):
            chunk = boxes[first : first + batch_size]
            occluded = x.repeat(len(chunk), 1, 1, 1)  # (b, 3, 224, 224)
            for i, (top, left) in enumerate(chunk):
                occluded[i, :, top : top + patch, left : left + patch] = 0.0  # the normalisation mean
            drops.append(p_full - torch.sigmoid(detector(occluded).float()))
    drop = torch.cat(drops).cpu().numpy()

    heat = np.zeros((size, size), np.float64)
    cover = np.zeros((size, size), np.float64)
    for d, (top, left) in zip(drop, boxes):
        heat[top : top + patch, left : left + patch] += d
        cover[top : top + patch, left : left + patch] += 1
    values = (heat / np.maximum(cover, 1)).astype(np.float32)
    return _heatmap(image, values, float(p_full), "occlusion", patch, stride)


def gradient_heatmap(detector: nn.Module, image: Image.Image, *, cell: int = 14) -> HeatMap:
    """Input x gradient of ``detector``'s P(fake) on the 224 px centre crop, summed over colour
    channels and averaged over ``cell``-pixel squares. Cost: one forward and one backward pass.

    The input is normalised, so zero is the mean colour: input x gradient estimates, to first
    order, how much P(fake) falls when a region is replaced by that mean (the occlusion drop).
    """
    size = UFD_PREPROCESS.crop_size
    if size % cell:
        raise ValueError(f"cell must divide {size}; got {cell}.")
    device = next(detector.parameters()).device
    x = UFD_PREPROCESS(image).to(device)[None].requires_grad_(True)  # (1, 3, 224, 224)
    with torch.enable_grad():
        p = torch.sigmoid(detector(x).float())[0]
        (grad,) = torch.autograd.grad(p, x)
    contribution = (x.detach() * grad).sum(dim=1, keepdim=True)  # (1, 1, 224, 224)
    pooled = torch.nn.functional.avg_pool2d(contribution, cell)
    values = torch.nn.functional.interpolate(pooled, scale_factor=cell, mode="nearest")[0, 0]
    return _heatmap(image, values.cpu().numpy().astype(np.float32), float(p.detach()), "gradient", cell, cell)


def _heatmap(image: Image.Image, values: np.ndarray, p_fake: float, method: str, patch: int, stride: int) -> HeatMap:
    crop = TF.center_crop(image, [UFD_PREPROCESS.crop_size])
    overlay = _heat_overlay(crop, values)
    return HeatMap(values, p_fake, method, patch, stride, overlay, _place_on_image(image, overlay))


def frequency_view(image: Image.Image, *, size: int = 256) -> FrequencyView:
    """Spectrum of ``image``'s high-pass residual at native resolution (no resizing: resizing
    would move or alias the very peaks we look for). Images smaller than ``size`` are zero-padded.
    """
    crop = _centre_crop(np.asarray(image.convert("L")), size).astype(np.float64)  # float only for the crop
    residual = crop - _median3(crop)
    residual -= residual.mean()
    window = np.outer(np.hanning(residual.shape[0]), np.hanning(residual.shape[1]))
    padded = np.zeros((size, size))
    h, w = residual.shape
    padded[(size - h) // 2 : (size - h) // 2 + h, (size - w) // 2 : (size - w) // 2 + w] = residual * window
    magnitude = np.abs(np.fft.fftshift(np.fft.fft2(padded)))
    spectrum = np.log1p(magnitude).astype(np.float32)
    # Rings are averaged before the log, so a few strong peaks lift their ring visibly.
    profile = np.log1p(azimuthal_average(magnitude)).astype(np.float32)
    frequencies = np.arange(len(profile)) / size
    return FrequencyView(spectrum, profile, frequencies, _render_spectrum(spectrum, profile, frequencies))


def azimuthal_average(spectrum: np.ndarray) -> np.ndarray:
    """Mean of a centred square spectrum over rings of integer radius 0 .. size // 2."""
    size = spectrum.shape[0]
    yy, xx = np.indices(spectrum.shape)
    radius = np.rint(np.hypot(yy - size // 2, xx - size // 2)).astype(int)
    n = size // 2 + 1
    inside = radius < n
    sums = np.bincount(radius[inside], weights=spectrum[inside], minlength=n)
    counts = np.bincount(radius[inside], minlength=n)
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def _starts(size: int, patch: int, stride: int) -> list:
    """Patch offsets covering [0, size), the last one flush with the edge."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def _heat_overlay(crop: Image.Image, values: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """Diverging colour map (red up, blue down, scaled to the largest |heat|) blended over ``crop``."""
    scale = float(np.abs(values).max())
    normalised = 0.5 + 0.5 * values / scale if scale > 0 else np.full(values.shape, 0.5)
    colours = (colormaps["bwr"](normalised)[..., :3] * 255).astype(np.uint8)
    return Image.blend(crop.convert("RGB"), Image.fromarray(colours, "RGB"), alpha)


def _place_on_image(image: Image.Image, overlay: Image.Image, max_side: int = 768) -> Image.Image:
    """``image`` dimmed, with the heat overlay pasted where the centre crop is and outlined;
    downscaled to at most ``max_side`` for display."""
    canvas = Image.blend(image.convert("RGB"), Image.new("RGB", image.size), 0.4)
    size = overlay.width
    left, top = int(round((image.width - size) / 2.0)), int(round((image.height - size) / 2.0))
    canvas.paste(overlay, (left, top))
    ImageDraw.Draw(canvas).rectangle((left, top, left + size - 1, top + size - 1), outline=(255, 255, 0), width=2)
    scale = max_side / max(canvas.size)
    if scale < 1:
        canvas = canvas.resize((round(canvas.width * scale), round(canvas.height * scale)), Image.Resampling.LANCZOS)
    return canvas


def _centre_crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return a[top : top + size, left : left + size]


def _median3(a: np.ndarray) -> np.ndarray:
    """3x3 median filter with edge replication."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    shifted = np.stack([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
    return np.median(shifted, axis=0)


def _render_spectrum(spectrum: np.ndarray, profile: np.ndarray, frequencies: np.ndarray) -> Image.Image:
    """Spectrum image and azimuthal profile side by side, as an RGB picture (matplotlib Agg)."""
    fig = Figure(figsize=(8.0, 3.6), dpi=100, layout="constrained")
    spec_ax, prof_ax = fig.subplots(1, 2, width_ratios=(1, 1.3))
    half = 0.5
    lo, hi = np.percentile(spectrum, (1, 99.9))
    spec_ax.imshow(spectrum, cmap="inferno", vmin=lo, vmax=hi, extent=(-half, half, half, -half))
    spec_ax.set_title("High-pass residual spectrum (log)")
    spec_ax.set_xlabel("cycles / pixel")
    prof_ax.plot(frequencies[1:], profile[1:], color="tab:red")
    prof_ax.set_title("Azimuthal average")
    prof_ax.set_xlabel("frequency (cycles / pixel)")
    prof_ax.set_ylabel("log mean magnitude")
    prof_ax.grid(alpha=0.3)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy(), "RGB")
