"""Community Forensics (issue 17): the module is timm's vit_small_patch16_384 with a one-logit head key
for key, the authors' checkpoint format (``vit.*`` in safetensors) loads strictly and nothing else
does, P(fake) is sigmoid of timm's own forward, the preprocessing is the authors' test transform
(Resize 440 / CenterCrop 384 / ImageNet mean-std; 256 / 224 for the 224 px model), and the fast CPU
path (packed timm blocks) stays within its own agreement bound or is refused by the probe."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms

from ganorigin import WeightsFormatError, accel
from ganorigin.accel import probe
from ganorigin.accel.packed import Int8Linear, PackedLinear, PackedViTBlock
from ganorigin.factory import commfor_logits, commfor_scores, create_commfor, load_commfor
from ganorigin.hub.registry import COMMFOR_PREPROCESS, WEIGHTS
from ganorigin.models.commfor import VIT_S_16_384, CommForDetector, vit_cfg_from_state_dict
from ganorigin.testing import COMMFOR_FILE, TINY_COMMFOR, write_commfor_weights

from cpu_kernels import needs_bf16

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return write_commfor_weights(tmp_path_factory.mktemp("commfor") / COMMFOR_FILE, TINY_COMMFOR,
                                 torch.Generator().manual_seed(0))


def _images(n: int = 3) -> list:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (300 + 90 * i, 520 - 40 * i, 3), dtype=np.uint8)) for i in range(n)]


def test_module_is_timm_vit_small_patch16_384_with_one_logit_key_for_key():
    """timm's own registered architecture (as the authors' ViTClassifier creates it) against ours."""
    with torch.device("meta"):
        reference = timm.create_model("vit_small_patch16_384", pretrained=False, num_classes=1)
        ours = CommForDetector()
    theirs = {f"vit.{k}": tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs
    assert theirs["vit.head.weight"] == (1, 384) and theirs["vit.pos_embed"] == (1, 577, 384)
    assert vit_cfg_from_state_dict(reference_sd := {f"vit.{k}": v for k, v in reference.state_dict().items()}) == {
        **VIT_S_16_384, "mlp_ratio": 4.0}
    assert len([k for k in reference_sd if k.endswith("attn.qkv.weight")]) == 12


def test_authors_checkpoint_loads_strictly_into_the_module(tiny_checkpoint):
    model = load_commfor(tiny_checkpoint)
    saved = load_file(str(tiny_checkpoint))
    assert set(saved) == set(model.state_dict()) and all(k.startswith("vit.") for k in saved)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert model.vit_cfg["embed_dim"] == TINY_COMMFOR["embed_dim"] and model.input_size == 384


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("vit.norm.weight"), "norm.weight"),
    (lambda sd: sd.update({"vit.extra.weight": torch.zeros(1)}), "extra.weight"),
    (lambda sd: sd.update({"vit.head.weight": torch.zeros(2, 64), "vit.head.bias": torch.zeros(2)}), "1 logit"),
    (lambda sd: sd.pop("vit.patch_embed.proj.weight"), "Not a Community Forensics"),
    (lambda sd: sd.update({"vit.pos_embed": torch.zeros(1, 1 + 20 * 20, 64)}), "320 px"),
])
def test_a_checkpoint_of_another_shape_is_refused_naming_the_problem(tiny_checkpoint, tmp_path, change, message):
    state = load_file(str(tiny_checkpoint))
    change(state)
    bad = tmp_path / "model.safetensors"
    save_file(state, str(bad))
    with pytest.raises(WeightsFormatError, match=message):
        load_commfor(bad)


def test_probability_is_sigmoid_of_timm_forward(tiny_checkpoint):
    model = load_commfor(tiny_checkpoint)
    reference = timm.models.vision_transformer.VisionTransformer(**TINY_COMMFOR, num_classes=1).eval()
    reference.load_state_dict({k[len("vit."):]: v for k, v in load_file(str(tiny_checkpoint)).items()}, strict=True)
    x = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = torch.sigmoid(reference(x)).squeeze(-1)
        probabilities = model.predict_proba(x)
    # the same maths, within float rounding: bitwise equal on an Intel Sapphire Rapids, 3e-8 apart on an
    # AMD EPYC (Zen 4), where fp32 kernels need not sum in the same order for two separately built models
    torch.testing.assert_close(probabilities, expected, rtol=1e-6, atol=1e-7)
    assert probabilities.shape == (2,) and 0.0 < probabilities.min() and probabilities.max() < 1.0


@pytest.mark.parametrize("size, resize", [(384, 440), (224, 256)])
def test_preprocessing_is_the_authors_test_transform(size, resize):
    """torchvision's Resize/CenterCrop/ToTensor/Normalize with timm's ImageNet constants (an independent
    record of the values in the authors' dataloader)."""
    transform = COMMFOR_PREPROCESS[size]
    reference = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    for image in _images():
        x = transform(image)
        assert x.shape == (3, size, size)
        torch.testing.assert_close(x, reference(image), rtol=0, atol=0)
    assert WEIGHTS["commfor.vit_small_patch16_384"].preprocess is COMMFOR_PREPROCESS[384]


def test_very_elongated_images_are_cut_to_their_centre_4_to_1_first():
    """A 16 x 5001 strip would be resized to 440 x 137,527 px by torchvision; up to 4:1 nothing changes."""
    rng = np.random.default_rng(1)
    reference = transforms.Compose([transforms.Resize(440), transforms.CenterCrop(384), transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    strip = Image.fromarray(rng.integers(0, 256, (5001, 16, 3), dtype=np.uint8))
    x = COMMFOR_PREPROCESS[384](strip)
    torch.testing.assert_close(x, reference(transforms.CenterCrop((64, 16))(strip)), rtol=0, atol=0)  # its 4:1 centre
    assert not torch.equal(x, reference(strip))
    four_to_one = Image.fromarray(rng.integers(0, 256, (100, 400, 3), dtype=np.uint8))
    torch.testing.assert_close(COMMFOR_PREPROCESS[384](four_to_one), reference(four_to_one), rtol=0, atol=0)


def test_scores_do_not_depend_on_the_batch(tiny_checkpoint):
    model = load_commfor(tiny_checkpoint)
    images = _images()
    alone = commfor_scores(model, images, batch=1)
    together = commfor_scores(model, images, batch=len(images))
    assert alone.shape == (3,)
    np.testing.assert_allclose(alone, together, rtol=0, atol=1e-6)
    assert len(set(np.round(alone, 6))) == 3  # three different images, three different scores


@needs_onednn
@pytest.mark.parametrize("precision, linear, atol", [pytest.param("bf16", PackedLinear, 0.06, marks=needs_bf16),
                                                     ("int8", Int8Linear, 0.06)])
def test_packed_vit_block_matches_the_timm_block(precision, linear, atol):
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(**TINY_COMMFOR, num_classes=1).eval()
    block = vit.blocks[0]
    assert PackedViTBlock.supports(block)
    packed = PackedViTBlock(block, precision)
    assert isinstance(packed.fc1, linear) and packed.fc1.activation == "gelu"
    x = torch.randn(2, 577, TINY_COMMFOR["embed_dim"])
    with torch.inference_mode():
        expected, y = block(x), packed(x)
    assert y.dtype == torch.float32 and y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=0, atol=atol)
    assert not torch.allclose(y, x, atol=1e-3)  # the block did something


def test_blocks_that_are_not_plain_vit_blocks_are_left_alone():
    torch.manual_seed(0)
    scaled = timm.models.vision_transformer.VisionTransformer(**TINY_COMMFOR, num_classes=1, init_values=1e-5)
    quick = timm.models.vision_transformer.VisionTransformer(**TINY_COMMFOR, num_classes=1,
                                                             act_layer=torch.nn.SiLU)
    assert not PackedViTBlock.supports(scaled.blocks[0])  # LayerScale
    assert not PackedViTBlock.supports(quick.blocks[0])  # another activation


@needs_onednn
@needs_bf16
def test_fast_commfor_is_a_new_module_and_agrees(tiny_checkpoint):
    model = load_commfor(tiny_checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = accel.fast_commfor(model, torch.device("cpu"), "bf16")
    assert fast is not model and accel.precision_of(fast) == "bf16"
    assert all(isinstance(b, PackedViTBlock) for b in fast.module.vit.blocks)
    assert [b.class_token_only for b in fast.module.vit.blocks][-2:] == [False, True]  # the head reads the class token
    assert not any(isinstance(b, PackedViTBlock) for b in model.vit.blocks)  # the model given is unchanged
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    images = _images()
    exact, quick = commfor_scores(model, images), commfor_scores(fast, images)
    assert np.abs(exact - quick).max() <= probe.MAX_COMMFOR_PROBABILITY_DELTA


@needs_onednn
@pytest.mark.parametrize("isa, first", [pytest.param("avx512_bf16", "bf16", marks=needs_bf16),
                                        pytest.param("amx", "bf16", marks=needs_bf16), ("avx512_vnni", "exact"),
                                        ("avx2", "exact")])
def test_int8_commfor_keeps_its_first_block_out_of_int8(tiny_checkpoint, isa, first, monkeypatch):
    """As CLIP's: the first block, which reads the raw patch embeddings, stays exact (bf16 where the CPU
    has native bf16); the last computes the class token alone."""
    monkeypatch.setenv("GANORIGIN_CPU_ISA", isa)
    model = load_commfor(tiny_checkpoint)
    fast = accel.fast_commfor(model, torch.device("cpu"), "int8")
    blocks = fast.module.vit.blocks
    if first == "exact":
        assert blocks[0] is model.vit.blocks[0]
    else:
        assert type(blocks[0]) is PackedViTBlock and type(blocks[0].fc1) is PackedLinear
    assert type(blocks[-1]) is PackedViTBlock and blocks[-1].class_token_only
    images = _images()
    exact, quick = commfor_scores(model, images), commfor_scores(fast, images)
    assert 0 < np.abs(exact - quick).max() <= 2 * probe.MAX_COMMFOR_PROBABILITY_DELTA


@needs_onednn
@needs_bf16
def test_the_probe_keeps_the_fast_path_only_within_its_own_bound(sources, monkeypatch, tmp_path):
    from ganorigin.hub import resolve

    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    files = resolve(sources)
    fast = create_commfor(files=files, device="cpu", precision="bf16")
    assert accel.precision_of(fast) == "bf16"
    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path / "fresh"))
    monkeypatch.setattr(probe, "COMMFOR_NOISE_BOUND", -1.0)  # nothing can agree this well
    refused = create_commfor(files=files, device="cpu", precision="bf16")
    assert isinstance(refused, CommForDetector) and accel.precision_of(refused) == "fp32"
    assert create_commfor(files=files, device="cpu", precision="fp32").__class__ is CommForDetector


@needs_onednn
def test_the_probe_judges_commfor_on_its_logits_noise_over_the_probe_views(sources, monkeypatch, tmp_path, caplog):
    """The root mean square of its logit's move over the five probe views, against COMMFOR_NOISE_BOUND: int8 is
    kept under twice the noise it makes there, refused under half of it, and the log says what was measured."""
    import logging

    from ganorigin.hub import resolve

    files = resolve(sources)
    model, views = load_commfor(files.commfor), probe.probe_images("commfor")
    assert len(views) == 5
    first = accel.attention_paths("int8")[0]
    monkeypatch.setattr(probe, "attention_paths", lambda precision: (first,))  # one way to judge
    int8 = accel.fast_commfor(model, torch.device("cpu"), "int8", attention=first)
    noise = float(np.sqrt(np.mean((commfor_logits(int8, views) - commfor_logits(model, views)) ** 2)))
    assert noise > 0
    for bound, kept in ((2 * noise, True), (noise / 2, False)):
        monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path / str(kept)))
        monkeypatch.setattr(probe, "COMMFOR_NOISE_BOUND", bound)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ganorigin.accel.probe"):
            chosen = create_commfor(files=files, device="cpu", precision="int8")
        assert accel.precision_of(chosen) == ("int8" if kept else "fp32")
        assert "its logit moved" in caplog.text and "in root mean square over 5 probe views" in caplog.text
        assert f"at most {bound:.4f} allowed" in caplog.text
        if kept:
            assert chosen.fast.agreement["noise"] == pytest.approx(noise, rel=1e-3)


@needs_onednn
def test_a_fast_commfor_scores_again_exactly_the_images_near_where_its_verdict_changes(sources, monkeypatch, tmp_path):
    """Its threshold and the edges of its "unsure" band (from the environment, as the pipeline's) are where a
    small move changes its verdict: there the fast path hands the image to the exact model."""
    from ganorigin.hub import resolve

    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    files = resolve(sources)
    model = load_commfor(files.commfor)
    fast = create_commfor(files=files, device="cpu", precision="int8")
    assert isinstance(fast, accel.BorderlineExact) and accel.precision_of(fast) == "int8"
    assert fast.edges == pytest.approx((0.4, 0.5, 0.6)) and fast.margin == accel.convert.COMMFOR_MARGIN
    monkeypatch.setenv("GANORIGIN_UNSURE_BAND_COMMFOR", "0.2")
    assert create_commfor(files=files, device="cpu", precision="int8").edges == pytest.approx((0.3, 0.5, 0.7))

    images = _images()
    reference, alone = commfor_scores(model, images), commfor_scores(fast.fast, images)
    distance = np.abs(alone[:, None] - np.array(fast.edges)[None]).min(axis=1)
    fast.margin = float(np.sort(distance)[0] + np.sort(distance)[1]) / 2  # the nearest image in, the others out
    near = distance < fast.margin
    scores = commfor_scores(fast, images)
    assert near.sum() == 1 and np.array_equal(scores[near], reference[near])
    assert np.array_equal(scores[~near], alone[~near]) and fast.rescored == 1
    monkeypatch.setenv("GANORIGIN_EXACT_BORDERLINE", "0")
    assert accel.precision_of(off := create_commfor(files=files, device="cpu", precision="int8")) == "int8"
    assert not isinstance(off, accel.BorderlineExact)

