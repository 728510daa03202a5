"""ROC and FROC figures: a curve lying on the axes' edge (a perfect detector) stays
visible, checked on the rendered pixels."""

from __future__ import annotations

import numpy as np
from PIL import Image

from exaslide.evaluate.plots import plot_froc, plot_roc


def _frame(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` pixel rows / columns of the black axes frame."""
    dark = rgb.max(axis=2) < 60
    rows = np.flatnonzero(dark.mean(axis=1) > 0.5)
    cols = np.flatnonzero(dark.mean(axis=0) > 0.5)
    assert rows.size >= 2 and cols.size >= 2, "no axes frame found"
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def _curve_coverage_off_the_frame(path, colour: str, margin: int = 8) -> float:
    """Fraction of the axes' pixel columns holding a pixel of the curve's colour at least
    ``margin`` pixels away from every frame line (a line drawn on, or hugging, the frame
    does not count)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    top, bottom, left, right = _frame(rgb)
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    near = np.abs(rgb - target).max(axis=2) < 40
    inside = near[top + margin: bottom - margin + 1, left + margin: right - margin + 1]
    return float(inside.any(axis=0).mean())


def test_froc_of_a_perfect_detector_is_visible(tmp_path):
    """Every detection a true positive: sensitivity 1.0 at every FP rate, the curve at
    the very top (it used to sit on the top spine)."""
    path = plot_froc([0.0, 0.25, 0.5, 1, 2, 4, 8], [1.0] * 7, tmp_path / "froc.png")
    assert _curve_coverage_off_the_frame(path, "#1f4e79") > 0.8


def test_froc_of_a_detector_that_finds_nothing_is_visible(tmp_path):
    path = plot_froc([0.0, 8.0], [0.0, 0.0], tmp_path / "froc.png")
    assert _curve_coverage_off_the_frame(path, "#1f4e79") > 0.8


def test_roc_of_a_perfect_classifier_is_visible(tmp_path):
    """The curve runs up the left edge and along the top edge."""
    path = plot_roc([0.0, 0.0, 1.0], [0.0, 1.0, 1.0], tmp_path / "roc.png")
    assert _curve_coverage_off_the_frame(path, "#c0392b") > 0.8


def test_a_curve_of_one_point_shows_a_marker(tmp_path):
    path = plot_froc([1.0], [0.5], tmp_path / "froc.png")
    assert _curve_coverage_off_the_frame(path, "#1f4e79") > 0.005
