"""Pictures for the terminal's reports: the confusion matrix and the ROC curve, as PNG files
(drawn on a matplotlib ``Figure``, no global backend switch)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

TITLE_CHARS_PER_INCH = 8  # characters of matplotlib's 12 pt title per inch of figure, with a margin


def save_confusion_png(confusion: np.ndarray, names: Sequence[str], path: os.PathLike, title: str,
                       row_names: Optional[Sequence[str]] = None) -> Path:
    """A confusion matrix (rows: truth, columns: prediction) as a PNG."""
    confusion_figure(confusion, names, title, row_names).savefig(path, dpi=100)
    return Path(path)


def confusion_figure(confusion: np.ndarray, names: Sequence[str], title: str,
                     row_names: Optional[Sequence[str]] = None) -> Figure:
    """The figure of :func:`save_confusion_png`; a title wider than the figure is wrapped onto more lines."""
    row_names = list(row_names or names)
    width = 1.6 + 1.1 * len(names)
    title = textwrap.fill(title, width=max(16, int(width * TITLE_CHARS_PER_INCH)), break_on_hyphens=False)
    fig = Figure(figsize=(width, 1.4 + 0.9 * len(row_names) + 0.2 * title.count("\n")))
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(row_names)), row_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = confusion.max() if confusion.size else 0
    for (i, j), value in np.ndenumerate(confusion):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    return fig


def _roc_png(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: Path) -> None:
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.plot(fpr, tpr, label=f"UFD (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fake called fake)")
    ax.set_title("Detection ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def format_report(report: dict) -> str:
    """The evaluation report as text for the terminal."""
    det, att = report["detection"], report["attribution"]
    per_class = ", ".join(f"{cls} {n}" for cls, n in report["per_class"].items())
    lines = [f"Images: {report['images']} ({len(report['failed'])} could not be read); analysed per class: {per_class}",
             f"Detection ({det['n_real']} real, {det['n_fake']} fake):",
             f"  accuracy at threshold {report['threshold']:.2f}: {det['accuracy_at_threshold']:.4f}"]
    if "roc_auc" in det:
        youden = (f"Youden J threshold {det['youden_threshold']:.4f} (J = {det['youden_j']:.4f})" if det["youden_j"] > 0
                  else "no Youden J threshold (J = 0: no threshold does better than chance)")
        lines += [f"  average precision: {det['average_precision']:.4f}   ROC AUC: {det['roc_auc']:.4f}",
                  f"  best threshold (max accuracy): {det['best_threshold']:.4f} -> accuracy "
                  f"{det['accuracy_at_best_threshold']:.4f}; {youden}"]
    else:
        lines.append(f"  {det['note']}")
    known = att["n_known_fake"]
    lines.append(f"Attribution ({known} fake{'s' if known != 1 else ''} of known GANs, {att['n_unknown_fake']} of "
                 "unknown ones):")
    if "classification_report" in att:
        lines += ["  " + line for line in att["classification_report"].splitlines()]
        lines.append(f"  closed-set accuracy: {att['accuracy']:.4f}")
    if att["open_set_rule"]:
        if "known_accuracy_open_set" in att:
            lines.append(f"  known-class accuracy with rejection: {att['known_accuracy_open_set']:.4f} "
                         f"(accepted {att['known_acceptance_rate']:.4f})")
        if "unknown_rejection_rate" in att:
            lines.append(f"  unknown-generator rejection rate: {att['unknown_rejection_rate']:.4f}")
    else:
        lines.append("  open-set rule: none (the original pickles never answer 'Unknown GAN')")
    return "\n".join(lines)
