"""Every weight file GANOrigin reads, as data: one record per artifact.

A record says where the file comes from (a Hub repo or a pinned URL), how it is checked (a
sha256 where one is published, a size cap for downloads), its licence, the preprocessing the
model behind it expects, and what reads it. The resolver, ``from_pretrained``, the CLI's
``--weights``, the Space front matter and ``weights/README.md`` all follow from this table (the
last two are checked against it by the tests). Adding a model means adding its records here and
its module under :mod:`ganorigin.models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..transforms import CenterCropNormalize, ResizeCenterCropNormalize, ResizeNormalize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# UFD's test-time transform: unlike open_clip's own, it never resizes; CLIP sees the centre
# 224 px at native resolution, where GAN artefacts live (smaller images are zero-padded).
UFD_PREPROCESS = CenterCropNormalize(crop_size=224, mean=CLIP_MEAN, std=CLIP_STD)
# e4e: Resize((256, 256)), ToTensor, Normalize(0.5, 0.5) -> [-1, 1]. Deterministic; the original
# app's random pre-resize was a training augmentation.
E4E_PREPROCESS = ResizeNormalize(size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# Community Forensics: dataloader.get_transform(mode="test"): Resize(440), CenterCrop(384),
# ImageNet mean/std, by input size (the authors' 224 px model, OwensLab/commfor-model-224, takes
# Resize(256), CenterCrop(224)). Not timm's transform for the backbone (bicubic, mean/std 0.5):
# the detector was fine-tuned with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COMMFOR_PREPROCESS = {
    384: ResizeCenterCropNormalize(resize=440, crop_size=384, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    224: ResizeCenterCropNormalize(resize=256, crop_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
}


@dataclass(frozen=True)
class Source:
    """Where files are published: a Hub repo (``repo_id``), or the pinned ``url`` of one file.

    ``env_location`` / ``env_revision`` name the environment variables that override it.
    """

    name: str
    repo_id: Optional[str] = None
    revision: Optional[str] = None  # None: the repo's main branch; set GANORIGIN_*REVISION to pin a commit
    url: Optional[str] = None
    env_location: Optional[str] = None
    env_revision: Optional[str] = None


@dataclass(frozen=True)
class WeightFile:
    """One published weight file. ``name`` is ``architecture.tag``, as timm names weights."""

    name: str
    filename: str
    source: str  # a key of SOURCES
    description: str
    licence: str
    read_by: str  # the function that reads it, as an import path
    sha256: Optional[str] = None
    size: Optional[int] = None  # bytes, when known: a download past it is cut off
    alternatives: tuple = ()  # other file names accepted in its place, in order of preference
    preprocess: object = None  # the transform its model expects, for the files that define a model
    optional: bool = False  # looked for, but not needed (e.g. a trained model replacing the pickles)


SOURCES = {
    "attribution": Source("attribution", repo_id="HAMIwithHugs/gan-attribution-model",
                          env_location="GANORIGIN_REPO_ID", env_revision="GANORIGIN_REVISION"),
    "clip": Source("clip", repo_id="timm/vit_large_patch14_clip_224.openai",
                   env_location="GANORIGIN_CLIP_REPO_ID", env_revision="GANORIGIN_CLIP_REVISION"),
    "ufd": Source("ufd", url="https://github.com/WisconsinAIVision/UniversalFakeDetect/raw/"
                  "76a0e3e60a8a06458707a625d269ba815a2e5919/pretrained_weights/fc_weights.pth",
                  env_location="GANORIGIN_UFD_HEAD_URL"),
    "commfor": Source("commfor", repo_id="OwensLab/commfor-model-384",
                      env_location="GANORIGIN_COMMFOR_REPO_ID", env_revision="GANORIGIN_COMMFOR_REVISION"),
}

WEIGHTS = {
    record.name: record
    for record in (
        WeightFile("clip.vit_large_patch14_openai", "open_clip_model.safetensors", "clip",
                   "OpenAI CLIP ViT-L/14 (only the image tower `visual.*` is read)", "MIT (OpenAI CLIP)",
                   "ganorigin.factory.load_detector", alternatives=("open_clip_pytorch_model.bin",),
                   preprocess=UFD_PREPROCESS),
        WeightFile("ufd.fc", "fc_weights.pth", "ufd", "UniversalFakeDetect linear head", "MIT (UniversalFakeDetect)",
                   "ganorigin.factory.load_detector",
                   sha256="477100745713bcc957beb2b40859536859b6483fd6301b3b9293151b194c7847", size=4083),
        WeightFile("e4e.ffhq_encode", "e4e_ffhq_encode.pt", "attribution",
                   "e4e encoder (+ StyleGAN2 decoder, never loaded)", "MIT (encoder4editing)",
                   "ganorigin.factory.load_encoder", preprocess=E4E_PREPROCESS),
        WeightFile("commfor.vit_small_patch16_384", "model.safetensors", "commfor",
                   "Community Forensics ViT-S/16 at 384 px (`vit.*`; the `config.json` beside it only repeats "
                   "the constructor's arguments, the architecture is read from the tensor shapes)",
                   "MIT (Community Forensics)", "ganorigin.factory.load_commfor", preprocess=COMMFOR_PREPROCESS[384]),
        WeightFile("svm.gan_attribution", "gan_attribution_model.pkl", "attribution", "linear SVM (joblib)",
                   "not stated by the original project", "ganorigin.hub.pickles.load_attributor_pickles"),
        WeightFile("svm.scaler", "gan_scaler.pkl", "attribution", "StandardScaler (joblib)",
                   "not stated by the original project", "ganorigin.hub.pickles.load_attributor_pickles"),
        WeightFile("svm.label_encoder", "gan_label_encoder.pkl", "attribution", "LabelEncoder (joblib)",
                   "not stated by the original project", "ganorigin.hub.pickles.load_attributor_pickles"),
        WeightFile("svm.trained", "attribution_model.json", "attribution",
                   "a model trained with `ganorigin train` (JSON + arrays, no pickle); replaces the three pickles",
                   "yours", "ganorigin.hub.trained_model.load_attribution_model", optional=True),
        WeightFile("svm.trained_arrays", "attribution_model.npz", "attribution",
                   "the arrays of `attribution_model.json`", "yours",
                   "ganorigin.hub.trained_model.load_attribution_model", optional=True),
    )
}

PICKLE_FILES = ("svm.gan_attribution", "svm.scaler", "svm.label_encoder")
TRAINED_FILES = ("svm.trained", "svm.trained_arrays")


def weight_file(name: str) -> WeightFile:
    """The record called ``name``; the error lists the valid names."""
    try:
        return WEIGHTS[name]
    except KeyError:
        raise KeyError(f"No weight file {name!r}; known: {', '.join(WEIGHTS)}.") from None


def filenames(record: WeightFile) -> tuple:
    """Every file name accepted for ``record``, preferred first."""
    return (record.filename, *record.alternatives)


def location(source: Source) -> str:
    """A source as a person reads it: ``Hub org/name`` or the URL."""
    return f"Hub `{source.repo_id}`" if source.repo_id else source.url


def weights_table() -> str:
    """The Markdown table of ``weights/README.md``: file, what it is, source, licence."""
    rows = ["| file | what | source | licence |", "|---|---|---|---|"]
    for record in WEIGHTS.values():
        names = " or ".join(f"`{n}`" for n in filenames(record))
        what = record.description + (f" (sha256 `{record.sha256[:10]}…{record.sha256[-4:]}`)" if record.sha256 else "")
        rows.append(f"| {names} | {what} | {location(SOURCES[record.source])} | {record.licence} |")
    return "\n".join(rows)


def space_front_matter() -> dict:
    """The Hugging Face Space front matter's ``models`` and ``preload_from_hub`` entries."""
    models, preload = [], []
    for source in SOURCES.values():
        if source.repo_id is None:
            continue
        files = [r.filename for r in WEIGHTS.values() if r.source == source.name and not r.optional]
        models.append(source.repo_id)
        preload.append(f"{source.repo_id} {','.join(files)}")
    return {"models": models, "preload_from_hub": preload}
