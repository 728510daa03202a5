"""Lesion detections from a probability heatmap: thresholded local maxima with suppression.

A cell becomes a detection when

1. its probability is ``>= threshold`` (NaN cells never are, and never suppress others);
2. no cell closer than ``min_distance_um`` (centre to centre, in microns) has a higher
   probability (a maximum filter with a disc footprint);
3. among equal maxima (plateaus), cells are taken in decreasing probability, then row-major
   order, and each one suppresses the later ones closer than ``min_distance_um``.

So any two detections are at least ``min_distance_um`` apart, and every local maximum of
rule 2 that is not a detection lies closer than ``min_distance_um`` to a detection at least
as probable. A cell above the threshold that is not a local maximum is **not** necessarily
near a detection: it is only joined to one by a chain of cells, each closer than
``min_distance_um`` to the next and at least as probable as the one before (climbing
uphill). A row of 100 um cells ``[0.9, 0.8, 0.7]`` with a 150 um distance gives one
detection, at 0.9, 200 um from the 0.7 cell; a lesion whose probability rises steadily to
one peak is reported once, however large. The default of 200 um is close to the
suppression radius of NCRF's non-maximum suppression (12 pixels at level 6, 187 um at
0.243 um/px) and to the CAMELYON ITC size; peaks closer than that are reported once, at
the most probable cell.
"""

from __future__ import annotations

import math

import numpy as np

from exaslide.errors import EvaluationError
from exaslide.evaluate.heatmap import Heatmap

DEFAULT_MIN_DISTANCE_UM = 200.0


def _cell_um(heatmap: Heatmap, mpp) -> tuple[float, float]:
    if mpp is None:
        mpp = heatmap.mpp
    if mpp is None:
        raise EvaluationError(f"{heatmap.slide_id or 'heatmap'}: no resolution (mpp) in the "
                              "heatmap metadata; pass mpp to convert min_distance_um")
    mx, my = (float(mpp), float(mpp)) if isinstance(mpp, int | float) else map(float, mpp)
    return my * heatmap.cell, mx * heatmap.cell  # (row, col) step in microns


def _disc(step: tuple[float, float], distance: float) -> np.ndarray:
    """Offsets (footprint) closer than ``distance`` microns to the centre cell."""
    rr = max(0, math.ceil(distance / step[0]) - 1) if distance > 0 else 0
    rc = max(0, math.ceil(distance / step[1]) - 1) if distance > 0 else 0
    dr, dc = np.mgrid[-rr:rr + 1, -rc:rc + 1]
    inside = (dr * step[0]) ** 2 + (dc * step[1]) ** 2 < distance ** 2
    inside[rr, rc] = True
    return inside


def detections_from_heatmap(heatmap: Heatmap, threshold: float = 0.5,
                            min_distance_um: float = DEFAULT_MIN_DISTANCE_UM, *,
                            mpp: float | tuple[float, float] | None = None) -> np.ndarray:
    """Local maxima of a heatmap as detections (see the module docstring).

    Args:
        heatmap: the slide's probability map.
        threshold: lowest probability of a detection.
        min_distance_um: suppression distance in microns (0: every cell above threshold).
        mpp: level-0 microns per pixel, when the heatmap metadata has none (or to override).

    Returns:
        float64 array ``(n, 3)`` of ``(x, y, p)``: level-0 cell centres and probabilities,
        sorted by decreasing probability.
    """
    from scipy import ndimage

    probs = np.asarray(heatmap.probabilities, dtype=np.float64)
    if min_distance_um < 0:
        raise EvaluationError(f"min_distance_um must be >= 0, got {min_distance_um}")
    values = np.where(np.isnan(probs), -np.inf, probs)
    if min_distance_um > 0:
        step = _cell_um(heatmap, mpp)
        local_max = ndimage.maximum_filter(values, footprint=_disc(step, min_distance_um),
                                           mode="constant", cval=-np.inf)
        candidates = (values >= threshold) & (values >= local_max)
    else:
        candidates = values >= threshold
    rows, cols = np.nonzero(candidates)
    p = values[rows, cols]
    order = np.lexsort((cols, rows, -p))  # by -p, then row, then col
    rows, cols, p = rows[order], cols[order], p[order]
    if min_distance_um > 0 and len(p) > 1:
        keep = _suppress(np.column_stack([rows * step[0], cols * step[1]]), min_distance_um)
        rows, cols, p = rows[keep], cols[keep], p[keep]
    x, y = heatmap.cell_centres(rows, cols)
    return np.column_stack([x, y, p]).astype(np.float64).reshape(-1, 3)


def _suppress(points_um: np.ndarray, distance: float) -> np.ndarray:
    """Greedy suppression in the given order; indices kept."""
    from scipy.spatial import cKDTree

    tree = cKDTree(points_um)
    removed = np.zeros(len(points_um), dtype=bool)
    keep = []
    for i in range(len(points_um)):
        if removed[i]:
            continue
        keep.append(i)
        near = np.asarray(tree.query_ball_point(points_um[i], distance), dtype=np.int64)
        if near.size:
            d = np.hypot(*(points_um[near] - points_um[i]).T)
            removed[near[d < distance]] = True
    return np.asarray(keep, dtype=np.int64)
