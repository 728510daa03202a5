"""Local maxima of heatmaps as lesion detections."""

from __future__ import annotations

import numpy as np
import pytest

from exaslide.errors import EvaluationError
from exaslide.evaluate import Heatmap, detections_from_heatmap

CELL, MPP = 100.0, 0.5  # one cell = 50 um


def _heatmap(probs, origin=(0, 0), mpp=(MPP, MPP)) -> Heatmap:
    meta = {"slide_id": "s", "level0_size": [10_000, 10_000], "mpp": mpp,
            "origin": list(origin), "cell": CELL}
    return Heatmap(np.asarray(probs, np.float32), meta)


def test_separated_maxima_found_neighbours_suppressed():
    probs = np.full((30, 30), 0.1, np.float32)
    probs[5, 5], probs[5, 6], probs[6, 5] = 0.9, 0.8, 0.7  # a peak and its shoulders
    probs[20, 22] = 0.75  # a separate peak, 15+ cells = 750+ um away
    probs[8, 5] = 0.6  # 3 cells = 150 um from the first peak: suppressed at 200 um
    det = detections_from_heatmap(_heatmap(probs, origin=(1000, 2000)), threshold=0.5)
    np.testing.assert_allclose(det[:, :2], [[1000 + 550, 2000 + 550], [1000 + 2250, 2000 + 2050]])
    np.testing.assert_allclose(det[:, 2], [0.9, 0.75], rtol=1e-6)
    near = detections_from_heatmap(_heatmap(probs), threshold=0.5, min_distance_um=100)
    assert sorted(np.round(near[:, 2], 2).tolist()) == [0.6, 0.75, 0.9]
    every = detections_from_heatmap(_heatmap(probs), threshold=0.5, min_distance_um=0)
    assert len(every) == 5 and np.all(np.diff(every[:, 2]) <= 0)


def test_plateaus_nan_and_threshold():
    probs = np.full((20, 20), np.nan, np.float32)
    probs[2:12, 2:4] = 1.0  # a 10 x 2 plateau, 500 um long
    det = detections_from_heatmap(_heatmap(probs), threshold=0.5, min_distance_um=200)
    rows = (det[:, 1] / CELL - 0.5).astype(int)
    assert rows.tolist() == [2, 6, 10]  # row-major order, >= 4 cells (200 um) apart
    assert (det[:, 0] == 250).all()
    assert len(detections_from_heatmap(_heatmap(probs), threshold=1.01)) == 0
    assert detections_from_heatmap(_heatmap(np.full((3, 3), np.nan)), 0.5).shape == (0, 3)


def test_anisotropic_and_missing_mpp():
    probs = np.zeros((10, 10), np.float32)
    probs[2, 2], probs[2, 5] = 0.9, 0.8  # 3 cells apart horizontally
    wide_x = detections_from_heatmap(_heatmap(probs, mpp=(1.0, 0.5)), 0.5, 200)
    assert len(wide_x) == 2  # 3 cells x 100 um = 300 um apart
    assert len(detections_from_heatmap(_heatmap(probs, mpp=(0.5, 1.0)), 0.5, 200)) == 1
    with pytest.raises(EvaluationError, match="mpp"):
        detections_from_heatmap(_heatmap(probs, mpp=None), 0.5)
    assert len(detections_from_heatmap(_heatmap(probs, mpp=None), 0.5, mpp=1.0)) == 2


def test_cells_above_threshold_may_lie_farther_than_min_distance_from_a_detection():
    # 100 um cells (CELL 100 px at 1 um/px): only the peak is a local maximum within 150 um
    heatmap = _heatmap([[0.9, 0.8, 0.7]], mpp=(1.0, 1.0))
    det = detections_from_heatmap(heatmap, threshold=0.5, min_distance_um=150)
    np.testing.assert_allclose(det, [[50, 50, 0.9]], rtol=1e-6)
    x, _ = heatmap.cell_centres(0, 2)
    assert float(x) - det[0, 0] == 200  # the 0.7 cell: 200 um from the only detection


@pytest.mark.parametrize("seed", range(5))
def test_every_cell_above_threshold_climbs_to_a_detection(seed):
    """What is guaranteed: from every cell above the threshold, steps shorter than
    min_distance_um to cells at least as probable reach a detection; and any two
    detections are at least min_distance_um apart."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    probs = ndimage.gaussian_filter(rng.random((25, 25)), 1.5).astype(np.float32)
    probs = (probs - probs.min()) / (probs.max() - probs.min())
    probs[rng.random(probs.shape) < 0.05] = np.nan
    distance = 175.0  # 3.5 cells of 50 um
    det = detections_from_heatmap(_heatmap(probs), threshold=0.3, min_distance_um=distance)
    points = np.column_stack([det[:, 1], det[:, 0]]) / CELL - 0.5  # (row, col)
    pairs = np.hypot(*(points[:, None] - points[None]).transpose(2, 0, 1)) * CELL * MPP
    assert (pairs[~np.eye(len(points), dtype=bool)] >= distance).all()
    above = np.argwhere(np.nan_to_num(probs, nan=-1) >= 0.3)
    reached = {tuple(p) for p in np.rint(points).astype(int).tolist()}
    frontier = list(reached)
    while frontier:  # downhill from the detections
        r, c = frontier.pop()
        for rr, cc in above:
            near = np.hypot(rr - r, cc - c) * CELL * MPP < distance
            if (rr, cc) not in reached and near and probs[rr, cc] <= probs[r, c]:
                reached.add((rr, cc))
                frontier.append((rr, cc))
    assert {tuple(p) for p in above.tolist()} <= reached
