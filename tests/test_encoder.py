"""e4e encoder: the full-size model matches the reference state-dict manifest key for key, checkpoints
load strictly and only their ``encoder.`` half, EqualLinear scales its weight, the forward pass has
e4e's w0-repeat-plus-deltas structure, and the preprocessing is the deterministic e4e transform."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from conftest import E4E_MANIFEST
from ganorigin import E4EEncoder, WeightsFormatError
from ganorigin.factory import load_encoder
from ganorigin.hub.registry import E4E_PREPROCESS
from ganorigin.models.encoder import E4EConfig, EqualLinear, checkpoint_filter_fn, config_from_state_dict

PREFIX = "encoder."


@pytest.fixture(scope="module")
def manifest() -> dict:
    if not E4E_MANIFEST.is_file():
        pytest.skip("../shared/reference/e4e_encoder_manifest.json is not present")
    return json.loads(E4E_MANIFEST.read_text())


@pytest.fixture(scope="module")
def full_encoder() -> E4EEncoder:
    torch.manual_seed(0)
    return E4EEncoder()


@pytest.fixture()
def tiny_checkpoint(weights_dir) -> dict:
    return torch.load(weights_dir / "e4e_ffhq_encode.pt", map_location="cpu", weights_only=True)


def test_full_size_state_dict_matches_reference_manifest(manifest):
    with torch.device("meta"):
        model = E4EEncoder()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    reference = {k[len(PREFIX):]: shape for k, shape in manifest["state_dict"].items()}
    assert len(reference) == manifest["num_state_dict_entries"] == 621
    assert sorted(set(reference) - set(ours)) == [], "keys the reference has and we lack"
    assert sorted(set(ours) - set(reference)) == [], "keys we have and the reference lacks"
    assert {k: s for k, s in ours.items() if s != reference[k]} == {}
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == manifest["num_parameters"] == 267_136_704


def test_config_recovered_from_manifest_shapes(manifest):
    shapes = {k[len(PREFIX):]: torch.empty(s, device="meta") for k, s in manifest["state_dict"].items()}
    assert config_from_state_dict(shapes) == E4EConfig()


def test_checkpoint_filter_keeps_only_encoder_keys_and_returns_latent_avg():
    latent_avg = torch.randn(18, 512)
    checkpoint = {
        "state_dict": {
            "encoder.body.0.weight": torch.ones(2),
            "encoder_foo.body.0.weight": torch.zeros(2),  # upstream's get_keys would keep this
            "decoder.style.1.weight": torch.zeros(3),
        },
        "latent_avg": latent_avg.half(),
        "opts": {"stylegan_size": 1024},
    }
    state_dict, avg = checkpoint_filter_fn(checkpoint)
    assert list(state_dict) == ["body.0.weight"]
    assert torch.equal(state_dict["body.0.weight"], torch.ones(2))
    assert avg.dtype == torch.float32 and torch.equal(avg, latent_avg.half().float())


@pytest.mark.parametrize("not_a_checkpoint", [[1, 2], {"weights": {}}, {"state_dict": {"decoder.x": torch.ones(1)}}])
def test_checkpoint_filter_rejects_non_checkpoints(not_a_checkpoint):
    with pytest.raises(WeightsFormatError):
        checkpoint_filter_fn(not_a_checkpoint)


def test_load_encoder_reads_the_encoder_only_and_strictly(tiny_checkpoint, weights_dir):
    model = load_encoder(weights_dir / "e4e_ffhq_encode.pt")
    assert not any("decoder" in name for name, _ in model.named_modules())
    expected = {k[len(PREFIX):]: v for k, v in tiny_checkpoint["state_dict"].items() if k.startswith(PREFIX)}
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert not any(t.is_meta for t in loaded.values())


@pytest.mark.parametrize("change", ["missing", "renamed"])
def test_load_encoder_names_a_missing_or_renamed_key(tiny_checkpoint, tmp_path, change):
    state = tiny_checkpoint["state_dict"]
    tensor = state.pop("encoder.latlayer1.weight")
    if change == "renamed":
        state["encoder.latlayer1.kernel"] = tensor
    path = tmp_path / "e4e_ffhq_encode.pt"
    torch.save(tiny_checkpoint, path)
    with pytest.raises(WeightsFormatError, match=r"latlayer1\.weight") as info:
        load_encoder(path)
    assert str(path) in str(info.value)
    if change == "renamed":
        assert "latlayer1.kernel" in str(info.value)


def test_equal_linear_applies_inverse_sqrt_fan_in_scale():
    torch.manual_seed(0)
    layer = EqualLinear(64, 32)
    layer.bias.data.normal_()
    x = torch.randn(5, 64)
    expected = F.linear(x, layer.weight / math.sqrt(64), layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-3)


def test_full_size_forward_is_w0_repeated_plus_deltas(full_encoder):
    style_outputs = {}
    hooks = [
        style.register_forward_hook(lambda _m, _i, out, i=i: style_outputs.__setitem__(i, out.clone()))
        for i, style in enumerate(full_encoder.styles)
    ]
    try:
        torch.manual_seed(1)
        with torch.inference_mode():
            codes = full_encoder(torch.rand(1, 3, 256, 256) * 2 - 1)
    finally:
        for hook in hooks:
            hook.remove()
    assert codes.shape == (1, 18, 512)
    assert torch.isfinite(codes).all()
    assert sorted(style_outputs) == list(range(18))
    w0 = style_outputs[0]
    torch.testing.assert_close(codes[:, 0], w0, rtol=0, atol=0)
    for i in range(1, 18):
        torch.testing.assert_close(codes[:, i] - w0, style_outputs[i], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(codes[:, 1], codes[:, 17])


def test_e4e_transform_matches_reference_transform_and_is_deterministic():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    pixels[:100, :100], pixels[200:, 300:] = 0, 255  # flat corners reach both ends of the range
    image = Image.fromarray(pixels, "RGB")
    first, second = E4E_PREPROCESS(image), E4E_PREPROCESS(image)
    assert first.shape == (3, 256, 256) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert first.min() == -1.0 and first.max() == 1.0
    reference = transforms.Compose(
        [transforms.Resize((256, 256)), transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
    )
    torch.testing.assert_close(first, reference(image), rtol=0, atol=1e-6)
