"""ROC and FROC figures as PNG (matplotlib's Agg canvas; pyplot and its global backend are
never touched).

The axes extend a little past the data's range (:data:`PAD`) and the points are marked, so
a curve lying on the edge (a perfect detector: sensitivity 1.0 everywhere) or made of one
point stays visible instead of merging with the frame."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from exaslide.atomic import atomic_path
from exaslide.evaluate.froc import FP_RATES

PAD = 0.03  #: margin around the data range, as a fraction of the axis range


def _markers(n: int) -> dict:
    """Round markers on at most ~30 of a curve's ``n`` points (all of a short curve)."""
    return {"marker": "o", "ms": 3, "markevery": max(1, n // 30)}


def _padded(low: float, high: float) -> tuple[float, float]:
    margin = (high - low) * PAD
    return low - margin, high + margin


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _save(figure, path: str | os.PathLike) -> Path:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)


def plot_roc(fpr: Sequence[float], tpr: Sequence[float], path: str | os.PathLike, *,
             auc: float | None = None, title: str = "ROC curve") -> Path:
    """Write a ROC curve (false-positive rate vs true-positive rate) to ``path`` (PNG)."""
    figure, ax = _figure()
    label = f"AUC = {auc:.4f}" if auc is not None else None
    ax.plot(fpr, tpr, color="#c0392b", lw=2, label=label, zorder=3, clip_on=False,
            **_markers(len(fpr)))
    ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--")
    ax.set(xlim=_padded(0, 1), ylim=_padded(0, 1), xlabel="False positive rate",
           ylabel="True positive rate", title=title)
    if label:
        ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(figure, path)


def plot_froc(average_fps: Sequence[float], sensitivities: Sequence[float],
              path: str | os.PathLike, *, score: float | None = None,
              fp_rates: Sequence[float] = FP_RATES,
              title: str = "Free-response ROC (lesion level)") -> Path:
    """Write an FROC curve (average false positives per slide vs lesion sensitivity) to
    ``path`` (PNG), with the FP rates of the score marked."""
    figure, ax = _figure()
    label = f"FROC score = {score:.4f}" if score is not None else None
    ax.plot(average_fps, sensitivities, color="#1f4e79", lw=2, label=label, zorder=3,
            clip_on=False, **_markers(len(average_fps)))
    for rate in fp_rates:
        ax.axvline(rate, color="#bbbbbb", lw=0.8, ls=":")
    right = max([*fp_rates, *average_fps]) if len(average_fps) else 8.0
    ax.set(xlim=_padded(0, right), ylim=_padded(0, 1),
           xlabel="Average number of false positives per slide",
           ylabel="Metastasis detection sensitivity", title=title)
    if label:
        ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(figure, path)
