"""Pipeline on real dev images (PNG and JPEG, 256-4352 px) with the tiny test weights: results are
repeatable, ``predict`` and ``predict_batch`` agree, ``to_dict`` is the original ``/predict`` JSON in
both branches, the threshold (per call and per pipeline) decides the verdict, and every input type
gives the same numbers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ganorigin import DEFAULT_THRESHOLD, GANOrigin, InvalidImageError


@pytest.fixture(scope="module")
def batch(model, dev_sample):
    return model.predict_batch(dev_sample)


@pytest.fixture(scope="module")
def one_image(dev_sample):
    return next(p for p in dev_sample if p.suffix.lower() in (".jpg", ".jpeg"))


def _numbers(prediction) -> tuple:
    return (prediction.fake_probability, *prediction.probabilities)


def test_sample_covers_png_jpeg_and_the_size_range(dev_sample, dev_manifest):
    sizes = []
    formats = set()
    for path in dev_sample:
        with Image.open(path) as image:
            sizes.append(max(image.size))
            formats.add(image.format)
    assert {"PNG", "JPEG"} <= formats
    assert min(sizes) == min(max(int(r["width"]), int(r["height"])) for r in dev_manifest)
    assert max(sizes) == max(max(int(r["width"]), int(r["height"])) for r in dev_manifest)


def test_batch_is_complete_and_repeatable(model, dev_sample, batch):
    assert len(batch) == len(dev_sample)
    again = model.predict_batch(dev_sample)
    assert [_numbers(p) for p in again] == [_numbers(p) for p in batch]
    for p in batch:
        assert 0.0 <= p.fake_probability <= 1.0
        assert p.threshold == DEFAULT_THRESHOLD
        assert len(p.labels) == len(p.probabilities) == 3
        assert sum(p.probabilities) == pytest.approx(1.0, abs=1e-9)


def test_predict_matches_predict_batch(model, dev_sample, batch):
    single = [model.predict(path) for path in dev_sample]
    np.testing.assert_allclose([_numbers(p) for p in single], [_numbers(p) for p in batch], rtol=0, atol=1e-6)
    assert [p.is_fake for p in single] == [p.is_fake for p in batch]
    assert [p.attribution for p in single] == [p.attribution for p in batch]
    assert [p.to_dict()["prediction"] for p in single] == [p.to_dict()["prediction"] for p in batch]


def test_to_dict_authentic_branch(batch):
    for result in (replace(p, threshold=1.0) for p in batch):
        p = result.fake_probability
        assert p < 1.0 and not result.is_fake
        out = result.to_dict()
        assert list(out) == ["prediction", "confidence", "probabilities"]
        assert out["prediction"] == "Authentic Image"
        assert type(out["confidence"]) is float and out["confidence"] == round(1.0 - p, 4)
        assert out["probabilities"] == {"Real": 1.0 - p, "Fake": p}  # not rounded
        assert all(type(v) is float for v in out["probabilities"].values())
        assert out["probabilities"]["Real"] + out["probabilities"]["Fake"] == pytest.approx(1.0, abs=1e-12)


def test_to_dict_gan_branch(model, batch):
    for result in (replace(p, threshold=0.0) for p in batch):
        assert result.is_fake
        out = result.to_dict()
        assert list(out) == ["prediction", "confidence", "probabilities", "deepfake_score"]
        labels = list(model.attributor.labels)
        assert out["prediction"] in labels and out["prediction"] == result.attribution_label
        assert list(out["probabilities"]) == labels
        assert tuple(out["probabilities"].values()) == result.probabilities  # not rounded
        assert out["prediction"] == max(out["probabilities"], key=out["probabilities"].get)
        assert type(out["confidence"]) is float and out["confidence"] == round(max(result.probabilities), 4)
        assert type(out["deepfake_score"]) is float and out["deepfake_score"] == result.fake_probability


def test_confidence_is_rounded_to_four_places_only(batch):
    values = [p.fake_probability for p in batch] + [q for p in batch for q in p.probabilities]
    assert any(round(v, 4) != v for v in values), "need unrounded numbers to tell rounding apart"
    for result in batch:
        out = result.to_dict()
        assert out["confidence"] == round(out["confidence"], 4)


def test_threshold_per_call_and_per_pipeline(model, one_image):
    p = model.predict(one_image).fake_probability
    assert 0.0 < p < 1.0
    assert model.predict(one_image, threshold=p).is_fake  # the verdict is p >= threshold
    assert not model.predict(one_image, threshold=min(1.0, p + 1e-6)).is_fake
    strict = GANOrigin(model.detector, model.encoder, model.attributor, threshold=1.0, device="cpu")
    lenient = GANOrigin(model.detector, model.encoder, model.attributor, threshold=0.0, device="cpu")
    assert strict.threshold == 1.0 and not strict.predict(one_image).is_fake
    assert lenient.predict(one_image).is_fake
    assert lenient.predict(one_image, threshold=1.0).threshold == 1.0
    assert not lenient.predict(one_image, threshold=1.0).is_fake
    from ganorigin import ConfigurationError, GANOriginError

    for bad in (1.5, -0.1, float("nan"), "high"):
        with pytest.raises(ConfigurationError, match="threshold") as caught:  # a GANOriginError and a ValueError
            model.predict(one_image, threshold=bad)
        assert isinstance(caught.value, GANOriginError) and isinstance(caught.value, ValueError)


def test_class_probabilities_sum_to_one_with_an_other_generator_bar_when_only_commfor_fires(batch):
    for result in batch:
        assert set(result.attribution_probabilities) == {"ProGAN", "StyleGAN2", "StyleGAN3"}
        gan = replace(result, threshold=0.0, degradation_reasons=())  # UFD confident: the GAN chart
        shares = gan.class_probabilities
        assert list(shares) == ["Real", *result.attribution_probabilities]
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)
        assert shares["Real"] == 1.0 - result.fake_probability
        other = replace(result, threshold=1.0, commfor_threshold=0.0, degradation_reasons=())
        assert other.verdict_by == ("commfor",)
        shares = other.class_probabilities
        assert list(shares) == ["Real", *result.attribution_probabilities, "Other generator"]
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)
        assert shares["Real"] == 1.0 - result.commfor_probability
        assert shares["Other generator"] == pytest.approx(result.commfor_probability * (1 - result.fake_probability))


def test_every_input_type_gives_the_same_numbers(model, one_image):
    with Image.open(one_image) as image:
        pil = image.convert("RGB")
    inputs = [one_image, str(one_image), one_image.read_bytes(), pil, np.asarray(pil)]
    results = [_numbers(model.predict(x)) for x in inputs]
    assert all(r == results[0] for r in results[1:])


def test_an_image_straight_from_image_open_gives_the_numbers_of_its_path(model, dev_sample, one_image, tmp_path):
    """``Image.open`` gives a lazy image (pixels unread, its file open): the gate reads it, not whichever
    worker thread touches it first; a truncated one is the bytes' InvalidImageError, in a batch only in its place."""
    from ganorigin import load_image

    paths = dev_sample[:6]
    want = [_numbers(model.predict(p)) for p in paths]
    for _ in range(2):
        assert [_numbers(model.predict(Image.open(p))) for p in paths] == want
    assert [_numbers(r) for r in model.predict_batch([Image.open(p) for p in paths])] == want
    data = one_image.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError) as from_bytes:
        load_image(cut.read_bytes())
    with pytest.raises(InvalidImageError) as from_pil:
        model.predict(Image.open(cut))
    assert str(from_pil.value) == str(from_bytes.value)
    first, second = model.predict_batch([Image.open(cut), Image.open(paths[1])])
    assert isinstance(first, InvalidImageError) and str(from_bytes.value) in str(first)
    assert _numbers(second) == want[1]


def test_predict_batch_gives_a_per_item_error_naming_the_bad_file(model, dev_sample, tmp_path):
    """One unreadable file costs only its own place in the batch; its error names it."""
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    items = [dev_sample[0], bad, b"", dev_sample[1]]
    results = model.predict_batch(items, batch_size=2)
    assert len(results) == 4
    assert isinstance(results[1], InvalidImageError) and str(results[1]).startswith(f"{bad}: ")
    assert "not an image we can read" in str(results[1])
    assert isinstance(results[2], InvalidImageError) and str(results[2]).startswith("item 3: "), "the third item, counted from 1 as the app's batch rows"
    assert results[0] == model.predict(dev_sample[0]) and results[3] == model.predict(dev_sample[1])
    with pytest.raises(InvalidImageError, match="not an image we can read"):
        model.predict(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_gpu_asked_for_on_a_machine_without_one_is_a_configuration_error_before_the_weights(tmp_path):
    from ganorigin import ConfigurationError

    with pytest.raises(ConfigurationError, match="device 'cuda:1' needs an NVIDIA GPU, and PyTorch sees none"):
        GANOrigin.from_pretrained(str(tmp_path), device="cuda:1")  # an empty folder: the weights would fail later
