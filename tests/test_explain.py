"""The "why" views (ganorigin.explain): region heat maps and the frequency view.

Proves: a faint periodic artefact added to a real dev face appears as a spectral peak at exactly
the expected frequency (and lifts the azimuthal average at the expected radius), and is absent in
the clean image; with a hand-built detector whose logit reads only the top-left quadrant, both
heat-map methods put all their heat there (the attribution logic is right); with the test model
the heat maps have the detector's crop shape, finite values and the pipeline's fake probability.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ganorigin.explain import FREQUENCY_EXPLANATION, frequency_view, gradient_heatmap, occlusion_heatmap
from ganorigin.images import load_image

SIZE = 256  # frequency_view's default crop
CENTRE = SIZE // 2


@pytest.fixture(scope="module")
def real_face(dev_images) -> Image.Image:
    """A real dev photo at least 512 px wide (the spectrum crop is 256 px at native resolution)."""
    path = next(p for p in dev_images["real"] if min(Image.open(p).size) >= 512)
    return load_image(path)


def _with_sinusoid(image: Image.Image, period: int, axis: int, amplitude: float = 3.0) -> Image.Image:
    a = np.asarray(image, dtype=np.float64)
    coordinate = np.indices(a.shape[:2])[axis]
    a = a + amplitude * np.cos(2 * np.pi * coordinate / period)[..., None]
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("period, axis", [(4, 1), (8, 0), (4, 0)])
def test_periodic_artefact_shows_as_a_peak(real_face, period, axis):
    clean = frequency_view(real_face)
    marked = frequency_view(_with_sinusoid(real_face, period, axis))
    offset = SIZE // period
    peak = (CENTRE, CENTRE + offset) if axis == 1 else (CENTRE + offset, CENTRE)

    rise = marked.spectrum - clean.spectrum
    assert rise[peak] > 1.5, f"no spectral peak at {peak}: rise {rise[peak]:.2f}"
    top = np.unravel_index(np.argmax(rise), rise.shape)
    mirror = (2 * CENTRE - peak[0], 2 * CENTRE - peak[1])
    # The Hann window spreads a pure tone over its neighbouring bin.
    near = [max(abs(int(top[0]) - q[0]), abs(int(top[1]) - q[1])) <= 1 for q in (peak, mirror)]
    assert any(near), f"largest rise at {top}, expected {peak} or {mirror}"
    assert clean.spectrum[peak] < np.percentile(clean.spectrum, 99.9), "clean image already peaks there"

    # Clipping at 0/255 leaks a little energy to the lowest frequencies; look beyond them.
    low = 8
    profile_rise = marked.profile - clean.profile
    radius = low + int(np.argmax(profile_rise[low:]))
    assert abs(radius - offset) <= 1, f"profile rises most at radius {radius}, expected {offset}"
    assert profile_rise[offset] > 0.1
    assert marked.frequencies[offset] == pytest.approx(1 / period)


def test_frequency_view_shapes_and_picture(real_face):
    view = frequency_view(real_face)
    assert view.spectrum.shape == (SIZE, SIZE) and view.spectrum.dtype == np.float32
    assert view.profile.shape == (SIZE // 2 + 1,) and view.frequencies.shape == view.profile.shape
    assert np.isfinite(view.spectrum).all() and np.isfinite(view.profile).all()
    assert view.frequencies[0] == 0 and view.frequencies[-1] == pytest.approx(0.5)
    assert view.picture.mode == "RGB" and view.picture.width > 400 and view.picture.height > 200
    assert len(np.unique(np.asarray(view.picture).reshape(-1, 3), axis=0)) > 50  # something was drawn
    assert view.explanation == FREQUENCY_EXPLANATION and "GAN" in view.explanation


def test_frequency_view_of_a_small_image_is_padded_not_resized():
    """A 4-pixel stripe period must stay at 1/4 cycle per pixel: resizing the 140 px wide image to
    256 would move its peak to about 1/7.3."""
    x = np.arange(140)
    stripes = 128 + 60 * np.cos(2 * np.pi * x / 4)
    small = Image.fromarray(np.repeat(np.tile(stripes, (100, 1))[..., None], 3, axis=2).astype(np.uint8))
    view = frequency_view(small)
    assert view.spectrum.shape == (SIZE, SIZE) and np.isfinite(view.spectrum).all()
    centre_row = view.spectrum[SIZE // 2]
    peak = int(np.argmax(centre_row[SIZE // 2 + 8 :])) + 8  # away from the lowest frequencies
    assert abs(peak - SIZE // 4) <= 1, f"stripe peak at {peak / SIZE:.3f} cycles/pixel, not 0.25"


class TopLeftDetector(nn.Module):
    """Logit = 4 * mean of the top-left 112x112 quadrant of the normalised input."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x[:, :, :112, :112].mean(dim=(1, 2, 3))


@pytest.mark.parametrize("explain", [occlusion_heatmap, gradient_heatmap])
def test_heat_lies_where_the_detector_looks(explain):
    bright = Image.new("RGB", (300, 260), (230, 230, 230))  # above the normalisation mean everywhere
    heat = explain(TopLeftDetector(), bright)
    values = heat.values
    assert values.shape == (224, 224)
    assert np.all(values[:, 140:] == 0) and np.all(values[140:, :] == 0)
    assert values[:84, :84].min() > 0
    assert values[:112, :112].sum() >= 0.9 * values.sum()
    peak = np.unravel_index(np.argmax(values), values.shape)
    assert peak[0] < 112 and peak[1] < 112


@pytest.mark.parametrize("explain", [occlusion_heatmap, gradient_heatmap])
def test_heat_map_with_the_test_model(model, dev_sample, explain):
    image = load_image(dev_sample[0])
    heat = explain(model.detector, image)
    assert heat.values.shape == (224, 224) and heat.values.dtype == np.float32
    assert np.isfinite(heat.values).all() and np.abs(heat.values).max() > 0
    # Same precision path as the pipeline (fp32, or its bf16 fast path on CPUs that have it);
    # under bf16 the differentiable pass runs other kernels, hence the looser bound there.
    tolerance = 1e-2 if explain is gradient_heatmap and model.precision != "fp32" else 1e-4
    assert heat.fake_probability == pytest.approx(float(model.fake_probabilities([image])[0]), abs=tolerance)
    assert heat.overlay.size == (224, 224) and heat.overlay.mode == "RGB"
    assert max(heat.image_overlay.size) <= max(768, *image.size) and heat.image_overlay.mode == "RGB"


@pytest.fixture(scope="module")
def int8_model(sources, tmp_path_factory):
    from ganorigin import GANOrigin

    with pytest.MonkeyPatch.context() as env:  # its probe verdicts in a cache of its own
        env.setenv("GANORIGIN_CACHE_DIR", str(tmp_path_factory.mktemp("int8-checks")))
        return GANOrigin.from_pretrained(sources, device="cpu", precision="int8", align=False)


@pytest.mark.parametrize("explain", [occlusion_heatmap, gradient_heatmap])
def test_heat_map_on_the_int8_path(int8_model, dev_sample, explain):
    """int8 is the default on most CPUs: its heat map works too (gradients run on the dequantised weights)."""
    assert int8_model.precisions["detector"] == "int8"
    image = load_image(dev_sample[0])
    heat = explain(int8_model.detector, image)
    assert heat.values.shape == (224, 224) and np.isfinite(heat.values).all() and np.abs(heat.values).max() > 0
    assert heat.fake_probability == pytest.approx(float(int8_model.fake_probabilities([image])[0]), abs=1e-2)


def test_occlusion_patch_count_and_arguments():
    heat = occlusion_heatmap(TopLeftDetector(), Image.new("RGB", (224, 224), (200, 200, 200)), patch=32, stride=16)
    assert (heat.method, heat.patch, heat.stride) == ("occlusion", 32, 16)
    with pytest.raises(ValueError, match="stride"):
        occlusion_heatmap(TopLeftDetector(), Image.new("RGB", (224, 224)), patch=32, stride=48)
    with pytest.raises(ValueError, match="cell"):
        gradient_heatmap(TopLeftDetector(), Image.new("RGB", (224, 224)), cell=15)
