"""Pictures for the terminal's reports: the confusion matrix and the ROC curve, as PNG files
(drawn on a matplotlib ``Figure``, no global backend switch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure


def save_confusion_png(confusion: np.ndarray, names: Sequence[str], path: os.PathLike, title: str,
                       row_names: Optional[Sequence[str]] = None) -> Path:
    """A confusion matrix (rows: truth, columns: prediction) as a PNG."""
    row_names = list(row_names or names)
    fig = Figure(figsize=(1.6 + 1.1 * len(names), 1.4 + 0.9 * len(row_names)))
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
    fig.savefig(path, dpi=100)
    return Path(path)


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
