"""Patch-level and slide-level (CAMELYON16 task 1) classification metrics.

Labels are binary: 1 tumour, 0 normal (strings such as ``tumour`` / ``normal`` are read by
:func:`binary_label`). Scores are tumour probabilities (any real number works for AUC).
A ROC AUC needs both classes: with one class it is ``None``, not an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from exaslide.errors import EvaluationError
from exaslide.evaluate.heatmap import Heatmap

POSITIVE_LABELS = frozenset({"1", "true", "yes", "tumour", "tumor", "positive", "metastasis",
                             "metastases", "macro", "micro", "itc", "carcinoma"})
NEGATIVE_LABELS = frozenset({"0", "false", "no", "normal", "negative", "background"})
SLIDE_SCORE_METHODS = ("max", "p99")


def binary_label(value: Any) -> int | None:
    """1 for a tumour label, 0 for a normal one, None when the value is neither.

    Tumour: 1, true, tumour/tumor, positive, metastasis/metastases, macro, micro, itc,
    carcinoma. Normal: 0, false, normal, negative, background. Case-insensitive.
    """
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer) and value in (0, 1):
        return int(value)
    if isinstance(value, float | np.floating) and value in (0.0, 1.0):
        return int(value)
    text = str(value).strip().lower()
    if text in POSITIVE_LABELS:
        return 1
    if text in NEGATIVE_LABELS:
        return 0
    return None


def _binary_labels(labels: Sequence[Any], what: str) -> np.ndarray:
    parsed = [binary_label(v) for v in labels]
    bad = [labels[i] for i, v in enumerate(parsed) if v is None]
    if bad:
        raise EvaluationError(f"{what}: {len(bad)} label(s) are neither tumour nor normal, e.g. "
                              f"{bad[0]!r}; use 1/0 or tumour/normal")
    return np.asarray(parsed, dtype=np.int64)


def _scores(scores: Sequence[float], n: int, what: str) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(array) != n:
        raise EvaluationError(f"{what}: {n} labels but {len(array)} scores")
    if n == 0:
        raise EvaluationError(f"{what}: nothing to evaluate (no labels)")
    if not np.isfinite(array).all():
        raise EvaluationError(f"{what}: {int((~np.isfinite(array)).sum())} score(s) are NaN "
                              "or infinite")
    return array


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, s))


def patch_metrics(labels: Sequence[Any], scores: Sequence[float],
                  threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, ROC AUC, F1, sensitivity, specificity and the confusion matrix of patches.

    A patch is predicted tumour when its score is ``>= threshold``.

    Returns:
        ``{"n", "positives", "negatives", "threshold", "accuracy", "roc_auc" (None with one
        class), "f1", "precision", "sensitivity", "specificity" (None when undefined),
        "confusion_matrix": [[tn, fp], [fn, tp]], "tn", "fp", "fn", "tp"}``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    y = _binary_labels(list(labels), "patch metrics")
    s = _scores(scores, len(y), "patch metrics")
    predicted = (s >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    return {
        "n": len(y), "positives": int(y.sum()), "negatives": int(len(y) - y.sum()),
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y, predicted)),
        "roc_auc": _auc(y, s),
        "f1": float(f1_score(y, predicted, labels=[0, 1], zero_division=0.0)),
        "precision": tp / (tp + fp) if tp + fp else None,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "tn": tn, "fp": fp, "fn": fn, "tp": tp,
    }


def slide_score(heatmap: Heatmap | np.ndarray, method: str = "max") -> float:
    """One tumour score per slide from its heatmap (NaN cells ignored).

    Args:
        heatmap: a :class:`Heatmap` or a probability array.
        method: ``"max"`` (highest cell) or ``"p99"`` (99th percentile of the computed cells,
            linear interpolation: robust to a few outlier cells).

    Returns:
        The score; 0.0 when no cell was computed (no tissue).
    """
    if method not in SLIDE_SCORE_METHODS:
        raise EvaluationError(f"unknown slide score method {method!r}; use one of "
                              f"{', '.join(SLIDE_SCORE_METHODS)}")
    probs = heatmap.probabilities if isinstance(heatmap, Heatmap) else heatmap
    values = np.asarray(probs, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return 0.0
    if method == "max":
        return float(values.max())
    return float(np.percentile(values, 99))


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


def slide_metrics(labels: Sequence[Any], scores: Sequence[float]) -> dict[str, Any]:
    """Slide-level ROC (CAMELYON16 task 1): AUC and the curve.

    Returns:
        ``{"n", "positives", "negatives", "roc_auc", "roc": {"fpr", "tpr", "thresholds"}}``;
        ``roc_auc`` and ``roc`` are None when only one class is present. The first ROC
        threshold (above every score, ``inf`` in scikit-learn) is written as None.
    """
    from sklearn.metrics import roc_curve

    y = _binary_labels(list(labels), "slide metrics")
    s = _scores(scores, len(y), "slide metrics")
    result: dict[str, Any] = {"n": len(y), "positives": int(y.sum()),
                              "negatives": int(len(y) - y.sum()), "roc_auc": _auc(y, s),
                              "roc": None}
    if result["roc_auc"] is not None:
        fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
        result["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                         "thresholds": _finite_or_none(thresholds)}
    return result
