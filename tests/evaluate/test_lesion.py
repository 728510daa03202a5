"""The CAMELYON16 evaluation mask: dilation, hole filling, 8-connectivity, ITCs."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from evaluate_helpers import MPP, annotation_set, disc
from shapely.geometry import box

from exaslide.errors import EvaluationError
from exaslide.evaluate import evaluation_mask, major_axis_lengths, tumour_geometry
from exaslide.evaluate.lesion import ITC_MAJOR_AXIS_UM


def test_major_axis_matches_regionprops_definition():
    labels = np.zeros((40, 40), np.int32)
    labels[2:12, 3:8] = 1  # 10 rows x 5 cols: variance (10^2 - 1) / 12 along rows
    labels[20, 20] = 2  # one pixel: 0
    yy, xx = np.mgrid[:40, :40]
    labels[((yy - 28) / 10) ** 2 + ((xx - 28) / 6) ** 2 <= 1] = 3  # ellipse, semi-axis 10
    axes = major_axis_lengths(labels, 3)
    assert axes[0] == pytest.approx(4 * np.sqrt(99 / 12))
    assert axes[1] == 0.0
    assert axes[2] == pytest.approx(20, rel=0.03)
    rotated = np.zeros((30, 30), np.int32)
    for i in range(10):  # a diagonal line of 10 pixels: the axis is along the diagonal
        rotated[5 + i, 5 + i] = 1
    assert major_axis_lengths(rotated, 1)[0] == pytest.approx(4 * np.sqrt(2 * 99 / 12))


def _brute_force_dilation(tumour: np.ndarray, threshold: float) -> np.ndarray:
    ty, tx = np.nonzero(tumour)
    yy, xx = np.mgrid[: tumour.shape[0], : tumour.shape[1]]
    d = np.sqrt((yy[..., None] - ty) ** 2 + (xx[..., None] - tx) ** 2).min(axis=-1)
    return d < threshold


def test_dilation_is_distance_below_75um_over_2():
    mpp = 75 / 64 / 3.5  # threshold 75 / (mpp * 32 * 2) = 3.5 mask pixels
    square = box(10 * 32, 12 * 32, 20 * 32, 22 * 32)  # mask pixels rows 12-21, cols 10-19
    mask = evaluation_mask(square, (64 * 32, 64 * 32), mpp)
    full = np.zeros(mask.shape, bool)
    r0, c0 = mask.offset
    full[r0:r0 + mask.labels.shape[0], c0:c0 + mask.labels.shape[1]] = mask.labels > 0
    tumour = np.zeros(mask.shape, bool)
    tumour[12:22, 10:20] = True
    np.testing.assert_array_equal(full, _brute_force_dilation(tumour, 3.5))
    assert mask.max_label == 1 and mask.itc == {1}  # 107 um across: an ITC


def test_holes_are_filled_and_exclusions_removed():
    ring = disc(5000, 5000, 1500).difference(disc(5000, 5000, 1000))
    mask = evaluation_mask(annotation_set([ring]), (10000, 10000), MPP)
    assert mask.label_at([5000], [5000])[0] == 1  # the hole belongs to the lesion
    lesion = disc(5000, 5000, 1500)
    cut = annotation_set([lesion], [box(0, 4900, 10000, 5100)])  # splits it in two
    assert tumour_geometry(cut).geom_type == "MultiPolygon"
    split = evaluation_mask(cut, (10000, 10000), MPP)
    assert split.max_label == 1  # 200 px = 50 um gap < 2 x 37.5 um dilation: merged again
    wide = evaluation_mask(annotation_set([lesion], [box(0, 4000, 10000, 6000)]),
                           (10000, 10000), MPP)
    assert wide.max_label == 2 and wide.label_at([5000], [5000])[0] == 0


def test_eight_connectivity_and_floor_lookup():
    # Two mask pixels touching at a corner; mpp 2 -> threshold 0.59 px: no growth.
    pair = shapely.union_all([box(320, 320, 352, 352), box(352, 352, 384, 384)])
    mask = evaluation_mask(pair, (1024, 1024), 2.0)
    assert mask.max_label == 1
    assert mask.label_at([320, 351.9, 352, 383.9, 384, -5, 5000],
                         [320, 351.9, 320, 383.9, 384, 320, 320]).tolist() == \
        [1, 1, 0, 1, 0, 0, 0]


def test_itc_threshold_275um_major_axis():
    small, big = disc(3000, 3000, 150), disc(12000, 12000, 300)
    mask = evaluation_mask(annotation_set([small, big]), (20000, 20000), MPP)
    assert mask.max_label == 2 and mask.num_lesions == 1
    small_label = int(mask.label_at([3000], [3000])[0])
    assert mask.itc == {small_label}
    limit = ITC_MAJOR_AXIS_UM / (MPP * 32)
    assert mask.major_axes[small_label - 1] < limit < mask.major_axes[2 - small_label]


def test_empty_and_missing_mpp():
    empty = evaluation_mask(annotation_set(), (1000, 1000), MPP)
    assert empty.max_label == 0 and empty.label_at([10], [10]).tolist() == [0]
    assert empty.shape == (32, 32)
    with pytest.raises(EvaluationError, match="mpp"):
        evaluation_mask(annotation_set([disc(500, 500, 100)]), (1000, 1000), None)
