"""Builders: architecture + weights + strict loading + acceleration, composed in one call each.

``create_detector()`` / ``create_encoder()`` / ``create_commfor()`` build the pure model with random weights; with
``pretrained=True`` (or resolved ``files``) they load the published weights strictly, and with a
``precision`` other than ``"fp32"`` they return the accelerated module where it agrees with the
exact one on the probe image (:func:`ganorigin.accel.accelerate`); a fast detector hands the images
it scores near a verdict's edge to the exact one (:class:`ganorigin.accel.BorderlineExact`).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .accel import BorderlineExact, accelerate, borderline_band, candidate_precisions
from .accel.convert import COMMFOR_MARGIN, Accelerated, base_model
from .errors import ConfigurationError, WeightsFormatError
from .hub import ResolvedWeights, WeightSources, resolve
from .hub.checkpoints import load_tensors, load_torch_file, strict_load
from .hub.registry import COMMFOR_PREPROCESS, E4E_PREPROCESS, UFD_PREPROCESS
from .models.commfor import CommForDetector, vit_cfg_from_state_dict
from .models.detector import UFDDetector, clip_visual_state_dict, vision_cfg_from_state_dict
from .models.encoder import (E4EEncoder, checkpoint_filter_fn, config_from_state_dict, encoder_fingerprint,
                             encoder_mismatch)
from .verdict import COMMFOR_THRESHOLD, UnsurePolicy, effective_band

Device = Union[None, str, torch.device]
logger = logging.getLogger(__name__)


def load_detector(clip_path: Path, head_path: Path) -> UFDDetector:
    """UFD from an open_clip CLIP checkpoint (only ``visual.*`` is read) and ``fc_weights.pth``."""
    visual = clip_visual_state_dict(load_tensors(clip_path, prefix="visual."), clip_path)
    head = load_torch_file(head_path)
    if not isinstance(head, dict) or head.get("weight") is None or head.get("bias") is None:
        found = sorted(head) if isinstance(head, dict) else type(head).__name__
        raise WeightsFormatError(f"{Path(head_path).name} should hold 'weight' and 'bias'; found {found}.")
    head = {k: v.float() for k, v in head.items()}
    with torch.device("meta"):
        model = UFDDetector(vision_cfg=vision_cfg_from_state_dict(visual), embed_dim=head["weight"].shape[1])
    strict_load(model.visual, visual, clip_path)
    strict_load(model.fc, head, head_path)
    return model


def load_encoder(path: Path) -> E4EEncoder:
    """The encoder half of an e4e/pSp checkpoint; the StyleGAN2 decoder is never built."""
    state_dict, _ = checkpoint_filter_fn(load_torch_file(path), path)
    with torch.device("meta"):
        model = E4EEncoder(config_from_state_dict(state_dict))
    strict_load(model, state_dict, path)
    return model


def load_commfor(path: Path) -> CommForDetector:
    """Community Forensics from the authors' ``model.safetensors`` (PyTorchModelHubMixin: keys ``vit.*``)."""
    state_dict = {k: v.float() for k, v in load_tensors(path).items()}
    vit_cfg = vit_cfg_from_state_dict(state_dict)
    if vit_cfg["img_size"] not in COMMFOR_PREPROCESS:
        raise WeightsFormatError(f"{Path(path).name} is a Community Forensics ViT for {vit_cfg['img_size']} px inputs; "
                                 f"the published models take {' or '.join(map(str, COMMFOR_PREPROCESS))} px.")
    with torch.device("meta"):
        model = CommForDetector(vit_cfg)
    strict_load(model, state_dict, path)
    return model


def create_detector(*, pretrained: bool = False, files: Optional[ResolvedWeights] = None,
                    sources: Optional[WeightSources] = None, device: Device = None,
                    precision: Optional[str] = "fp32") -> nn.Module:
    """UniversalFakeDetect, ready for inference on ``device``.

    Args:
        pretrained: load the published weights (resolved from ``sources``, or given as ``files``).
        precision: ``"fp32"`` (exact), ``"auto"``/``None`` (the fastest agreeing path on this
            device, see :mod:`ganorigin.accel`), ``"bf16"``, ``"int8"`` (CPU), ``"fp16"`` (CUDA). A fast path scores its
            borderline images again exactly (:class:`~ganorigin.accel.BorderlineExact`), in a band as wide as
            its measured noise needs (:func:`~ganorigin.accel.probe.exact_band`).
    """
    device = as_device(device)
    if not (pretrained or files):
        return UFDDetector().to(device)
    files = files or resolve(sources)
    model = load_detector(files.clip, files.ufd_head).to(device)
    fast = accelerate(model, device, candidate_precisions(precision, device, "detector"), detector_logits,
                      kind="detector", weight_files=[files.clip, files.ufd_head])
    if fast is model or (band := fast.agreement["band"]) == 0:
        return fast
    if band < borderline_band():
        logger.info("UFD's CLIP in %s moves its logit by %.3f (root mean square on the probe): P(fake) between %.4f "
                    "and %.4f is scored again by exact fp32, not from %g.", fast.precision, fast.agreement["noise"],
                    band, 1 - band, borderline_band())
    return BorderlineExact(fast, model, band)


def create_encoder(*, pretrained: bool = False, files: Optional[ResolvedWeights] = None,
                   sources: Optional[WeightSources] = None, device: Device = None,
                   precision: Optional[str] = "fp32",
                   attribution: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                   attribution_files: tuple = (), attribution_encoder: Optional[str] = None) -> nn.Module:
    """The e4e encoder, ready for inference on ``device``.

    Args:
        attribution: features -> GAN probabilities; the probe compares those. Without it the probe
            cannot judge agreement and the encoder stays exact fp32.
        attribution_files: the files behind ``attribution`` (they name the cached verdict).
        attribution_encoder: the fingerprint of the e4e weights ``attribution`` was trained with
            (``GANAttributor.trained_encoder``); a warning is logged when these weights are others.
    """
    device = as_device(device)
    if not (pretrained or files):
        return E4EEncoder().to(device)
    files = files or resolve(sources)
    model = load_encoder(files.e4e)
    if attribution_encoder and (warning := encoder_mismatch(attribution_encoder, encoder_fingerprint(model))):
        logger.warning(warning)
    model = model.to(device)
    if attribution is None:
        return model

    def scores(module: nn.Module, images: list) -> np.ndarray:
        return attribution(encode(module, images))

    return accelerate(model, device, candidate_precisions(precision, device, "encoder"), scores, kind="encoder",
                      weight_files=[files.e4e, *attribution_files])


def create_commfor(*, pretrained: bool = False, files: Optional[ResolvedWeights] = None,
                   sources: Optional[WeightSources] = None, device: Device = None,
                   precision: Optional[str] = "fp32", edges: Optional[Sequence[float]] = None) -> nn.Module:
    """Community Forensics (the any-generator detector), ready for inference on ``device``.

    Args:
        pretrained: load the published weights (resolved from ``sources``, or given as ``files``).
        precision: as :func:`create_detector`; the probe bounds its logit's noise on its own. A fast path scores
            the images it puts near one of ``edges`` again exactly.
        edges: the P(fake)s where its verdict changes (default: :data:`COMMFOR_THRESHOLD` and the edges of
            the "unsure" band around it, ``UnsurePolicy.from_env()``).
    """
    device = as_device(device)
    if not (pretrained or files):
        return CommForDetector().to(device)
    files = files or resolve(sources)
    model = load_commfor(files.commfor).to(device)
    fast = accelerate(model, device, candidate_precisions(precision, device, "commfor"), commfor_logits,
                      kind="commfor", weight_files=[files.commfor])
    if fast is model or borderline_band() == 0:
        return fast
    if edges is None:
        band = effective_band(COMMFOR_THRESHOLD, UnsurePolicy.from_env().commfor_band)
        edges = sorted({COMMFOR_THRESHOLD - band, COMMFOR_THRESHOLD, COMMFOR_THRESHOLD + band})
    return BorderlineExact(fast, model, band=None, edges=edges, margin=COMMFOR_MARGIN)


def detector_scores(detector: nn.Module, images: list, batch: int = 1) -> np.ndarray:
    """UFD's P(fake) for decoded RGB images, ``batch`` per forward, shape (B,)."""
    return _scores(detector, UFD_PREPROCESS, images, batch)


def detector_logits(detector: nn.Module, images: list, batch: int = 1) -> np.ndarray:
    """UFD's logit for decoded RGB images (what the agreement probe compares), shape (B,)."""
    return _scores(detector, UFD_PREPROCESS, images, batch, sigmoid=False)


def commfor_scores(commfor: nn.Module, images: list, batch: int = 1) -> np.ndarray:
    """Community Forensics' P(fake) for decoded RGB images, ``batch`` per forward, shape (B,)."""
    preprocess = COMMFOR_PREPROCESS[base_model(commfor).input_size]
    return _scores(commfor, preprocess, images, batch)


def commfor_logits(commfor: nn.Module, images: list, batch: int = 1) -> np.ndarray:
    """Community Forensics' logit for decoded RGB images (what the agreement probe compares), shape (B,)."""
    return _scores(commfor, COMMFOR_PREPROCESS[base_model(commfor).input_size], images, batch, sigmoid=False)


@torch.inference_mode()
def _scores(model: nn.Module, preprocess, images: list, batch: int, sigmoid: bool = True) -> np.ndarray:
    """sigmoid(model(preprocess(image))) (or the logit alone) for each image, ``batch`` per forward, shape (B,)."""
    device = _device_of(model)
    outputs = [model(torch.stack([preprocess(im) for im in images[i : i + batch]]).to(device)).float()
               for i in range(0, len(images), batch)]
    return np.concatenate([(torch.sigmoid(out) if sigmoid else out).cpu().numpy() for out in outputs])


@torch.inference_mode()
def encode(encoder: nn.Module, images: list, batch: int = 1) -> np.ndarray:
    """e4e W+ codes of decoded RGB images, ``batch`` per forward, flattened: shape (B, 18 * 512)."""
    device = _device_of(encoder)
    return np.concatenate([
        encoder(torch.stack([E4E_PREPROCESS(im) for im in images[i : i + batch]]).to(device)).flatten(1).float()
        .cpu().numpy()
        for i in range(0, len(images), batch)
    ])


def encode_in_parts(encoder: nn.Module, images: list, submit: Callable[[Callable], Future],
                    batch: int = 1, split: bool = True) -> list:
    """:func:`encode` as work others can share: ``batch`` images per forward, the last batch in parts: e4e's
    feature maps are computed here and each style group is handed to ``submit(fn) -> Future``, the group on the
    largest map (the most work) first, so that a worker done with its own models takes the end of e4e's. (Every
    batch in parts measured slower for ``predict_batch``: the maps of all the batches wait in memory.) An encoder
    without those parts (no ``feature_maps``), or with ``split`` off (on a GPU), runs whole, here, its codes
    copied to the CPU. Returns per batch ``(combine, futures)``, for :func:`codes_from_parts`; the codes are
    :func:`encode`'s, bitwise."""
    device = _device_of(encoder)
    in_parts = split and hasattr(base_model(encoder), "feature_maps")
    parts = []
    for i in range(0, len(images), batch):
        x = torch.stack([E4E_PREPROCESS(im) for im in images[i : i + batch]]).to(device)
        if not in_parts or i + batch < len(images):  # whole, here
            parts.append((itemgetter(0), [_done(encoder(x).float().cpu())]))
            continue
        maps = _call(encoder, "feature_maps", x)
        largest_first = sorted(range(len(maps)), key=lambda k: -maps[k].shape[-1])
        futures = {k: submit(partial(_call, encoder, "group_styles", maps[k], k)) for k in largest_first}
        parts.append((E4EEncoder.codes, [futures[k] for k in range(len(maps))]))
    return parts


def codes_from_parts(parts: list) -> np.ndarray:
    """The flattened W+ codes, shape (B, 18 * 512), once every future of :func:`encode_in_parts` is done."""
    return np.concatenate([combine([future.result() for future in futures]).flatten(1).float().cpu().numpy()
                           for combine, futures in parts])


def _done(result) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future


def _call(model: nn.Module, method: str, x: torch.Tensor, *args):
    """``model.<method>(x, *args)``; on an accelerated model, the method of the model it runs, as it runs it."""
    return model.call(method, x, *args) if isinstance(model, Accelerated) else getattr(model, method)(x, *args)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_device(device: Device) -> torch.device:
    """``device`` as a torch device; ``None`` is :func:`default_device`.

    Raises:
        ConfigurationError: ``device`` names no device, or one this machine does not have."""
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigurationError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1'; got {device!r}.") \
            from None
    if device.type == "cuda" and torch.cuda.device_count() == 0:
        raise ConfigurationError(f"device {str(device)!r} needs an NVIDIA GPU, and PyTorch sees none on this machine "
                                 f"(torch {torch.__version__}). Use 'cpu', or leave the device out: a GPU is used "
                                 "where there is one.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigurationError(f"device {str(device)!r}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s) here, "
                                 "numbered from 0.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigurationError("device 'mps' needs an Apple GPU with PyTorch's mps backend, which this machine does "
                                 "not have. Use 'cpu'.")
    return device
