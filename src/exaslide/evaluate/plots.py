"""ROC and FROC figures as PNG (matplotlib's Agg canvas; pyplot and its global backend are
never touched)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from exaslide.atomic import atomic_path
from exaslide.evaluate.froc import FP_RATES


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
    ax.plot(fpr, tpr, color="#c0392b", lw=2, label=label, drawstyle="default")
    ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate",
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
    ax.plot(average_fps, sensitivities, color="#1f4e79", lw=2, label=label)
    for rate in fp_rates:
        ax.axvline(rate, color="#bbbbbb", lw=0.8, ls=":")
    right = max([*fp_rates, *average_fps]) * 1.05 if average_fps else 8.5
    ax.set(xlim=(0, right), ylim=(0, 1.01), xlabel="Average number of false positives per slide",
           ylabel="Metastasis detection sensitivity", title=title)
    if label:
        ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(figure, path)
