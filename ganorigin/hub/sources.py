"""Where weights come from (:class:`WeightSources`) and where they were found (:class:`ResolvedWeights`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Union

from ..errors import WeightsNotFoundError
from .registry import SOURCES, WEIGHTS


@dataclass(frozen=True)
class WeightSources:
    """Where to look for each weight file. ``WeightSources.from_env()`` applies the env vars."""

    weights_dir: Optional[str] = None
    repo_id: str = SOURCES["attribution"].repo_id
    revision: Optional[str] = None
    clip_repo_id: str = SOURCES["clip"].repo_id
    clip_revision: Optional[str] = None
    ufd_head_url: str = SOURCES["ufd"].url
    ufd_head_sha256: str = WEIGHTS["ufd.fc"].sha256
    commfor_repo_id: str = SOURCES["commfor"].repo_id
    commfor_revision: Optional[str] = None
    cache_dir: Optional[str] = None
    local_files_only: bool = False

    @classmethod
    def from_env(cls, **overrides) -> "WeightSources":
        env = os.environ.get
        values = dict(
            weights_dir=env("GANORIGIN_WEIGHTS_DIR") or None,
            repo_id=env("GANORIGIN_REPO_ID") or cls.repo_id,
            revision=env("GANORIGIN_REVISION") or None,
            clip_repo_id=env("GANORIGIN_CLIP_REPO_ID") or cls.clip_repo_id,
            clip_revision=env("GANORIGIN_CLIP_REVISION") or None,
            ufd_head_url=env("GANORIGIN_UFD_HEAD_URL") or cls.ufd_head_url,
            ufd_head_sha256=env("GANORIGIN_UFD_HEAD_SHA256") or cls.ufd_head_sha256,
            commfor_repo_id=env("GANORIGIN_COMMFOR_REPO_ID") or cls.commfor_repo_id,
            commfor_revision=env("GANORIGIN_COMMFOR_REVISION") or None,
            cache_dir=env("GANORIGIN_CACHE_DIR") or None,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def parse(cls, source: Union[None, str, os.PathLike, "WeightSources"] = None) -> "WeightSources":
        """Turn ``from_pretrained``'s ``source`` into sources.

        ``None`` means defaults plus environment; an existing folder is a weights dir;
        ``"org/name"`` or ``"org/name@revision"`` is a Hub repo for the e4e and SVM files. Either replaces
        ``GANORIGIN_WEIGHTS_DIR``: with a repo, the other files come from their own sources (or the cache).
        """
        if isinstance(source, WeightSources):
            return source
        if source is None:
            return cls.from_env()
        text = os.fspath(source)
        if Path(text).expanduser().is_dir():
            return cls.from_env(weights_dir=str(Path(text).expanduser()))
        repo_id, _, revision = text.partition("@")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")) or text.startswith((".", "/", "~")):
            raise WeightsNotFoundError(
                f"{text!r} is neither an existing folder nor a Hub repo id like 'org/name[@revision]'."
            )
        return replace(cls.from_env(repo_id=repo_id, revision=revision or None), weights_dir=None)

    def hub_location(self, source: str) -> tuple:
        """``(repo_id, revision)`` of a Hub source of the registry."""
        return {"attribution": (self.repo_id, self.revision), "clip": (self.clip_repo_id, self.clip_revision),
                "commfor": (self.commfor_repo_id, self.commfor_revision)}[source]


@dataclass(frozen=True)
class ResolvedWeights:
    """Local paths of the weight files by registry name, and where each came from."""

    paths: dict
    origins: dict = field(default_factory=dict)
    test_weights: bool = False  # random weights from `ganorigin demo-weights`

    def get(self, name: str) -> Optional[Path]:
        return self.paths.get(name)

    @property
    def clip(self) -> Path:
        return self.paths["clip.vit_large_patch14_openai"]

    @property
    def ufd_head(self) -> Path:
        return self.paths["ufd.fc"]

    @property
    def e4e(self) -> Path:
        return self.paths["e4e.ffhq_encode"]

    @property
    def commfor(self) -> Path:
        return self.paths["commfor.vit_small_patch16_384"]

    @property
    def svm(self) -> Optional[Path]:
        return self.paths.get("svm.gan_attribution")

    @property
    def scaler(self) -> Optional[Path]:
        return self.paths.get("svm.scaler")

    @property
    def label_encoder(self) -> Optional[Path]:
        return self.paths.get("svm.label_encoder")

    @property
    def safe_model(self) -> Optional[Path]:
        """``attribution_model.json`` of a trained model; when set, the three pickles are absent."""
        return self.paths.get("svm.trained")
