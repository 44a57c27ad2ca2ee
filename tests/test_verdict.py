"""Both detectors, one verdict, and an honest "unsure" (issue 17).

Proves the rules: AI-generated when either detector is confident, naming which; a hit from Community
Forensics alone never names one of the three GANs; "unsure" inside a detector's band and when the
degradation gate trips (with the reason); the bands and the gate come from the environment. Then, on
the tiny test weights through the real pipeline: every analysis (``predict`` and ``predict_batch``)
carries both detectors' probabilities, the original ``/predict`` JSON stays exactly the UFD one, the
extended JSON adds the rest, and re-encoded real images trip the gate with the reason.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from ganorigin import GANOrigin, Prediction
from ganorigin.degradation import Degradation
from ganorigin.factory import commfor_scores
from ganorigin.verdict import OTHER_GENERATOR, UnsurePolicy, detector_state

LABELS = ("progan", "stylegan2", "stylegan3")
CLEAN = Degradation(jpeg_quality=None, upscale=None, short_side=1024)


def _prediction(ufd: float, commfor, *, reasons=(), unknown=False) -> Prediction:
    return Prediction(ufd, 0.89, LABELS, (0.1, 0.7, 0.2), unknown=unknown, commfor_probability=commfor,
                      commfor_threshold=0.5, ufd_band=0.05, commfor_band=0.1, degradation=CLEAN,
                      degradation_reasons=reasons)


@pytest.mark.parametrize("p, state", [(0.95, "fake"), (0.94, "fake"), (0.93, "unsure"), (0.89, "unsure"),
                                      (0.84, "unsure"), (0.8399, "real"), (0.1, "real")])
def test_detector_state_reads_the_band_around_the_threshold(p, state):
    assert detector_state(p, 0.89, 0.05) == state


def test_the_band_narrows_at_the_ends_and_zero_band_is_the_plain_threshold():
    assert detector_state(0.0, 0.0, 0.05) == "fake"  # threshold 0: everything is fake, nothing unsure
    assert detector_state(0.995, 0.99, 0.05) == "unsure" and detector_state(1.0, 0.99, 0.05) == "fake"
    assert detector_state(0.5, 0.5, 0.0) == "fake" and detector_state(0.4999, 0.5, 0.0) == "real"


def test_a_ufd_hit_is_attributed_as_ever():
    result = _prediction(0.97, 0.2)
    assert (result.verdict, result.verdict_by) == ("AI-generated", ("ufd",))
    assert result.verdict_attribution == "StyleGAN2" and result.verdict_text == "AI-generated — StyleGAN2"
    both = _prediction(0.97, 0.9)
    assert both.verdict_by == ("ufd", "commfor") and both.verdict_text == "AI-generated — StyleGAN2"
    unknown = _prediction(0.97, 0.9, unknown=True)
    assert unknown.verdict_text == "AI-generated — Unknown GAN"


def test_a_community_forensics_hit_alone_names_no_gan():
    result = _prediction(0.3, 0.9)
    assert (result.verdict, result.verdict_by) == ("AI-generated", ("commfor",))
    assert result.verdict_text == OTHER_GENERATOR == "AI-generated — not one of the known GANs (diffusion or other)"
    assert result.verdict_attribution is None
    assert not any(name in result.verdict_text for name in ("ProGAN", "StyleGAN"))
    extended = result.to_dict(extended=True)
    assert extended["verdict"]["attribution"] is None and extended["verdict"]["by"] == ["commfor"]
    assert result.to_dict() == {"prediction": "Authentic Image", "confidence": 0.7,
                                "probabilities": {"Real": 0.7, "Fake": 0.3}}  # the original JSON: UFD's


def test_inside_a_band_without_a_confident_detector_is_unsure_with_the_reason():
    result = _prediction(0.91, 0.2)
    assert result.verdict == "unsure" and result.verdict_by == ()
    (reason,) = result.unsure_reasons
    assert "UniversalFakeDetect" in reason and "0.91" in reason and "0.89" in reason and "0.05" in reason
    assert result.verdict_text == f"Unsure — {reason}"
    assert _prediction(0.91, 0.95).verdict == "AI-generated"  # the other detector is confident
    assert _prediction(0.2, 0.1).verdict == "real" and _prediction(0.2, 0.1).verdict_text == "Real"


def test_the_degradation_gate_overrides_a_confident_answer_with_its_reasons():
    reasons = ("heavily recompressed (quality ≈ 40)", "up-scaled ×3")
    for ufd, commfor in ((0.99, 0.99), (0.1, 0.1)):
        result = _prediction(ufd, commfor, reasons=reasons)
        assert result.verdict == "unsure" and result.unsure_reasons == reasons
        assert result.verdict_text == "Unsure — heavily recompressed (quality ≈ 40); up-scaled ×3"


def test_policy_turns_measurements_into_reasons():
    policy = UnsurePolicy()
    degraded = Degradation(jpeg_quality=40, upscale=3.0, short_side=200)
    assert policy.degradation_reasons(degraded) == (
        "heavily recompressed (quality ≈ 40)", "up-scaled ×3", "small image (200 px on the short side)")
    assert policy.degradation_reasons(Degradation(jpeg_quality=90, upscale=1.5, short_side=256)) == ()
    assert policy.degradation_reasons(None) == ()
    off = UnsurePolicy(min_jpeg_quality=0, max_upscale=float("inf"), min_side=0)
    assert off.degradation_reasons(degraded) == ()


def test_bands_and_gate_come_from_the_environment(monkeypatch):
    for name, value in {"GANORIGIN_UNSURE_BAND_UFD": "0.02", "GANORIGIN_UNSURE_BAND_COMMFOR": "0",
                        "GANORIGIN_GATE_MIN_JPEG_QUALITY": "70", "GANORIGIN_GATE_MAX_UPSCALE": "2.5",
                        "GANORIGIN_GATE_MIN_SIDE": "128"}.items():
        monkeypatch.setenv(name, value)
    assert UnsurePolicy.from_env() == UnsurePolicy(ufd_band=0.02, commfor_band=0.0, min_jpeg_quality=70,
                                                   max_upscale=2.5, min_side=128)
    monkeypatch.setenv("GANORIGIN_UNSURE_BAND_UFD", "wide")
    with pytest.raises(ValueError, match="GANORIGIN_UNSURE_BAND_UFD must be a number"):
        UnsurePolicy.from_env()
    monkeypatch.setenv("GANORIGIN_UNSURE_BAND_UFD", "0.7")
    with pytest.raises(ValueError, match=r"GANORIGIN_UNSURE_BAND_UFD.*\[0, 0.5\]"):
        UnsurePolicy.from_env()


# --- through the real pipeline, tiny test weights -------------------------------------------------


@pytest.fixture(scope="module")
def face_png(dev_sample) -> bytes:
    return next(p for p in dev_sample if p.suffix.lower() == ".png").read_bytes()


@pytest.fixture(scope="module")
def face_512(dev_sample) -> Image.Image:
    return Image.open(next(p for p in dev_sample if min(Image.open(p).size) == 512)).convert("RGB")


def test_every_analysis_runs_both_detectors(model, dev_sample):
    assert model.commfor is not None and set(model.precisions) == {"detector", "encoder", "commfor"}
    batch = model.predict_batch(dev_sample[:4])
    single = [model.predict(path) for path in dev_sample[:4]]
    images = [Image.open(p).convert("RGB") for p in dev_sample[:4]]
    expected = commfor_scores(model.commfor, images)
    for results in (batch, single):
        got = np.array([r.commfor_probability for r in results])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert all(r.commfor_threshold == 0.5 and set(r.detector_states) == {"ufd", "commfor"} for r in results)
    assert len(set(np.round(expected, 6))) == 4


def test_a_diffusion_style_case_through_the_pipeline(model, face_png):
    """Community Forensics fires (threshold 0), UFD does not (threshold 1): the any-generator verdict."""
    diffusion = GANOrigin(model.detector, model.encoder, model.attributor, threshold=1.0, device="cpu", align=False,
                          commfor=model.commfor, commfor_threshold=0.0, policy=UnsurePolicy())
    result = diffusion.predict(face_png)
    assert result.verdict_text == OTHER_GENERATOR and result.verdict_by == ("commfor",)
    assert result.to_dict()["prediction"] == "Authentic Image"
    assert set(result.to_dict()) == {"prediction", "confidence", "probabilities"}


def test_original_json_is_unchanged_and_extended_json_adds_the_rest(model, face_png):
    result = model.predict(face_png)
    original = result.to_dict()
    ufd_only = replace(result, commfor_probability=None, degradation=None, degradation_reasons=(), ufd_band=0.0)
    assert original == ufd_only.to_dict()  # the second detector and the gate never touch the original JSON
    extended = json.loads(json.dumps(result.to_dict(extended=True)))
    assert {k: extended[k] for k in original} == original
    assert set(extended) == {*original, "alignment", "detectors", "verdict", "degradation", "provenance"}
    assert extended["detectors"]["ufd"] == {"probability": result.fake_probability, "threshold": 0.89, "band": 0.05,
                                            "state": result.detector_states["ufd"]}
    assert extended["detectors"]["commfor"]["probability"] == result.commfor_probability
    assert extended["verdict"]["label"] == result.verdict and extended["verdict"]["text"] == result.verdict_text
    assert extended["degradation"] == result.degradation.to_dict()
    assert extended["degradation"]["jpeg_quality"] is None  # a PNG
    assert extended["degradation"]["short_side"] == min(Image.open(io.BytesIO(face_png)).size)


@pytest.mark.parametrize("make, reason", [
    (lambda im: _encoded(im, "JPEG", quality=40), "heavily recompressed (quality ≈ 40)"),
    (lambda im: _encoded(im.resize((im.width * 3, im.height * 3), Image.BICUBIC), "PNG"), "up-scaled ×3"),
    (lambda im: _encoded(im.resize((200, 200), Image.BICUBIC), "PNG"), "small image (200 px on the short side)"),
])
def test_degraded_real_images_are_unsure_with_the_reason(model, face_512, make, reason):
    assert reason not in model.predict(_encoded(face_512, "PNG")).unsure_reasons  # not for the clean image
    result = model.predict(make(face_512))
    assert result.verdict == "unsure" and reason in result.unsure_reasons
    assert result.verdict_text.startswith("Unsure — ") and reason in result.verdict_text
    assert result.to_dict(extended=True)["verdict"]["unsure_reasons"] == list(result.unsure_reasons)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()
