"""Face detection and FFHQ alignment (ganorigin.align) on the real dev images, and its pipeline switch.

Proves: faces are found on (almost) every dev face image; already FFHQ-aligned GAN images come
out of alignment essentially unchanged (crop quad ~ the full frame); an image without a face
falls back to the whole image and says so; of two faces the larger is analysed and both are
counted; the model loads once and is safe to call from several threads; and turning alignment
on or off changes only what e4e sees, never the fake probability or the original JSON schema.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from ganorigin.align import align_face, alignment_available, quad_frame_iou
from ganorigin.images import load_image

pytestmark = pytest.mark.skipif(not alignment_available(), reason="dlib / face-recognition-models not installed")

# FFHQ-style GAN classes whose images are already aligned (stylegan3's 256 px images are FFHQ-U,
# the unaligned variant, so they are left out of the IoU check).
ALIGNED_GAN_CLASSES = ("progan", "stylegan2", "stylegan3")


@pytest.fixture(scope="module")
def dev_alignments(dev_images) -> dict:
    """class -> list of (image size, AlignmentResult) for every dev image."""
    out = {}
    for cls, paths in dev_images.items():
        out[cls] = []
        for path in paths:
            image = load_image(path)
            out[cls].append((image.size, align_face(image)))
    return out


def test_faces_found_on_dev_images(dev_alignments):
    rates = {cls: np.mean([r.faces_found > 0 for _, r in rows]) for cls, rows in dev_alignments.items()}
    for cls, rate in rates.items():
        assert rate >= 0.8, f"face found on only {rate:.0%} of {cls} dev images: {rates}"


def test_aligned_gan_images_come_out_unchanged(dev_alignments):
    for cls in ALIGNED_GAN_CLASSES:
        ious = [quad_frame_iou(r.quad, size) for size, r in dev_alignments[cls] if r.used and min(size) >= 512]
        assert len(ious) >= 5, f"too few aligned {cls} images to judge"
        assert np.median(ious) >= 0.9, f"{cls}: median crop/frame IoU {np.median(ious):.3f}"
        assert np.mean(np.array(ious) >= 0.8) >= 0.9, f"{cls}: IoUs {sorted(np.round(ious, 3))}"


def test_aligned_crop_is_square_rgb_and_of_requested_size(dev_images):
    image = load_image(sorted(dev_images["stylegan2"])[0])  # a GAN face: always found
    for size in (256, 128):
        result = align_face(image, output_size=size)
        assert result.used and result.faces_found >= 1, result.reason
        assert result.image.size == (size, size) and result.image.mode == "RGB"
        assert len(result.quad) == 4 and len(result.box) == 4


def test_no_face_falls_back_with_a_reason():
    ramp = np.linspace(0, 255, 400, dtype=np.float64)
    gradient = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    for array in (gradient, noise):
        result = align_face(Image.fromarray(array))
        assert result.image is None and not result.used
        assert result.faces_found == 0 and result.quad is None
        assert "whole image" in result.reason


def _two_face_collage(dev_images) -> tuple:
    """Two different real dev faces side by side, the left one larger; returns (collage, split x)."""
    faces = [load_image(p) for p in dev_images["real"] if "512" in p.name][:2]
    big, small = faces[0].resize((480, 480)), faces[1].resize((280, 280))
    collage = Image.new("RGB", (480 + 40 + 280, 480), (128, 128, 128))
    collage.paste(big, (0, 0))
    collage.paste(small, (520, 100))
    return collage, 500


def test_two_faces_counted_and_largest_chosen(dev_images):
    collage, split = _two_face_collage(dev_images)
    result = align_face(collage)
    assert result.faces_found == 2, result.reason
    left, top, right, bottom = result.box
    assert right < split, f"the chosen face {result.box} is not the larger, left one"
    assert "2 faces" in result.reason
    mirrored = align_face(collage.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert mirrored.faces_found == 2 and mirrored.box[0] > collage.width - split


def test_parallel_calls_agree(dev_sample):
    image = load_image(dev_sample[-1])
    expected = align_face(image)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: align_face(image), range(8)))
    assert all(r == expected for r in results)
    if expected.used:
        assert all(np.array_equal(np.asarray(r.image), np.asarray(expected.image)) for r in results)


def test_quad_frame_iou_geometry():
    assert quad_frame_iou([(0, 0), (0, 100), (100, 100), (100, 0)], (100, 100)) == pytest.approx(1.0, abs=0.01)
    assert quad_frame_iou([(0, 0), (0, 100), (50, 100), (50, 0)], (100, 100)) == pytest.approx(0.5, abs=0.01)
    # The same square shifted by half its width: overlap 50 of a 150 union.
    assert quad_frame_iou([(50, 0), (50, 100), (150, 100), (150, 0)], (100, 100)) == pytest.approx(1 / 3, abs=0.01)


def test_pipeline_switch_changes_only_the_attribution_input(model, dev_images, sources):
    from ganorigin import GANOrigin

    # A real photo that is not FFHQ-aligned, so the aligned crop differs from the whole image.
    path = max(dev_images["real"], key=lambda p: np.prod(Image.open(p).size))
    image = load_image(path)
    on = model.predict(image, align=True)
    off = model.predict(image, align=False)

    assert on.fake_probability == off.fake_probability
    assert on.aligned and on.faces_found >= 1 and on.attributed_image.size == (256, 256)
    assert not off.aligned and off.faces_found is None and off.attributed_image.size == image.size
    expected = model.attributor.predict_proba(model.encode([on.attributed_image]))[0]
    np.testing.assert_allclose(on.probabilities, expected, rtol=1e-6)
    assert not np.allclose(model.encode([on.attributed_image]), model.encode([image]))

    assert set(on.to_dict()) == set(off.to_dict()) and "alignment" not in on.to_dict()
    assert on.to_dict(extended=True)["alignment"] == {"used": True, "faces_found": on.faces_found, "note": on.alignment_note}

    assert model.align == alignment_available()
    assert GANOrigin(model.detector, model.encoder, model.attributor, device="cpu", align=False).align is False


def test_pipeline_no_face_uses_whole_image(model):
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 320, 3), dtype=np.uint8))
    result = model.predict(noise, align=True)
    assert not result.aligned and result.faces_found == 0
    assert result.attributed_image.size == noise.size and "whole image" in result.alignment_note
    assert result.to_dict(extended=True)["alignment"]["used"] is False
