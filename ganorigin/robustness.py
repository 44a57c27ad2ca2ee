"""Robustness report: how each detector's score and the verdict move when images are re-compressed,
resized or re-encoded, as in the field (``ganorigin robustness DIR``).

Each image is degraded in memory, encoded as a real file (JPEG, or PNG for the lossless ones) and
analysed through the normal entry point: bytes -> the decoding gate -> both detectors -> the
degradation gate and verdict. The degradations include the "clean / web (longer side <= 768 px,
JPEG 60) / hard (<= 512 px, JPEG 40)" protocol of recent detector studies. With random test
weights the numbers mean nothing; the report is ready for the real ones.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from tqdm import tqdm

from .errors import InvalidImageError
from .images import load_image
from .verdict import AI_GENERATED, REAL, UNSURE


@dataclass(frozen=True)
class Distortion:
    """Resize (``scale``, or shrink to ``max_side`` on the longer side, never enlarging), then encode
    as JPEG at ``jpeg_quality``, or as PNG when it is None."""

    scale: Optional[float] = None
    max_side: Optional[int] = None
    jpeg_quality: Optional[int] = None

    def apply(self, image: Image.Image) -> bytes:
        factor = self.scale or min(1.0, (self.max_side or max(image.size)) / max(image.size))
        if factor != 1.0:
            image = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                                 Image.BICUBIC)
        out = io.BytesIO()
        if self.jpeg_quality is None:
            image.save(out, "PNG")
        else:
            image.save(out, "JPEG", quality=self.jpeg_quality)
        return out.getvalue()


CLEAN = "clean"  # the file as it is
DISTORTIONS = {
    "jpeg90": Distortion(jpeg_quality=90),
    "jpeg75": Distortion(jpeg_quality=75),
    "jpeg60": Distortion(jpeg_quality=60),
    "jpeg40": Distortion(jpeg_quality=40),
    "scale0.75": Distortion(scale=0.75),
    "scale0.5": Distortion(scale=0.5),
    "max768": Distortion(max_side=768),
    "max512": Distortion(max_side=512),
    "png": Distortion(),  # a screenshot-like round trip: the pixels as decoded, the container gone
    "web": Distortion(max_side=768, jpeg_quality=60),
    "hard": Distortion(max_side=512, jpeg_quality=40),
}
VERDICTS = (AI_GENERATED, UNSURE, REAL)


def robustness_rows(model, paths: Sequence[os.PathLike], *, progress: bool = True) -> list[dict]:
    """One row per image and degradation (``clean`` first): both detectors' scores and states, the
    verdict, what the degradation gate measured; a file that cannot be read gets one row with its error."""
    rows = []
    for path in tqdm(list(paths), desc="robustness", unit="img", disable=not progress):
        try:
            image = load_image(path)
        except InvalidImageError as e:
            rows.append(_row(path, CLEAN, None, f"{path}: {e}"))
            continue
        variants = {CLEAN: Path(path).read_bytes(), **{name: d.apply(image) for name, d in DISTORTIONS.items()}}
        results = model.predict_batch(list(variants.values()), batch_size=len(variants))
        rows += [_row(path, name, result if not isinstance(result, InvalidImageError) else None,
                      str(result) if isinstance(result, InvalidImageError) else None)
                 for name, result in zip(variants, results)]
    return rows


def _row(path, degradation: str, prediction, error: Optional[str]) -> dict:
    row = {"path": str(path), "degradation": degradation}
    states = prediction.detector_states if prediction is not None else {}
    scores = prediction.detector_scores if prediction is not None else {}
    for key in ("ufd", "commfor"):
        row[f"{key}_probability"] = scores[key][0] if key in scores else None
        row[f"{key}_state"] = states.get(key)
    measured = prediction.degradation if prediction is not None else None
    row.update(
        verdict=prediction.verdict if prediction is not None else None,
        verdict_text=prediction.verdict_text if prediction is not None else None,
        unsure_reasons="; ".join(prediction.unsure_reasons) if prediction is not None else None,
        jpeg_quality=measured.jpeg_quality if measured is not None else None,
        upscale=measured.upscale if measured is not None else None,
        short_side=measured.short_side if measured is not None else None,
        error=error,
    )
    return row


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Per degradation: images, each detector's mean score, the share of each verdict, and the share
    of images whose verdict differs from their clean one."""
    clean = {row["path"]: row["verdict"] for row in rows if row["degradation"] == CLEAN and not row["error"]}
    summary = []
    for name in (CLEAN, *DISTORTIONS):
        ok = [row for row in rows if row["degradation"] == name and not row["error"]]
        if not ok:
            continue
        entry = {"degradation": name, "images": len(ok)}
        for key in ("ufd", "commfor"):
            scores = [row[f"{key}_probability"] for row in ok if row[f"{key}_probability"] is not None]
            entry[f"mean_{key}_probability"] = float(np.mean(scores)) if scores else None
        for verdict in VERDICTS:
            entry[f"share_{verdict.lower().replace('-', '_')}"] = sum(row["verdict"] == verdict for row in ok) / len(ok)
        entry["share_verdict_changed"] = sum(row["verdict"] != clean.get(row["path"]) for row in ok) / len(ok)
        summary.append(entry)
    return summary


def save_robustness_png(rows: Sequence[dict], summary: Sequence[dict], path: os.PathLike,
                        thresholds: dict) -> Path:
    """Top: each detector's scores per degradation (points: images; line: mean; dashed: threshold).
    Bottom: the share of each verdict per degradation."""
    names = [entry["degradation"] for entry in summary]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(7.0, 0.75 * len(names) + 2), 7.5))
    scores_ax, verdict_ax = fig.subplots(2, 1, sharex=True)
    for offset, (key, label, colour) in zip((-0.12, 0.12), (("ufd", "UFD (GAN detector)", "tab:blue"),
                                                              ("commfor", "Community Forensics", "tab:orange"))):
        means = [entry[f"mean_{key}_probability"] for entry in summary]
        if all(mean is None for mean in means):
            continue
        for i, name in enumerate(names):
            points = [row[f"{key}_probability"] for row in rows
                      if row["degradation"] == name and row[f"{key}_probability"] is not None]
            scores_ax.scatter(np.full(len(points), i + offset), points, s=10, alpha=0.4, color=colour)
        scores_ax.plot(x + offset, [np.nan if m is None else m for m in means], marker="o", color=colour, label=label)
        scores_ax.axhline(thresholds[key], color=colour, linestyle="--", linewidth=0.8)
    scores_ax.set_ylim(-0.02, 1.02)
    scores_ax.set_ylabel("P(generated)")
    scores_ax.set_title("Scores per degradation (dashed: thresholds)", loc="left")
    scores_ax.legend(loc="best", fontsize="small")
    bottom = np.zeros(len(names))
    for verdict, colour in zip(VERDICTS, ("tab:red", "tab:gray", "tab:green")):
        shares = np.array([entry[f"share_{verdict.lower().replace('-', '_')}"] for entry in summary])
        verdict_ax.bar(x, shares, bottom=bottom, color=colour, label=verdict)
        bottom += shares
    verdict_ax.set_ylabel("share of images")
    verdict_ax.set_title("Verdicts per degradation", loc="left")
    verdict_ax.set_xticks(x, names, rotation=30, ha="right")
    # above the bars, beside the title: inside, it would cover a bar that reaches the top
    verdict_ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(VERDICTS), fontsize="small", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def format_summary(summary: Sequence[dict]) -> str:
    """The summary as a text table for the terminal."""
    lines = [f"{'degradation':12s} {'images':>6s} {'UFD':>6s} {'CommFor':>7s} {'AI-gen':>6s} {'unsure':>6s} "
             f"{'real':>6s} {'changed':>7s}"]
    for e in summary:
        def mean(key):
            return f"{e[f'mean_{key}_probability']:6.3f}" if e[f"mean_{key}_probability"] is not None else f"{'-':>6s}"
        lines.append(f"{e['degradation']:12s} {e['images']:6d} {mean('ufd')} {mean('commfor'):>7s} "
                     f"{e['share_ai_generated']:6.0%} {e['share_unsure']:6.0%} {e['share_real']:6.0%} "
                     f"{e['share_verdict_changed']:7.0%}")
    return "\n".join(lines)
