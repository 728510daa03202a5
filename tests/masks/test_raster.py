"""The rasteriser follows the documented pixel-centre convention exactly."""

from __future__ import annotations

import itertools
import warnings

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


def test_edges_through_pixel_centres_follow_the_half_open_rule_in_both_axes():
    # centres x = 2.5, 3.5 (4.5 is on the right edge: out); y = 3.5 ... 5.5 (6.5: out)
    mask = rasterize(box(2.5, 3.5, 4.5, 6.5), (10, 10))
    expected = np.zeros((10, 10), bool)
    expected[3:6, 2:4] = True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(rasterize(box(3.5, 2.5, 6.5, 4.5), (10, 10)), expected.T)
    # the same through origin and downsample: centres at 1 + (j + 0.5) * 2
    np.testing.assert_array_equal(
        rasterize(box(6.0, 8.0, 10.0, 14.0), (10, 10), origin=(1.0, 1.0), downsample=2.0),
        expected)


def _quiet_rasterize(geometry, shape=(100, 100), **kwargs):
    """``rasterize`` that fails on any warning (numpy casts, shapely NaN warnings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return rasterize(geometry, shape, **kwargs)


def _between_contains_and_covers(mask, geometry, origin=(0.0, 0.0), downsample=1.0):
    jj, ii = np.meshgrid(np.arange(mask.shape[1]), np.arange(mask.shape[0]))
    cx, cy = origin[0] + (jj + 0.5) * downsample, origin[1] + (ii + 0.5) * downsample
    inner = shapely.contains_xy(geometry, cx, cy)
    outer = shapely.intersects_xy(geometry, cx, cy)
    assert not (inner & ~mask).any(), "pixels strictly inside left out"
    assert not (mask & ~outer).any(), "pixels outside filled"
    return inner


def exact_centres(geometry, shape) -> tuple[np.ndarray, np.ndarray]:
    """``(inside, on_edge)`` of every pixel centre ``(j + 0.5, i + 0.5)``, by even-odd ray
    casting in exact rational arithmetic (independent of shapely, which overflows near
    1e300)."""
    from fractions import Fraction as F

    edges = []
    for part in shapely.get_parts(geometry):
        for ring in [part.exterior, *part.interiors]:
            pts = [(F(x), F(y)) for x, y in ring.coords]
            edges += list(itertools.pairwise(pts))
    inside = np.zeros(shape, bool)
    on_edge = np.zeros(shape, bool)
    for i in range(shape[0]):
        py = F(2 * i + 1, 2)
        for j in range(shape[1]):
            px, odd = F(2 * j + 1, 2), False
            for (xa, ya), (xb, yb) in edges:
                cross = (xb - xa) * (py - ya) - (yb - ya) * (px - xa)
                if cross == 0 and min(xa, xb) <= px <= max(xa, xb) \
                        and min(ya, yb) <= py <= max(ya, yb):
                    on_edge[i, j] = True
                if (ya > py) != (yb > py) and (cross > 0) == (yb > ya):
                    odd = not odd  # the edge crosses the ray to the right of the centre
            inside[i, j] = odd
    return inside, on_edge


BIG = 1e30


@pytest.mark.parametrize("geometry", [
    Polygon([(10, 10), (BIG, 10), (35, 35), (10, 35)]),     # one far vertex
    Polygon([(10, 10), (35, 10), (35, 35), (-BIG, 35)]),
    box(10, 10, BIG, 35),
    box(-BIG, -BIG, BIG, BIG),                             # covers everything
    Polygon([(-BIG, -BIG), (BIG, BIG), (BIG, -BIG)]),      # the diagonal y = x
    Polygon([(-BIG, -3 * BIG), (BIG, 3 * BIG), (BIG, -3 * BIG)]),
    Polygon([(20, 20), (1e300, 21), (1e300, 1e300), (21, 1e300)]),
    Polygon([(-1e308, 20), (1e308, 30), (0, 1e308)]),
], ids=lambda g: g.wkt[:40])
def test_huge_coordinates_give_the_exact_mask_without_warnings(geometry):
    mask = _quiet_rasterize(geometry, (40, 40))
    inside, on_edge = exact_centres(geometry, (40, 40))
    np.testing.assert_array_equal(mask[~on_edge], inside[~on_edge])
    assert inside.any()


def test_a_far_vertex_keeps_the_tumour():
    """The report: one vertex at 1e30 turned a 75 x 75 tumour into 0 pixels (and a numpy
    cast warning leaked)."""
    spiked = Polygon([(10, 10), (85, 10), (85, 84.75), (BIG, 85), (10, 85)])
    assert _quiet_rasterize(spiked).sum() == 75 * 75
    wedge = Polygon([(10, 10), (85, 10), (85, 85), (BIG, BIG), (10, 85)])
    _between_contains_and_covers(_quiet_rasterize(wedge), wedge)


def test_the_diagonal_through_huge_vertices_is_exact():
    mask = _quiet_rasterize(Polygon([(-BIG, -BIG), (BIG, BIG), (BIG, -BIG)]), (40, 40))
    ii, jj = np.indices((40, 40))
    np.testing.assert_array_equal(mask, jj >= ii)  # centres on the edge: a left edge, in


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_polygons_are_skipped_quietly(bad):
    with warnings.catch_warnings():  # shapely warns when it builds a ring with NaN
        warnings.simplefilter("ignore")
        broken = Polygon([(10, 10), (bad, 10), (85, 85), (10, 85)])
    assert not _quiet_rasterize(broken).any()
    both = MultiPolygon([broken, box(0, 0, 5, 5)])
    assert _quiet_rasterize(both).sum() == 25


@pytest.mark.parametrize(("origin", "downsample"), [((float("nan"), 0), 1.0),
                                                    ((0, 0), 0.0), ((0, 0), float("inf"))])
def test_a_bad_grid_is_an_error(origin, downsample):
    with pytest.raises(ValueError, match=r"origin|downsample"):
        rasterize(box(0, 0, 5, 5), (10, 10), origin=origin, downsample=downsample)
