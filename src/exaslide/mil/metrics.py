"""Slide-level metrics of MIL predictions, and the predictions CSV."""

from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def slide_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Metrics of slide predictions.

    Args:
        labels: true class indices (``n``).
        probs: class probabilities (``n x C``).
        classes: the class names (the first is the negative class).

    Returns:
        ``n``, ``slide_auc`` (tumour vs the first class: ``1 - p(first class)``; NaN when
        one of the two is absent), ``auc_ovr`` (one-vs-rest macro AUC, more than 2
        classes, NaN unless every class is present), ``accuracy``, ``balanced_accuracy``,
        ``macro_f1`` (over all classes) and ``confusion_matrix`` (rows: true, columns:
        predicted, in class order).
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        roc_auc_score,
    )

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(labels), len(classes))
    out: dict[str, Any] = {"n": len(labels)}
    if not len(labels):
        return {**out, "slide_auc": float("nan"), "accuracy": float("nan"),
                "balanced_accuracy": float("nan"), "macro_f1": float("nan"),
                "confusion_matrix": np.zeros((len(classes),) * 2, int).tolist()}
    predicted = probs.argmax(axis=1)
    tumour = labels != 0
    out["slide_auc"] = float(roc_auc_score(tumour, 1.0 - probs[:, 0])) \
        if 0 < tumour.sum() < len(tumour) else float("nan")
    if len(classes) > 2:
        present = len(np.unique(labels)) == len(classes)
        out["auc_ovr"] = float(roc_auc_score(labels, probs, multi_class="ovr",
                                             labels=list(range(len(classes))))) \
            if present else float("nan")
    with warnings.catch_warnings():  # classes absent from y_true
        warnings.simplefilter("ignore")
        out.update(
            accuracy=float(accuracy_score(labels, predicted)),
            balanced_accuracy=float(balanced_accuracy_score(labels, predicted)),
            macro_f1=float(f1_score(labels, predicted, average="macro",
                                    labels=list(range(len(classes))), zero_division=0)))
    out["confusion_matrix"] = confusion_matrix(labels, predicted,
                                               labels=list(range(len(classes)))).tolist()
    return out


def prob_columns(classes: list[str]) -> list[str]:
    """``p_<class>`` for every class."""
    return [f"p_{c}" for c in classes]


def write_predictions(path: str | os.PathLike, rows: list[dict[str, Any]],
                      classes: list[str]) -> Path:
    """Write ``predictions.csv`` atomically: ``slide_id``, ``p_<class>`` per class,
    ``predicted``, then ``label``, ``split`` and ``fold`` when the rows have them."""
    from exaslide.atomic import write_text

    extra = [c for c in ("label", "split", "fold") if any(c in r for r in rows)]
    columns = ["slide_id", *prob_columns(classes), "predicted", *extra]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = dict(row)
        for name, p in zip(prob_columns(classes), row["probs"], strict=True):
            values[name] = f"{float(p):.6g}"
        values["predicted"] = classes[int(np.argmax(row["probs"]))]
        writer.writerow(values)
    return write_text(path, buffer.getvalue())
