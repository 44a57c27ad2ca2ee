"""UFD detector: the image tower is open_clip's ViT-L-14-quickgelu key for key (with QuickGELU), the
real UFD head loads strictly, P(fake) is sigmoid(fc(projected feature)), the feature is CLIP's
unnormalised ``encode_image``, and the preprocessing is UFD's (no resize, centre crop, zero pad,
CLIP mean/std)."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIP
from open_clip.transformer import QuickGELU
from PIL import Image
from torch import nn
from torchvision import transforms

from conftest import REAL_UFD_HEAD, sha256_of
from ganorigin import UFDDetector
from ganorigin.factory import load_detector
from ganorigin.hub import WEIGHTS
from ganorigin.hub.registry import UFD_PREPROCESS
from ganorigin.models.detector import EMBED_DIM, vision_cfg_from_state_dict
from ganorigin.testing import CLIP_FILE, TINY_TEXT, TINY_VISION

UFD_HEAD_SHA256 = WEIGHTS["ufd.fc"].sha256

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def tiny_clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(EMBED_DIM, TINY_VISION, TINY_TEXT, quick_gelu=True).eval()


@pytest.fixture(scope="module")
def tiny_detector(tiny_clip) -> UFDDetector:
    detector = UFDDetector(vision_cfg=TINY_VISION)
    detector.visual.load_state_dict(tiny_clip.visual.state_dict(), strict=True)
    torch.manual_seed(1)
    detector.fc.weight.normal_(0, 0.05)
    detector.fc.bias.fill_(0.1)
    return detector


def test_vision_cfg_from_open_clip_vit_l_14_quickgelu_rebuilds_the_same_tower():
    with torch.device("meta"):
        reference = open_clip.create_model("ViT-L-14-quickgelu", pretrained=None, device="meta").visual
        reference_sd = reference.state_dict()
        detector = UFDDetector(vision_cfg=vision_cfg_from_state_dict(reference_sd))
    ours = {k: tuple(v.shape) for k, v in detector.visual.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference_sd.items()}
    assert ours == theirs
    assert detector.visual.output_dim == EMBED_DIM
    activations = [type(m) for m in detector.visual.modules() if isinstance(m, (nn.GELU, QuickGELU))]
    assert len(activations) == 24 and set(activations) == {QuickGELU}


def test_real_ufd_head_loads_strictly(weights_dir):
    if not REAL_UFD_HEAD.is_file():
        pytest.skip("../shared/reference/ufd_fc_weights.pth is not present")
    assert sha256_of(REAL_UFD_HEAD) == UFD_HEAD_SHA256
    detector = load_detector(weights_dir / CLIP_FILE, REAL_UFD_HEAD)
    head = torch.load(REAL_UFD_HEAD, map_location="cpu", weights_only=True)
    assert set(head) == {"weight", "bias"} and head["weight"].shape == (1, 768)
    assert torch.equal(detector.fc.weight, head["weight"]) and torch.equal(detector.fc.bias, head["bias"])
    assert detector.fc.weight.device.type == "cpu"


def test_predict_proba_is_sigmoid_of_head_on_feature(tiny_detector):
    torch.manual_seed(2)
    x = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        feature = tiny_detector.visual(x)
        by_hand = torch.sigmoid(feature @ tiny_detector.fc.weight.T + tiny_detector.fc.bias).squeeze(-1)
        probabilities = tiny_detector.predict_proba(x)
    assert probabilities.shape == (3,)
    torch.testing.assert_close(probabilities, by_hand, rtol=0, atol=1e-6)
    assert 0.0 < probabilities.min() and probabilities.max() < 1.0


def test_feature_is_unnormalised_clip_encode_image(tiny_clip, tiny_detector):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        ours = tiny_detector.forward_features(x)
        reference = tiny_clip.encode_image(x, normalize=False)
    assert ours.shape == (2, EMBED_DIM)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert not torch.allclose(ours.norm(dim=-1), torch.ones(2), atol=1e-2)


def test_preprocessing_uses_clip_mean_and_std():
    """Checked against open_clip's own record of OpenAI's normalisation and ViT-L/14's input size
    (an independent source, not a copy of our constants)."""
    from open_clip import get_model_config
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert UFD_PREPROCESS.crop_size == get_model_config("ViT-L-14-quickgelu")["vision_cfg"]["image_size"]
    assert tuple(UFD_PREPROCESS.mean) == tuple(OPENAI_DATASET_MEAN)
    assert tuple(UFD_PREPROCESS.std) == tuple(OPENAI_DATASET_STD)


def test_ufd_transform_crops_the_centre_without_resizing():
    pixels = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    x = UFD_PREPROCESS(Image.fromarray(pixels, "RGB"))
    assert x.shape == (3, 224, 224)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    recovered = (x * std + mean) * 255
    expected = torch.from_numpy(pixels[144:368, 144:368]).permute(2, 0, 1).float()
    torch.testing.assert_close(recovered, expected, rtol=0, atol=1e-3)


def test_ufd_transform_zero_pads_small_images():
    pixels = np.full((120, 100, 3), 200, dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    x = UFD_PREPROCESS(image)
    assert x.shape == (3, 224, 224)
    padding = (-torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD))[:, None]
    for corner in (x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]):
        torch.testing.assert_close(corner, padding.expand_as(corner), rtol=0, atol=1e-6)
    content = ((200 / 255) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[:, 112, 112], content, rtol=0, atol=1e-6)
    reference = transforms.Compose(
        [transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)]
    )
    torch.testing.assert_close(x, reference(image), rtol=0, atol=0)
