"""Prediction over files (the ``predict`` command) and evaluation on labelled folders."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from sklearn import metrics
from tqdm import tqdm

from ..errors import InvalidImageError
from ..models.attributor import display_name
from ..pipeline import GANOrigin
from ..result import UNKNOWN_GAN
from .data import REAL_CLASS, labelled_images
from .reports import _roc_png, save_confusion_png


def predict_paths(
    model: GANOrigin,
    paths: Sequence[os.PathLike],
    *,
    batch_size: int = 8,
    threshold: Optional[float] = None,
    progress: bool = True,
    on_row: Optional[Callable[[dict], None]] = None,
) -> list[dict]:
    """One row per path: the model's prediction, or ``error`` when the file could not be read
    (a bad file costs only its own row: :meth:`GANOrigin.predict_batch`)."""
    rows: list[dict] = []
    labels = list(model.attributor.labels)
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        for path, result in zip(chunk, model.predict_batch(chunk, threshold=threshold, batch_size=batch_size)):
            failed = isinstance(result, InvalidImageError)
            row = _row(path, None if failed else result, labels, str(result) if failed else None)
            rows.append(row)
            if on_row is not None:
                on_row(row)
        bar.update(len(chunk))
    bar.close()
    return rows


def _row(path, prediction, labels: list, error: Optional[str]) -> dict:
    row = {"path": str(path), "fake_probability": None, "is_fake": None, "attribution": None, "unknown": None}
    row.update({f"p_{label}": None for label in labels})
    row.update(provenance_strength=None, provenance=None)
    if prediction is not None:
        row.update(
            fake_probability=prediction.fake_probability,
            is_fake=prediction.is_fake,
            attribution=prediction.attribution,
            unknown=prediction.unknown,
        )
        row.update({f"p_{label}": p for label, p in zip(prediction.labels, prediction.probabilities)})
        if prediction.provenance is not None:
            row.update(provenance_strength=prediction.provenance.strength, provenance=prediction.provenance.summary)
    row.update(_verdict_columns(prediction))
    row["error"] = error
    return row


def _verdict_columns(prediction) -> dict:
    """The second detector and the overall verdict (:mod:`ganorigin.verdict`), empty without a prediction."""
    if prediction is None:
        return dict.fromkeys(("commfor_probability", "verdict", "verdict_text", "unsure_reasons"))
    return {"commfor_probability": prediction.commfor_probability, "verdict": prediction.verdict,
            "verdict_text": prediction.verdict_text, "unsure_reasons": "; ".join(prediction.unsure_reasons)}


def evaluate(
    model: GANOrigin, data_dir: os.PathLike, out_dir: os.PathLike, *, batch_size: int = 8, progress: bool = True
) -> dict:
    """Detection and attribution metrics on ``data_dir/<class>/``; writes the report, CSV and PNGs.

    ``real/`` holds real images, folders named like one of the model's labels are known GANs, and
    any other folder is an unknown generator (used for the open-set rejection rate).

    Returns:
        The report (also written to ``out_dir/report.json``).
    """
    items = labelled_images(data_dir)
    rows = predict_paths(model, [p for _, p in items], batch_size=batch_size, progress=progress)
    return evaluation_report(items, rows, model.attributor, model.threshold, data_dir, out_dir)


def evaluation_report(items: list, rows: list, attributor, threshold: float, data_dir: os.PathLike,
                      out_dir: os.PathLike) -> dict:
    """The report, CSV and PNGs of :func:`evaluate` from prediction ``rows`` (one per ``(class, path)``
    item of :func:`labelled_images`, in the same order), however they were computed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    known = {display_name(label): label for label in attributor.labels}
    for (cls, _), row in zip(items, rows):
        row["class"] = cls
        row["true_label"] = known.get(display_name(cls))
        row["y_fake"] = int(cls.lower() != REAL_CLASS)
    _write_rows(rows, out_dir / "predictions.csv", "csv")
    ok = [row for row in rows if row["error"] is None]
    report = {
        "data_dir": str(data_dir),
        "threshold": threshold,
        "images": len(rows),
        "failed": [{"path": row["path"], "error": row["error"]} for row in rows if row["error"] is not None],
        "per_class": {cls: sum(row["class"] == cls for row in ok) for cls in sorted({row["class"] for row in rows})},
        "detection": _detection_metrics(ok, threshold, out_dir / "roc.png"),
        "attribution": _attribution_metrics(ok, attributor, out_dir / "attribution_confusion.png"),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _detection_metrics(rows: list, threshold: float, roc_png: Path) -> dict:
    y = np.array([row["y_fake"] for row in rows])
    p = np.array([row["fake_probability"] for row in rows], dtype=np.float64)
    result: dict = {"n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum())}
    result["accuracy_at_threshold"] = float(np.mean((p >= threshold) == y)) if len(y) else None
    if len(set(y.tolist())) < 2:
        result["note"] = "AP, ROC AUC and the best threshold need both real and fake images."
        return result
    fpr, tpr, roc_thresholds = metrics.roc_curve(y, p)
    candidates = np.unique(p)
    accuracies = np.array([np.mean((p >= t) == y) for t in candidates])
    youden = int(np.argmax(tpr - fpr))
    result.update(
        average_precision=float(metrics.average_precision_score(y, p)),
        roc_auc=float(metrics.roc_auc_score(y, p)),
        best_threshold=float(candidates[accuracies.argmax()]),
        best_threshold_rule="maximum accuracy; predict fake when fake_probability >= best_threshold",
        accuracy_at_best_threshold=float(accuracies.max()),
        youden_threshold=float(min(roc_thresholds[youden], 1.0)),
        youden_j=float(tpr[youden] - fpr[youden]),
    )
    _roc_png(fpr, tpr, result["roc_auc"], roc_png)
    result["roc_png"] = str(roc_png)
    return result


def _attribution_metrics(rows: list, attributor, confusion_png: Path) -> dict:
    labels = list(attributor.labels)
    has_rule = attributor.unknown_threshold is not None
    known = [row for row in rows if row["y_fake"] and row["true_label"] is not None]
    unknown = [row for row in rows if row["y_fake"] and row["true_label"] is None]
    result: dict = {"labels": labels, "n_known_fake": len(known), "n_unknown_fake": len(unknown),
                    "open_set_rule": has_rule}
    if known:
        y_true = [labels.index(row["true_label"]) for row in known]
        y_pred = [int(np.argmax([row[f"p_{label}"] for label in labels])) for row in known]
        result["classification_report"] = metrics.classification_report(
            y_true, y_pred, labels=range(len(labels)), target_names=labels, digits=4, zero_division=0
        )
        result["accuracy"] = float(metrics.accuracy_score(y_true, y_pred))
        accepted = [not row["unknown"] for row in known]
        result["known_acceptance_rate"] = float(np.mean(accepted))
        result["known_accuracy_open_set"] = float(np.mean([a and t == p for a, t, p in zip(accepted, y_true, y_pred)]))
        columns = labels + ([UNKNOWN_GAN] if has_rule else [])
        confusion = np.zeros((len(labels), len(columns)), dtype=int)
        for t, p, a in zip(y_true, y_pred, accepted):
            confusion[t, p if a or not has_rule else len(labels)] += 1
        result["confusion"] = confusion.tolist()
        result["confusion_columns"] = columns
        save_confusion_png(confusion, columns, confusion_png, "Attribution (fake images of known GANs)", labels)
        result["confusion_png"] = str(confusion_png)
    if unknown:
        result["unknown_rejection_rate"] = float(np.mean([row["unknown"] for row in unknown]))
    return result


def _write_rows(rows: list, path: os.PathLike, fmt: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        write_rows(rows, f, fmt)


def write_rows(rows: list, stream, fmt: str) -> None:
    """Rows as JSON lines or CSV (columns from the first row)."""
    writer = RowWriter(stream, fmt)
    for row in rows:
        writer.write(row)


class RowWriter:
    """Rows written to ``stream`` as they come, flushed each time: JSON lines (``"jsonl"``), or CSV
    (``"csv"``) whose header, from the first row's keys, is written once; ``fieldnames``: the columns
    of a CSV file being appended to, whose header is already written."""

    def __init__(self, stream, fmt: str, fieldnames: Optional[list] = None):
        self.stream, self.fmt = stream, fmt
        self._csv: Optional[csv.DictWriter] = (
            None if fieldnames is None else csv.DictWriter(stream, fieldnames=fieldnames, lineterminator="\n"))

    def write(self, row: dict) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            if self._csv is None:
                self._csv = csv.DictWriter(self.stream, fieldnames=list(row), lineterminator="\n")
                self._csv.writeheader()
            self._csv.writerow({k: "" if v is None else v for k, v in row.items()})
        self.stream.flush()
