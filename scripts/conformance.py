"""Conformance: GANOrigin's detector and encoder against the reference implementations.

With identical random weights in the real formats (full-size ViT-L/14 and IR-SE-50, CLIP weights
made fp16-representable like OpenAI's release, the real UFD head), compares on real images from
../shared/data/dev:

  (a) P(fake): our ``UFDDetector`` vs UniversalFakeDetect's code path -- OpenAI CLIP's
      ``models/clip/model.py::build_model`` (cast to fp32 as ``clip.load(device="cpu")`` does),
      ``encode_image`` and ``nn.Linear(768, 1)`` -- with UFD's ``validate.py`` transform;
  (b) W+ codes: our ``E4EEncoder`` vs e4e's ``Encoder4Editing(50, 'ir_se', opts)`` with e4e's
      ``transform_inference`` (Resize 256, ToTensor, Normalize 0.5).

The reference code runs from the fetched repositories (bare git dirs under /work/.mirror), extracted
into a temporary folder outside the project; nothing of it is copied into GANOrigin. e4e's
``models.stylegan2.op`` (custom CUDA kernels, used only by the decoder) is replaced by an inert
stand-in module so that ``models.stylegan2.model.EqualLinear`` -- the reference layer -- imports.

Not part of the test suite (needs ~3 GB of /tmp and a few minutes on 2 CPU cores). Run:

    . .venv/bin/activate && python scripts/conformance.py [--images 12] [--workdir /tmp/ganorigin_conformance]

It prints the maximum absolute differences (P(fake), head logit, CLIP feature, e4e code) and exits
non-zero if the P(fake), logit or code difference exceeds 1e-3.
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganorigin import E4EEncoder, UFDDetector, load_image  # noqa: E402
from ganorigin.detector import ufd_transform  # noqa: E402
from ganorigin.encoder import e4e_transform  # noqa: E402
from ganorigin.testing import write_test_weights  # noqa: E402

MIRROR = Path("/work/.mirror")
UFD_REPO = MIRROR / "WisconsinAIVision+UniversalFakeDetect" / "repo"
E4E_REPO = MIRROR / "omertov+encoder4editing" / "repo"
DEV = ROOT.parent / "shared" / "data" / "dev"
REAL_UFD_HEAD = ROOT.parent / "shared" / "reference" / "ufd_fc_weights.pth"
TOLERANCE = 1e-3

UFD_FILES = ("models/clip/model.py", "validate.py")
E4E_FILES = (
    "models/__init__.py",
    "models/encoders/__init__.py",
    "models/encoders/helpers.py",
    "models/encoders/psp_encoders.py",
    "models/stylegan2/__init__.py",
    "models/stylegan2/model.py",
)


def extract(repo: Path, files: tuple, dest: Path) -> Path:
    """Write ``files`` from the bare repo's HEAD under ``dest``."""
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{name}"],
                                          check=True, capture_output=True).stdout)
    return dest


def ufd_reference(ufd_dir: Path):
    """(CLIP module from UFD's models/clip/model.py, UFD's validate.py transform for 'clip')."""
    spec = importlib.util.spec_from_file_location("ufd_clip_model", ufd_dir / "models/clip/model.py")
    clip_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clip_model)
    # validate.py imports the whole training stack; read just its MEAN/STD tables.
    tree = ast.parse((ufd_dir / "validate.py").read_text())
    tables = {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name) and t.id in ("MEAN", "STD")}
    transform = transforms.Compose([
        transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(mean=tables["MEAN"]["clip"], std=tables["STD"]["clip"]),
    ])
    return clip_model, transform


def e4e_reference(e4e_dir: Path):
    """e4e's ``Encoder4Editing`` class, imported with an inert stand-in for the CUDA ops."""
    sys.path.insert(0, str(e4e_dir))
    op = types.ModuleType("models.stylegan2.op")

    def _needs_cuda(*args, **kwargs):
        raise RuntimeError("e4e's CUDA ops are not available in the conformance run")

    op.FusedLeakyReLU = type("FusedLeakyReLU", (nn.Module,), {"forward": _needs_cuda})
    op.fused_leaky_relu = _needs_cuda
    op.upfirdn2d = _needs_cuda
    sys.modules["models.stylegan2.op"] = op
    from models.encoders.psp_encoders import Encoder4Editing
    from models.stylegan2.model import EqualLinear

    return Encoder4Editing, EqualLinear


def pick_images(n: int) -> list[Path]:
    """``n`` dev images spread over classes, formats and sizes (smallest and largest included)."""
    with open(DEV / "manifest.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["width"]) * int(r["height"]))
    picked = [rows[0], rows[-1]]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["class"], r["format"]), []).append(r)
    while len(picked) < n and any(groups.values()):
        for key in sorted(groups):
            if groups[key] and len(picked) < n:
                r = groups[key].pop(len(groups[key]) // 2)
                if r not in picked:
                    picked.append(r)
    return [DEV / r["path"] for r in picked]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ganorigin_conformance"))
    args = parser.parse_args()
    torch.manual_seed(0)

    weights = args.workdir / "weights"
    if not (weights / "e4e_ffhq_encode.pt").is_file():
        print(f"writing full-size random weights to {weights} ...", flush=True)
        write_test_weights(weights, size="full", seed=0, ufd_head=REAL_UFD_HEAD)
    clip_path, head_path = weights / "open_clip_model.safetensors", weights / "fc_weights.pth"

    clip_model, ufd_tf = ufd_reference(extract(UFD_REPO, UFD_FILES, args.workdir / "ufd"))
    Encoder4Editing, RefEqualLinear = e4e_reference(extract(E4E_REPO, E4E_FILES, args.workdir / "e4e"))

    ours_ufd = UFDDetector.from_files(clip_path, head_path)
    ref_clip = clip_model.build_model(load_file(str(clip_path))).float().eval()  # as clip.load(device="cpu")
    ref_fc = nn.Linear(768, 1)
    ref_fc.load_state_dict(torch.load(head_path, map_location="cpu"))

    ours_e4e = E4EEncoder.from_checkpoint(weights / "e4e_ffhq_encode.pt")
    checkpoint = torch.load(weights / "e4e_ffhq_encode.pt", map_location="cpu", weights_only=True)
    ref_e4e = Encoder4Editing(50, "ir_se", types.SimpleNamespace(stylegan_size=1024)).eval()
    ref_e4e.load_state_dict({k[len("encoder."):]: v for k, v in checkpoint["state_dict"].items()
                             if k.startswith("encoder.")})
    if not isinstance(ref_e4e.styles[0].linear, RefEqualLinear):
        raise SystemExit("the reference e4e did not use the reference EqualLinear")
    e4e_tf = transforms.Compose([transforms.Resize((256, 256)), transforms.ToTensor(),
                                 transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])

    max_dp = max_dcode = max_dlogit = max_dfeature = 0.0
    print(f"{'image':60s} {'size':>11s} {'P(fake) ours':>13s} {'ref':>10s} {'|dP|':>9s} {'max|dcode|':>11s}")
    with torch.inference_mode():
        for path in pick_images(args.images):
            ours_img = load_image(path)
            ref_img = Image.open(path).convert("RGB")
            feature_ours = ours_ufd.forward_features(ufd_transform(ours_img)[None])
            feature_ref = ref_clip.encode_image(ufd_tf(ref_img)[None])
            logit_ours, logit_ref = ours_ufd.fc(feature_ours).item(), ref_fc(feature_ref).item()
            p_ours = ours_ufd.predict_proba(ufd_transform(ours_img)[None]).item()
            p_ref = torch.sigmoid(torch.tensor(logit_ref)).item()
            # Random weights put P(fake) near 0 or 1, where |dP| is small whatever happens: report
            # the logit and the 768-d feature too.
            max_dlogit = max(max_dlogit, abs(logit_ours - logit_ref))
            max_dfeature = max(max_dfeature, (feature_ours - feature_ref).abs().max().item())
            codes_ours = ours_e4e(e4e_transform(ours_img)[None])
            codes_ref = ref_e4e(e4e_tf(ref_img)[None])
            dp, dcode = abs(p_ours - p_ref), (codes_ours - codes_ref).abs().max().item()
            max_dp, max_dcode = max(max_dp, dp), max(max_dcode, dcode)
            size = f"{ref_img.width}x{ref_img.height}"
            print(f"{path.relative_to(DEV)!s:60.60s} {size:>11s} {p_ours:13.6f} {p_ref:10.6f} {dp:9.2e} {dcode:11.2e}",
                  flush=True)
    print(f"max |d P(fake)| = {max_dp:.3e}   max |d logit| = {max_dlogit:.3e}   "
          f"max |d feature| = {max_dfeature:.3e}   max |d code| = {max_dcode:.3e}   (tolerance {TOLERANCE:g})")
    return 0 if max(max_dp, max_dlogit, max_dcode) <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
