"""The rasteriser follows the documented pixel-centre convention exactly."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon, box

from exaslide.masks import fill_polygon, rasterize


def _reference(geometry, shape, origin, downsample):
    jj, ii = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]))
    return shapely.contains_xy(geometry, origin[0] + (jj + 0.5) * downsample,
                               origin[1] + (ii + 0.5) * downsample)


@pytest.mark.parametrize("seed", range(20))
def test_random_polygons_match_shapely_at_pixel_centres(seed):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-10, 90, (int(rng.integers(3, 60)), 2))
    geometry = shapely.make_valid(Polygon(pts), method="structure")  # self-intersecting
    origin = tuple(rng.uniform(-5, 5, 2))
    downsample = float(rng.choice([0.6, 1.0, 2.5, 7.0]))
    shape = (53, 47)
    mask = rasterize(geometry, shape, origin=origin, downsample=downsample)
    np.testing.assert_array_equal(mask, _reference(geometry, shape, origin, downsample))


def test_holes_and_multipolygons():
    ring = Point(50, 50).buffer(40).difference(Point(55, 45).buffer(15))
    multi = MultiPolygon([ring, box(0, 0, 10, 10)])
    mask = rasterize(multi, (100, 100))
    np.testing.assert_array_equal(mask, _reference(multi, (100, 100), (0, 0), 1.0))
    assert not mask[45, 55] and mask[50, 15] and mask[5, 5]


def test_box_edges_follow_half_open_rule():
    # box [2, 5) x [3, 7) covers centres 2.5, 3.5, 4.5 in x and 3.5 ... 6.5 in y
    mask = rasterize(box(2, 3, 5, 7), (10, 10))
    assert mask.sum() == 3 * 4
    assert mask[3:7, 2:5].all()
    # a polygon that covers no pixel centre sets nothing (unlike cv2.fillPoly)
    assert not rasterize(box(2.6, 2.6, 3.4, 3.4), (10, 10)).any()


def test_overlapping_polygons_are_a_union_and_out_of_bounds_is_clipped():
    a, b = box(-20, -20, 30, 30), box(20, 20, 200, 200)
    mask = fill_polygon(np.zeros((50, 50), np.uint8), MultiPolygon([a, b]), value=7)
    assert mask[25, 25] == 7  # the overlap is not cancelled by even-odd
    assert set(np.unique(mask)) == {0, 7}
    np.testing.assert_array_equal(mask == 7, _reference(a.union(b), (50, 50), (0, 0), 1.0))
    assert not rasterize(box(500, 500, 600, 600), (50, 50)).any()
