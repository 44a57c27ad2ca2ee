"""Conformance: GANOrigin's Community Forensics detector against the authors' reference code.

With identical full-size random weights written in the authors' file format (``model.safetensors``
with keys ``vit.*``, plus the ``config.json`` PyTorchModelHubMixin writes), compares in exact fp32:

  - the file loads into the authors' ``models.ViTClassifier`` through its own
    ``PyTorchModelHubMixin.from_pretrained`` (every tensor arrives unchanged) and into
    GANOrigin's ``CommForDetector`` through ``load_commfor`` (strict);
  - the input tensors: ``dataloader.get_transform(mode="test")`` against GANOrigin's transform;
  - the logits and P(fake) = sigmoid(logit), on dev images and the repository's ``test_images/``.

The reference code is read from the given repository (a bare git dir: its HEAD; a checkout: its
files) into the work folder, never into GANOrigin. Two things are stood in for, neither on the
inference path: ``timm.create_model`` is called with ``pretrained=False`` (the authors' constructor
downloads ImageNet weights that the checkpoint then replaces), and the training-only imports of
``dataloader.py`` (``datasets``, the training ``utils``) are empty modules.

Not part of the test suite (about a minute on 2 CPU cores). Run:

    python scripts/conformance_commfor.py --commfor-repo DIR --dev-data DIR [--images 8] [--input-size 384]
                                          [--workdir DIR]

Options fall back to environment variables (GANORIGIN_COMMFOR_REPO, GANORIGIN_DEV_DATA). Prints
the maximum absolute differences and exits 1 when one is above its tolerance.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import timm
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from conformance import extract, pick_images, report, revision  # noqa: E402
from ganorigin.factory import load_commfor  # noqa: E402
from ganorigin.hub.registry import COMMFOR_PREPROCESS  # noqa: E402
from ganorigin.images import load_image  # noqa: E402
from ganorigin.models.commfor import VIT_S_16_384  # noqa: E402
from ganorigin.testing import write_commfor_weights  # noqa: E402

TOLERANCES = {"P(fake)": 1e-5, "logit": 1e-4, "input": 0.0}  # max absolute differences allowed
REFERENCE_FILES = ("models.py", "dataloader.py", "custom_transforms.py", "custom_sampler.py")
TEST_IMAGES = ("00000274.png", "00000420.png", "00000845.png", "00000916.png", "00000989.png")


def reference_modules(repo: Path, workdir: Path):
    """The authors' ``models`` and ``dataloader`` modules, imported from ``workdir``."""
    folder = extract(repo, REFERENCE_FILES + tuple(f"test_images/{name}" for name in TEST_IMAGES), workdir)
    sys.path.insert(0, str(folder))
    for training_only in ("datasets", "utils"):
        sys.modules.setdefault(training_only, types.ModuleType(training_only))
    create_model = timm.create_model
    timm.create_model = lambda name, pretrained=False, **kwargs: create_model(name, pretrained=False, **kwargs)
    return importlib.import_module("models"), importlib.import_module("dataloader"), folder / "test_images"


def write_checkpoint(folder: Path, input_size: int) -> Path:
    """Full-size random weights as ``ViTClassifier.save_pretrained`` lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    write_commfor_weights(folder / "model.safetensors", {**VIT_S_16_384, "img_size": input_size},
                          torch.Generator().manual_seed(0))
    (folder / "config.json").write_text(json.dumps({"model_size": "small", "input_size": input_size, "patch_size": 16}))
    return folder


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    env = os.environ.get
    parser.add_argument("--commfor-repo", type=Path, default=env("GANORIGIN_COMMFOR_REPO"),
                        help="JeongsooP/Community-Forensics: bare git dir or checkout (env GANORIGIN_COMMFOR_REPO)")
    parser.add_argument("--dev-data", type=Path, default=env("GANORIGIN_DEV_DATA"),
                        help="dev images with a manifest.csv (env GANORIGIN_DEV_DATA)")
    parser.add_argument("--images", type=int, default=8, help="dev images to compare on (default: 8)")
    parser.add_argument("--input-size", type=int, choices=(384, 224), default=384)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ganorigin_conformance_commfor")
    args = parser.parse_args()
    if args.commfor_repo is None or not args.commfor_repo.is_dir():
        parser.error("--commfor-repo (or GANORIGIN_COMMFOR_REPO) must name the reference repository")
    if args.dev_data is None or not (args.dev_data / "manifest.csv").is_file():
        parser.error("--dev-data (or GANORIGIN_DEV_DATA) must name a folder with a manifest.csv")
    return args


def main() -> int:
    args = parse_args()
    torch.manual_seed(0)
    print(f"Community Forensics reference: {args.commfor_repo} @ {revision(args.commfor_repo)}; timm {timm.__version__}")
    models, dataloader, test_images = reference_modules(args.commfor_repo, args.workdir / "reference")
    checkpoint = write_checkpoint(args.workdir / f"weights-{args.input_size}", args.input_size)

    ours = load_commfor(checkpoint / "model.safetensors")
    reference = models.ViTClassifier.from_pretrained(str(checkpoint), device="cpu", map_location="cpu").eval()
    saved = load_file(str(checkpoint / "model.safetensors"))
    loaded = reference.state_dict()
    if set(loaded) != set(saved) or any(not torch.equal(loaded[k], saved[k]) for k in saved):
        raise SystemExit("the reference did not load every tensor of the checkpoint unchanged")
    reference_transform = dataloader.get_transform(argparse.Namespace(input_size=args.input_size), mode="test")
    transform = COMMFOR_PREPROCESS[args.input_size]

    images = pick_images(args.dev_data, args.images) + [test_images / name for name in TEST_IMAGES]
    worst = dict.fromkeys(("P(fake)", "logit", "input"), 0.0)
    print(f"{'image':60s} {'size':>11s} {'P(fake) ours':>13s} {'ref':>10s} {'|dP|':>9s} {'|dlogit|':>9s}")
    with torch.inference_mode():
        for path in images:
            x_ours = transform(load_image(path))[None]
            x_ref = reference_transform(Image.open(path).convert("RGB"))[None]
            logit_ours, logit_ref = ours(x_ours).item(), reference(x_ref).item()
            p_ours, p_ref = torch.sigmoid(torch.tensor(logit_ours)).item(), torch.sigmoid(torch.tensor(logit_ref)).item()
            deltas = {"P(fake)": abs(p_ours - p_ref), "logit": abs(logit_ours - logit_ref),
                      "input": (x_ours - x_ref).abs().max().item()}
            worst = {k: max(worst[k], deltas[k]) for k in worst}
            with Image.open(path) as image:
                size = f"{image.width}x{image.height}"
            name = path.relative_to(args.dev_data) if args.dev_data in path.parents else f"test_images/{path.name}"
            print(f"{name!s:60.60s} {size:>11s} {p_ours:13.6f} {p_ref:10.6f} {deltas['P(fake)']:9.2e} "
                  f"{deltas['logit']:9.2e}", flush=True)
    return report(worst, TOLERANCES)


if __name__ == "__main__":
    sys.exit(main())
