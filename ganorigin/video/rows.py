"""A clip as rows of ``ganorigin predict``: one summary row, or one row per sampled frame, with the
image rows' columns (so images and videos share one CSV)."""

from __future__ import annotations

import os
from typing import Optional

from ..models.attributor import display_name
from .result import VideoPrediction

NOT_JUDGED = " (no face found: left out of the clip's verdict)"


def video_rows(path: os.PathLike, result: VideoPrediction, labels: list, *, frames: bool = False) -> list[dict]:
    """The clip's summary row (its verdict, score and vote; its verdict text also says how many frames were
    sampled and how many had no face), or with ``frames`` one row per sampled frame, named
    ``<path>#t=<seconds>``; a frame the clip's verdict leaves out says so in its verdict text."""
    if frames:
        judged = {id(f) for f in result.judged_frames}
        return [_row(f"{path}#t={f.time:g}", f.prediction.fake_probability, f.prediction.is_fake,
                     f.prediction.attribution, f.prediction.unknown, dict(zip(f.prediction.labels, f.prediction.probabilities)),
                     f.prediction.commfor_probability, f.prediction.verdict,
                     f.prediction.verdict_text + ("" if id(f) in judged else NOT_JUDGED),
                     "; ".join(f.prediction.unsure_reasons), None) for f in result.frames]
    votes = result.attribution_probabilities
    by_label = {label: votes.get(display_name(label), 0.0) for label in labels}
    return [_row(str(path), result.fake_probability, result.is_fake, result.attribution, result.unknown, by_label,
                 result.commfor_probability, result.verdict, f"{result.verdict_text}; {result.sampling_note}",
                 "; ".join(result.unsure_reasons), None)]


def failed_video_row(path: os.PathLike, labels: list, error: str) -> dict:
    return _row(str(path), None, None, None, None, dict.fromkeys(labels), None, None, None, None, error)


def _row(path: str, fake_probability, is_fake, attribution, unknown, by_label: dict, commfor, verdict, verdict_text,
         unsure_reasons, error: Optional[str]) -> dict:
    return {"path": path, "fake_probability": fake_probability, "is_fake": is_fake, "attribution": attribution,
            "unknown": unknown, **{f"p_{label}": p for label, p in by_label.items()}, "provenance_strength": None,
            "provenance": None, "commfor_probability": commfor, "verdict": verdict, "verdict_text": verdict_text,
            "unsure_reasons": unsure_reasons, "error": error}
