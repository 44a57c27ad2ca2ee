"""Random weights in the real file formats, for tests and benchmarks where the real ones are absent.

:func:`write_test_weights` writes a folder laid out like ``GANORIGIN_WEIGHTS_DIR`` (and like the
original Hub repos): an open_clip CLIP checkpoint (``visual.*`` and text tower), ``fc_weights.pth``,
an e4e/pSp checkpoint (``state_dict`` with ``encoder.*`` *and* ``decoder.*``, ``latent_avg``,
``opts``), the three joblib pickles of real scikit-learn objects, and Community Forensics'
``model.safetensors`` as its PyTorchModelHubMixin saves it (a timm ViT under ``vit.*``).
``size="full"`` gives the real architectures (ViT-L/14, IR-SE-50, StyleGAN2-sized decoder,
ViT-S/16-384); ``"tiny"`` small stand-ins whose checkpoints load through exactly the same code.

:func:`write_demo_weights` (``ganorigin demo-weights DIR``) adds the :data:`TEST_WEIGHTS_MARKER`
file, which tells whoever loads the folder that its answers are meaningless.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Optional

import joblib
import numpy as np
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.svm import SVC
from timm.models.vision_transformer import VisionTransformer

from .hub.download import give_default_permissions
from .hub.integrity import sha256_file
from .hub.registry import WEIGHTS
from .hub.resolve import TEST_WEIGHTS_MARKER
from .models.commfor import VIT_S_16_384
from .models.detector import EMBED_DIM, VIT_L_14
from .models.encoder import E4EConfig, E4EEncoder

CLIP_FILE = WEIGHTS["clip.vit_large_patch14_openai"].filename
UFD_HEAD_FILE = WEIGHTS["ufd.fc"].filename
E4E_FILE = WEIGHTS["e4e.ffhq_encode"].filename
COMMFOR_FILE = WEIGHTS["commfor.vit_small_patch16_384"].filename
SVM_FILE, SCALER_FILE, LABEL_ENCODER_FILE = (WEIGHTS[n].filename for n in ("svm.gan_attribution", "svm.scaler", "svm.label_encoder"))

TINY_VISION = CLIPVisionCfg(layers=2, width=128, patch_size=14, image_size=224)
TINY_TEXT = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)
FULL_TEXT = CLIPTextCfg(context_length=77, vocab_size=49408, width=768, heads=12, layers=12)
TINY_E4E = E4EConfig(channels=(16, 32, 48, 64), units=(1, 1, 2, 1))
TINY_COMMFOR = {"img_size": 384, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 1}
GAN_LABELS = ("progan", "stylegan2", "stylegan3")
# In a weights folder: these are random test weights (JSON: see write_demo_weights).
# StyleGAN2 1024 px generator: 171 tensors, 30,370,060 parameters in the real e4e checkpoint.
_DECODER_PARAMS = 30_370_060


def write_test_weights(folder: Path, *, size: str = "tiny", seed: int = 0, ufd_head: Optional[Path] = None) -> Path:
    """Write a complete weights folder with random values; returns ``folder``.

    Args:
        size: ``"tiny"`` (seconds, ~30 MB) or ``"full"`` (the real architectures, ~2.6 GB).
        ufd_head: copy this ``fc_weights.pth`` (e.g. the real one) instead of a random head.
    """
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    full = size == "full"

    # CLIP, in open_clip's format; values fp16-representable like OpenAI's released weights.
    clip = CLIP(EMBED_DIM, VIT_L_14 if full else TINY_VISION, FULL_TEXT if full else TINY_TEXT, quick_gelu=True)
    clip_sd = {k: _randomize(v, g).half().float().contiguous() for k, v in clip.state_dict().items()}
    save_file(clip_sd, str(folder / CLIP_FILE))
    give_default_permissions(folder / CLIP_FILE)  # safetensors writes files owner-only
    del clip, clip_sd

    if ufd_head is not None:
        shutil.copyfile(ufd_head, folder / UFD_HEAD_FILE)
    else:
        head = {"weight": torch.randn(1, EMBED_DIM, generator=g) * 0.05, "bias": torch.zeros(1)}
        torch.save(head, folder / UFD_HEAD_FILE)

    config = E4EConfig() if full else TINY_E4E
    encoder = E4EEncoder(config)
    state = {f"encoder.{k}": _randomize(v, g) for k, v in encoder.state_dict().items()}
    state.update(_fake_decoder(_DECODER_PARAMS if full else 100_000, g))
    checkpoint = {
        "state_dict": state,
        "latent_avg": torch.randn(config.style_count, config.latent_dim, generator=g),
        "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 1024, "start_from_latent_avg": True},
    }
    torch.save(checkpoint, folder / E4E_FILE)

    _write_attribution_pickles(folder, config.style_count * config.latent_dim, seed)
    write_commfor_weights(folder / COMMFOR_FILE, VIT_S_16_384 if full else TINY_COMMFOR, g)
    return folder


def write_commfor_weights(path: Path, vit_cfg: dict, g: torch.Generator) -> Path:
    """Community Forensics' file format: the state dict of ``ViTClassifier`` (a timm ViT as ``vit``,
    its head a ``Linear(width, 1)``) in safetensors, as ``PyTorchModelHubMixin.save_pretrained`` writes it."""
    vit = VisionTransformer(**vit_cfg, num_classes=1)
    state = {f"vit.{k}": _randomize(v, g).contiguous() for k, v in vit.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})
    give_default_permissions(path)
    return path


def write_demo_weights(folder: Path, *, size: str = "tiny", seed: int = 0) -> dict:
    """:func:`write_test_weights` plus the :data:`TEST_WEIGHTS_MARKER` file; returns the marker's content.

    The random UFD head cannot match the published digest, so the marker records the head's
    sha256 for ``GANORIGIN_UFD_HEAD_SHA256``.
    """
    folder = write_test_weights(Path(folder), size=size, seed=seed)
    marker = {
        "test_weights": True,
        "note": "Random weights written by `ganorigin demo-weights` for trying GANOrigin; their answers are "
        "meaningless. The real weights download on first use when GANORIGIN_WEIGHTS_DIR is not set.",
        "size": size,
        "seed": seed,
        "ufd_head_sha256": sha256_file(folder / UFD_HEAD_FILE),
    }
    (folder / TEST_WEIGHTS_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return marker


def _randomize(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random values of a sensible scale for each kind of tensor (keeps activations finite)."""
    if not t.is_floating_point():
        return t.clone()
    if t.ndim >= 2:  # weights: fan-in scaled
        fan_in = t[0].numel()
        return torch.randn(t.shape, generator=g) / fan_in**0.5
    if t.ndim == 1 and t.numel() and (t == 1).all():  # norm scales, running_var
        return 1.0 + 0.1 * torch.rand(t.shape, generator=g)
    return 0.02 * torch.randn(t.shape, generator=g)


def _fake_decoder(n_params: int, g: torch.Generator) -> dict:
    """``decoder.*`` tensors with the real decoder's parameter count (never read by GANOrigin)."""
    rows = n_params // 512
    return {
        "decoder.style.1.weight": torch.randn(rows, 512, generator=g),
        "decoder.style.1.bias": torch.zeros(n_params - rows * 512),
    }


def _write_attribution_pickles(folder: Path, n_features: int, seed: int) -> None:
    """A real StandardScaler, LabelEncoder and SVC(kernel='linear', probability=True), as joblib files."""
    rng = np.random.default_rng(seed)
    per_class = 20
    centers = rng.normal(0.0, 1.0, (len(GAN_LABELS), n_features))
    X = np.concatenate([c + rng.normal(0.0, 3.0, (per_class, n_features)) for c in centers]).astype(np.float32)
    y = np.repeat(GAN_LABELS, per_class)
    label_encoder = LabelEncoder().fit(y)
    scaler = StandardScaler().fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # probability=True is deprecated in sklearn 1.9
        svm = SVC(kernel="linear", probability=True, random_state=seed)
        svm.fit(scaler.transform(X), label_encoder.transform(y))
    joblib.dump(svm, folder / SVM_FILE)
    joblib.dump(scaler, folder / SCALER_FILE)
    joblib.dump(label_encoder, folder / LABEL_ENCODER_FILE)
