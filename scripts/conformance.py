"""Conformance: GANOrigin's detector and encoder against the reference implementations.

With identical random weights in the real formats (full-size ViT-L/14 and IR-SE-50, CLIP weights
made fp16-representable like OpenAI's release) and a real UFD head, compares in exact fp32 on dev
images:

  (a) P(fake): GANOrigin's ``UFDDetector`` vs UniversalFakeDetect's code path -- OpenAI CLIP's
      ``models/clip/model.py::build_model`` (cast to fp32 as ``clip.load(device="cpu")`` does),
      ``encode_image`` and ``nn.Linear(768, 1)`` -- with ``validate.py``'s CenterCrop/Normalize;
  (b) W+ codes: GANOrigin's ``E4EEncoder`` vs e4e's ``Encoder4Editing(50, 'ir_se', opts)`` with
      ``configs/transforms_config.py``'s ``transform_inference``.

The reference code is read from the given repositories (bare git dirs: their HEAD; checkouts: their
files) into the work folder, never into GANOrigin. e4e's ``models.stylegan2.op`` (CUDA kernels, used
only by the decoder) is replaced by an inert stand-in so that the reference ``EqualLinear`` imports.

Not part of the test suite (~3 GB in the work folder, a few minutes on 2 CPU cores). Run:

    python scripts/conformance.py --ufd-repo DIR --e4e-repo DIR --dev-data DIR --ufd-head FILE
                                  [--images 12] [--workdir DIR]

Each folder option falls back to an environment variable (GANORIGIN_UFD_REPO, GANORIGIN_E4E_REPO,
GANORIGIN_DEV_DATA, GANORIGIN_UFD_HEAD_FILE). Prints the maximum absolute differences (P(fake),
head logit, CLIP feature, e4e code) and exits 1 when one is above its tolerance.
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib.util
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganorigin.factory import load_detector, load_encoder  # noqa: E402
from ganorigin.hub.registry import E4E_PREPROCESS, UFD_PREPROCESS  # noqa: E402
from ganorigin.images import load_image  # noqa: E402
from ganorigin.testing import CLIP_FILE, E4E_FILE, write_test_weights  # noqa: E402

TOLERANCES = {"P(fake)": 1e-5, "logit": 1e-4, "code": 1e-5}  # max absolute differences allowed

UFD_FILES = ("models/clip/model.py", "validate.py")
E4E_FILES = (
    "configs/__init__.py",
    "configs/transforms_config.py",
    "models/__init__.py",
    "models/encoders/__init__.py",
    "models/encoders/helpers.py",
    "models/encoders/psp_encoders.py",
    "models/stylegan2/__init__.py",
    "models/stylegan2/model.py",
)


def extract(repo: Path, files: tuple, dest: Path) -> Path:
    """Write ``files`` under ``dest``, from a checkout's files or a bare repository's HEAD."""
    for name in files:
        if (repo / name).is_file():
            data = (repo / name).read_bytes()
        else:
            shown = subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{name}"], capture_output=True)
            if shown.returncode:
                raise SystemExit(f"{repo} has no {name}: {shown.stderr.decode().strip()}")
            data = shown.stdout
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return dest


def revision(repo: Path) -> str:
    """The repository's HEAD commit, or ``"(no git)"`` for a plain folder."""
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return head.stdout.strip() if head.returncode == 0 else "(no git)"


def ufd_reference(ufd_dir: Path):
    """(UFD's ``models/clip/model.py`` module, ``validate.py``'s transform for 'clip')."""
    spec = importlib.util.spec_from_file_location("ufd_clip_model", ufd_dir / "models/clip/model.py")
    clip_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clip_model)
    # validate.py imports the whole training stack; read its MEAN/STD tables and crop size instead.
    tree = ast.parse((ufd_dir / "validate.py").read_text())
    tables = {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name) and t.id in ("MEAN", "STD")}
    (crop,) = {ast.literal_eval(node.args[0]) for node in ast.walk(tree) if isinstance(node, ast.Call)
               and isinstance(node.func, ast.Attribute) and node.func.attr == "CenterCrop"}
    transform = transforms.Compose([
        transforms.CenterCrop(crop), transforms.ToTensor(),
        transforms.Normalize(mean=tables["MEAN"]["clip"], std=tables["STD"]["clip"]),
    ])
    return clip_model, transform


def e4e_reference(e4e_dir: Path):
    """(e4e's ``Encoder4Editing``, its ``EqualLinear``, its ``transform_inference``), imported with
    an inert stand-in for the CUDA ops."""
    sys.path.insert(0, str(e4e_dir))
    op = types.ModuleType("models.stylegan2.op")

    def _needs_cuda(*args, **kwargs):
        raise RuntimeError("e4e's CUDA ops are not available in the conformance run")

    op.FusedLeakyReLU = type("FusedLeakyReLU", (nn.Module,), {"forward": _needs_cuda})
    op.fused_leaky_relu = _needs_cuda
    op.upfirdn2d = _needs_cuda
    sys.modules["models.stylegan2.op"] = op
    from configs.transforms_config import EncodeTransforms
    from models.encoders.psp_encoders import Encoder4Editing
    from models.stylegan2.model import EqualLinear

    return Encoder4Editing, EqualLinear, EncodeTransforms(None).get_transforms()["transform_inference"]


def pick_images(dev: Path, n: int) -> list[Path]:
    """``n`` dev images spread over classes, formats and sizes (smallest and largest included)."""
    with open(dev / "manifest.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["width"]) * int(r["height"]))
    picked = [rows[0], rows[-1]][:n]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["class"], r["format"]), []).append(r)
    while len(picked) < n and any(groups.values()):
        for key in sorted(groups):
            if groups[key] and len(picked) < n:
                r = groups[key].pop(len(groups[key]) // 2)
                if r not in picked:
                    picked.append(r)
    return [dev / r["path"] for r in picked]


def report(worst: dict, tolerances: dict) -> int:
    """Print the largest differences and whether each is within its tolerance; the exit status."""
    print("   ".join(f"max |d {k}| = {v:.3e}" for k, v in worst.items()))
    failed = [f"{k} {worst[k]:.3e} > {bound:g}" for k, bound in tolerances.items() if worst[k] > bound]
    print("FAIL: " + "; ".join(failed) if failed else
          "OK: within " + ", ".join(f"{k} {bound:g}" for k, bound in tolerances.items()))
    return 1 if failed else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    env = os.environ.get
    parser.add_argument("--ufd-repo", type=Path, default=env("GANORIGIN_UFD_REPO"),
                        help="WisconsinAIVision/UniversalFakeDetect: bare git dir or checkout (env GANORIGIN_UFD_REPO)")
    parser.add_argument("--e4e-repo", type=Path, default=env("GANORIGIN_E4E_REPO"),
                        help="omertov/encoder4editing: bare git dir or checkout (env GANORIGIN_E4E_REPO)")
    parser.add_argument("--dev-data", type=Path, default=env("GANORIGIN_DEV_DATA"),
                        help="dev images with a manifest.csv (env GANORIGIN_DEV_DATA)")
    parser.add_argument("--ufd-head", type=Path, default=env("GANORIGIN_UFD_HEAD_FILE"),
                        help="a real UFD fc_weights.pth (env GANORIGIN_UFD_HEAD_FILE)")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ganorigin_conformance",
                        help="random weights (written once) and the extracted reference code")
    args = parser.parse_args()
    needed = {"--ufd-repo": (args.ufd_repo, "GANORIGIN_UFD_REPO", Path.is_dir),
              "--e4e-repo": (args.e4e_repo, "GANORIGIN_E4E_REPO", Path.is_dir),
              "--dev-data": (args.dev_data, "GANORIGIN_DEV_DATA", lambda p: (p / "manifest.csv").is_file()),
              "--ufd-head": (args.ufd_head, "GANORIGIN_UFD_HEAD_FILE", Path.is_file)}
    for option, (value, variable, present) in needed.items():
        if value is None:
            parser.error(f"{option} is required (or set {variable})")
        if not present(value):
            parser.error(f"{option} {value}: not found" + (" (no manifest.csv)" if option == "--dev-data" else ""))
    return args


def main() -> int:
    args = parse_args()
    torch.manual_seed(0)

    weights = args.workdir / "weights"
    if not all((weights / f).is_file() for f in (CLIP_FILE, E4E_FILE)):
        print(f"writing full-size random weights to {weights} ...", flush=True)
        write_test_weights(weights, size="full", seed=0)
    clip_path, head_path, e4e_path = weights / CLIP_FILE, args.ufd_head, weights / E4E_FILE

    print(f"UFD reference: {args.ufd_repo} @ {revision(args.ufd_repo)}")
    print(f"e4e reference: {args.e4e_repo} @ {revision(args.e4e_repo)}")
    clip_model, ufd_tf = ufd_reference(extract(args.ufd_repo, UFD_FILES, args.workdir / "ufd"))
    Encoder4Editing, RefEqualLinear, e4e_tf = e4e_reference(extract(args.e4e_repo, E4E_FILES, args.workdir / "e4e"))

    ours_ufd = load_detector(clip_path, head_path)
    ref_clip = clip_model.build_model(load_file(str(clip_path))).float().eval()  # as clip.load(device="cpu")
    ref_fc = nn.Linear(768, 1)
    ref_fc.load_state_dict(torch.load(head_path, map_location="cpu"))

    ours_e4e = load_encoder(e4e_path)
    checkpoint = torch.load(e4e_path, map_location="cpu", weights_only=True)
    ref_e4e = Encoder4Editing(50, "ir_se", types.SimpleNamespace(stylegan_size=1024)).eval()
    ref_e4e.load_state_dict({k[len("encoder."):]: v for k, v in checkpoint["state_dict"].items()
                             if k.startswith("encoder.")})
    del checkpoint
    if not isinstance(ref_e4e.styles[0].linear, RefEqualLinear):
        raise SystemExit("the reference e4e did not use the reference EqualLinear")

    worst = dict.fromkeys(("P(fake)", "logit", "feature", "code"), 0.0)
    print(f"{'image':60s} {'size':>11s} {'P(fake) ours':>13s} {'ref':>10s} {'|dP|':>9s} {'max|dcode|':>11s}")
    with torch.inference_mode():
        for path in pick_images(args.dev_data, args.images):
            ours_img = load_image(path)
            ref_img = Image.open(path).convert("RGB")
            crop = UFD_PREPROCESS(ours_img)[None]
            feature_ours = ours_ufd.forward_features(crop)
            feature_ref = ref_clip.encode_image(ufd_tf(ref_img)[None])
            logit_ours, logit_ref = ours_ufd(crop).item(), ref_fc(feature_ref).item()
            p_ours = ours_ufd.predict_proba(crop).item()
            p_ref = torch.sigmoid(torch.tensor(logit_ref)).item()
            codes_ours = ours_e4e(E4E_PREPROCESS(ours_img)[None])
            codes_ref = ref_e4e(e4e_tf(ref_img)[None])
            # Random weights put P(fake) near 0 or 1, where |dP| is small whatever happens: the logit
            # and the 768-d feature are compared too.
            deltas = {"P(fake)": abs(p_ours - p_ref), "logit": abs(logit_ours - logit_ref),
                      "feature": (feature_ours - feature_ref).abs().max().item(),
                      "code": (codes_ours - codes_ref).abs().max().item()}
            worst = {k: max(worst[k], deltas[k]) for k in worst}
            size = f"{ref_img.width}x{ref_img.height}"
            print(f"{path.relative_to(args.dev_data)!s:60.60s} {size:>11s} {p_ours:13.6f} {p_ref:10.6f} "
                  f"{deltas['P(fake)']:9.2e} {deltas['code']:11.2e}", flush=True)
    return report(worst, TOLERANCES)


if __name__ == "__main__":
    sys.exit(main())
