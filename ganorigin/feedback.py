"""Reports that a verdict is wrong: stored as JSON lines, exported as a labelled folder for ``ganorigin evaluate``.

Each report is one line of ``feedback.jsonl`` in the feedback folder: the image's sha256, what the person
says it really is (``real``, a GAN label, ``other generator`` or ``don't know``), their note, the verdict
and both detectors' scores, the threshold and the model's versions. The image itself is kept (under
``images/<sha256>.<ext>``) only when the person consents.

The folder is ``GANORIGIN_FEEDBACK_DIR``, else ``feedback/`` in GANOrigin's cache folder. On a Hugging
Face Space with ``GANORIGIN_FEEDBACK_REPO`` (a dataset repo) and a token (``HF_TOKEN``), the folder is
pushed there every ``GANORIGIN_FEEDBACK_EVERY`` minutes (default 5) by ``huggingface_hub``'s
``CommitScheduler``, the Spaces way to keep data across restarts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path
from typing import Optional

from .errors import DatasetError
from .images import image_extension
from .result import Prediction

logger = logging.getLogger(__name__)

FEEDBACK_FILE = "feedback.jsonl"
IMAGES_FOLDER = "images"
REAL, OTHER_GENERATOR, DONT_KNOW = "real", "other generator", "don't know"
OTHER_GENERATOR_FOLDER = "other-generator"  # any folder that is neither real/ nor a known GAN: an unknown generator
MAX_NOTE_CHARS = 2000


def feedback_folder() -> Path:
    """``GANORIGIN_FEEDBACK_DIR``, else ``feedback/`` in GANOrigin's cache folder."""
    from .hub.integrity import cache_root

    configured = os.environ.get("GANORIGIN_FEEDBACK_DIR")
    return Path(configured).expanduser() if configured else cache_root() / "ganorigin" / "feedback"


class FeedbackStore:
    """Appends reports to ``folder/feedback.jsonl`` (and consented images to ``folder/images/``).

    Args:
        folder: where reports go (created when needed).
        lock: held while writing; a ``CommitScheduler``'s own lock, so that no half-written file is pushed.
    """

    def __init__(self, folder: os.PathLike, lock: Optional[threading.Lock] = None):
        self.folder = Path(folder)
        self.lock = lock or threading.Lock()
        self.scheduler = None

    @classmethod
    def from_env(cls) -> "FeedbackStore":
        """The local folder; pushed to ``GANORIGIN_FEEDBACK_REPO`` when that and a token are configured."""
        folder = feedback_folder()
        repo, token = os.environ.get("GANORIGIN_FEEDBACK_REPO"), os.environ.get("HF_TOKEN")
        if not (repo and token):
            return cls(folder)
        from huggingface_hub import CommitScheduler

        folder.mkdir(parents=True, exist_ok=True)
        try:
            scheduler = CommitScheduler(repo_id=repo, repo_type="dataset", folder_path=folder, path_in_repo="feedback",
                                        every=float(os.environ.get("GANORIGIN_FEEDBACK_EVERY", 5)), token=token,
                                        private=True)
        except Exception as e:  # the Hub's errors vary (network, auth, repo); the reports still stay local
            logger.error("Feedback stays in the local folder: the dataset repo %s cannot be used (%s).", repo,
                         type(e).__name__)
            return cls(folder)
        store = cls(folder, scheduler.lock)
        store.scheduler = scheduler
        logger.info("Feedback is pushed to the dataset repo %s every %g minutes.", repo, scheduler.every)
        return store

    def add(self, image: bytes, prediction: Prediction, label: str, *, note: str = "", keep_image: bool = False,
            model: Optional[dict] = None) -> dict:
        """Store one report about ``prediction`` of ``image``; returns the record written.

        Raises:
            ValueError: ``label`` is not ``real``, one of the prediction's GAN labels, ``other generator``
                or ``don't know``.
        """
        allowed = (REAL, *prediction.labels, OTHER_GENERATOR, DONT_KNOW)
        if label not in allowed:
            raise ValueError(f"What the image really is must be one of {', '.join(allowed)}; got {label!r}.")
        digest = sha256(image).hexdigest()
        extended = prediction.to_dict(extended=True)
        record = {
            "id": uuid.uuid4().hex,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "image_sha256": digest,
            "image": f"{IMAGES_FOLDER}/{digest}.{image_extension(image)}" if keep_image else None,
            "label": label,
            "note": (note or "").strip()[:MAX_NOTE_CHARS],
            "verdict": extended["verdict"],
            "detectors": extended["detectors"],
            "attribution": prediction.attribution_probabilities,
            "threshold": prediction.threshold,
            "model": model or {},
        }
        with self.lock:
            if keep_image:
                (self.folder / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
                (self.folder / record["image"]).write_bytes(image)
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / FEEDBACK_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return record


def read_feedback(folder: os.PathLike) -> list[dict]:
    """Every report in ``folder/feedback.jsonl``, oldest first (a damaged line is skipped with a warning).

    Raises:
        DatasetError: the folder holds no ``feedback.jsonl``.
    """
    path = Path(folder) / FEEDBACK_FILE
    if not path.is_file():
        raise DatasetError(f"No {FEEDBACK_FILE} in {folder}; set GANORIGIN_FEEDBACK_DIR or pass --from FOLDER.")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s line %d is not JSON; skipped.", FEEDBACK_FILE, number)
            continue
        if not (isinstance(record, dict) and isinstance(record.get("image_sha256"), str)
                and isinstance(record.get("label"), str)):
            logger.warning("%s line %d is not a report (no image sha256 and label); skipped.", FEEDBACK_FILE, number)
            continue
        records.append(record)
    return records


def export_feedback(folder: os.PathLike, out: os.PathLike) -> dict:
    """Write the reported images into ``out/<class>/<sha256>.<ext>``: ``real/``, one folder per GAN
    label, ``other-generator/`` (an unknown generator for ``ganorigin evaluate``). An image reported more
    than once counts with its latest label; reports without a kept image or saying "don't know" are left out.

    Returns:
        ``{"exported": {class: count}, "without_image": n, "dont_know": n}``.
    """
    folder, out = Path(folder), Path(out)
    latest = {r["image_sha256"]: r for r in read_feedback(folder)}
    summary: dict = {"exported": {}, "without_image": 0, "dont_know": 0}
    for record in latest.values():
        # Only names, never paths, are taken from the file: a report cannot point outside these folders.
        source = folder / IMAGES_FOLDER / Path(record["image"]).name if record.get("image") else None
        label = OTHER_GENERATOR_FOLDER if record["label"] == OTHER_GENERATOR else Path(record["label"]).name
        if record["label"] == DONT_KNOW:
            summary["dont_know"] += 1
        elif source is None or not source.is_file() or label in ("", ".", ".."):
            summary["without_image"] += 1
        else:
            for stale in out.glob(f"*/{source.name}"):  # an earlier export's copy under a label since corrected
                stale.unlink()
            (out / label).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out / label / source.name)
            summary["exported"][label] = summary["exported"].get(label, 0) + 1
    return summary
