"""Exact polygon rasterisation on a pixel grid.

Pixel-grid convention (the one every exaslide mask follows):

    A mask pixel ``(row i, column j)`` at downsample ``d`` with origin ``(x0, y0)`` (level-0
    pixels) covers the level-0 square ``[x0 + j*d, x0 + (j+1)*d) x [y0 + i*d, y0 + (i+1)*d)``.
    The pixel is inside a polygon when its **centre** ``(x0 + (j+0.5)*d, y0 + (i+0.5)*d)``
    is inside the polygon (holes excluded). Centres exactly on an edge follow the
    half-open rule: on a left or top edge they are inside, on a right or bottom edge outside.

This is what ``shapely.contains_xy`` gives at the pixel centres, computed by a scanline
even-odd fill: each ring edge contributes one crossing per pixel row whose centre line it
spans (half-open in y, so shared vertices count once), and a pixel is inside when an odd
number of crossings lie at or left of its centre. For a valid polygon, even-odd over all of
its rings is exactly the interior. The work is proportional to the number of crossings plus
the polygon's bounding box, not to vertices times pixels, so a 66,697-vertex CAMELYON16
annotation fills a 3,400 x 3,400 mask in tens of milliseconds.

Any finite coordinate gives the exact answer: the geometry intersected with the mask.
Everything is clipped to the mask in floating point before any integer cast, and the
crossings of edges with an end further than :data:`FAR` mask pixels from the origin
(1e30 from a corrupt annotation, say) are computed in exact rational arithmetic, since
floating point would misplace them by up to 1e14 pixels. Nearer edges are computed in
floating point: a centre closer than about 1e-9 pixels to a slanted edge may fall either
way (axis-aligned edges are exact). A polygon with a NaN or infinite coordinate has no
defined interior: it is skipped (with a logged warning; the annotation readers refuse
such files up front).
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

logger = logging.getLogger(__name__)

#: Edges with an end further than this (in mask pixels, from the mask's origin) have their
#: crossings computed exactly; nearer ones in floating point (error below 1e-8 pixels).
FAR = float(1 << 26)


def _rings(geometry: BaseGeometry) -> list[np.ndarray]:
    """All exterior and interior rings of the polygonal parts of a geometry."""
    rings = []
    for poly in shapely.get_parts(geometry):
        if poly.geom_type == "Polygon" and not poly.is_empty:
            rings.append(np.asarray(poly.exterior.coords))
            rings.extend(np.asarray(r.coords) for r in poly.interiors)
        elif poly.geom_type in ("MultiPolygon", "GeometryCollection"):
            rings.extend(_rings(poly))
    return rings


def fill_polygon(
    mask: np.ndarray,
    geometry: BaseGeometry,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    downsample: float = 1.0,
    value: int | bool = 1,
) -> np.ndarray:
    """Set the pixels of ``mask`` whose centres lie inside ``geometry`` to ``value``.

    Each polygon of a (multi)polygon is filled separately (even-odd over its own rings), so
    overlapping polygons add up to their union. Non-polygonal parts are ignored, and so are
    polygons with a NaN or infinite coordinate (see the module docstring).

    Args:
        mask: a 2-D array, modified in place.
        geometry: a valid shapely Polygon/MultiPolygon in level-0 pixel coordinates.
        origin: level-0 coordinates of the mask's top-left corner.
        downsample: level-0 pixels per mask pixel.
        value: what to write in inside pixels.

    Returns:
        ``mask``, for chaining.

    Raises:
        ValueError: ``origin`` is not finite or ``downsample`` is not a positive finite
            number.
    """
    if not (math.isfinite(origin[0]) and math.isfinite(origin[1])):
        raise ValueError(f"origin must be finite, got {origin}")
    if not (math.isfinite(downsample) and downsample > 0):
        raise ValueError(f"downsample must be a positive finite number, got {downsample}")
    for poly in shapely.get_parts(geometry):
        if poly.is_empty or poly.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        rings = _rings(poly)
        if not all(np.isfinite(r).all() for r in rings):
            logger.warning("skipping a polygon with a NaN or infinite coordinate (bounds %s)",
                           poly.bounds)
            continue
        inside = _even_odd(rings, mask.shape, (float(origin[0]), float(origin[1])),
                           float(downsample))
        if inside is not None:
            (r0, c0), sub = inside
            mask[r0 : r0 + sub.shape[0], c0 : c0 + sub.shape[1]][sub] = value
    return mask


def _span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Pixel indices ``[first, last)`` whose centres ``i + 0.5`` lie in ``[lo, hi)``, clipped
    to ``[0, size]`` in floating point before the integer cast."""
    first = float(np.clip(np.ceil(lo - 0.5), 0, size))
    last = float(np.clip(np.ceil(hi - 0.5), 0, size))
    return int(first), int(last)


def _even_odd(rings: list[np.ndarray], shape: tuple[int, int],
              origin: tuple[float, float], downsample: float):
    """Even-odd fill of rings (level-0 coordinates) inside their bounding box, clipped to
    the mask.

    Returns ``((row0, col0), bool array)`` or ``None`` when nothing is inside the mask.
    """
    height, width = shape[:2]
    with np.errstate(over="ignore"):  # far coordinates may overflow to inf: clipped below
        local = [(r - origin) / downsample for r in rings]
    pts = np.concatenate(local)
    r0, r1 = _span(pts[:, 1].min(), pts[:, 1].max(), height)
    c0, c1 = _span(pts[:, 0].min(), pts[:, 0].max(), width)
    if r0 >= r1 or c0 >= c1:
        return None
    start = np.concatenate([r[:-1] for r in local])
    end = np.concatenate([r[1:] for r in local])
    far = (np.abs(start) > FAR).any(axis=1) | (np.abs(end) > FAR).any(axis=1)
    rows, cols = _crossings(start[~far], end[~far], (r0, r1), (c0, c1))
    if far.any():
        raw_start = np.concatenate([r[:-1] for r in rings])[far]
        raw_end = np.concatenate([r[1:] for r in rings])[far]
        exact = [_exact_crossings(a, b, origin, downsample, (r0, r1), (c0, c1))
                 for a, b in zip(raw_start, raw_end, strict=True)]
        rows = np.concatenate([rows, *(e[0] for e in exact)])
        cols = np.concatenate([cols, *(e[1] for e in exact)])
    if not len(rows):
        return None
    stride = c1 - c0 + 1
    flat = (rows - r0) * stride + (cols - c0)
    positions, counts = np.unique(flat, return_counts=True)  # O(crossings) memory
    toggles = np.zeros((r1 - r0) * stride, dtype=np.uint8)
    toggles[positions[counts & 1 == 1]] = 1
    toggles = toggles.reshape(r1 - r0, stride)[:, :-1]
    inside = np.bitwise_xor.accumulate(toggles, axis=1).view(bool)
    return (r0, c0), inside


def _crossings(start: np.ndarray, end: np.ndarray, row_range: tuple[int, int],
               col_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the crossings of edges (mask-pixel coordinates, none far) with
    the pixel rows' centre lines, in floating point; each toggles pixels ``cols`` onward."""
    (r0, r1), (c0, c1) = row_range, col_range
    ya, yb = start[:, 1], end[:, 1]
    lo, hi = np.minimum(ya, yb), np.maximum(ya, yb)
    # Rows whose centre line y = i + 0.5 satisfies lo <= y < hi (half-open: vertices once).
    first = np.clip(np.ceil(lo - 0.5), r0, r1).astype(np.int64)
    last = np.clip(np.ceil(hi - 0.5), r0, r1).astype(np.int64)
    counts = last - first
    keep = counts > 0
    counts, first = counts[keep], first[keep]
    xa, ya, xb, yb = start[keep, 0], ya[keep], end[keep, 0], yb[keep]
    edge = np.repeat(np.arange(len(counts)), counts)
    rows = first[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(counts) - counts, counts))
    t = (rows + 0.5 - ya[edge]) / (yb[edge] - ya[edge])
    xs = xa[edge] + t * (xb[edge] - xa[edge])
    # A crossing at x toggles every pixel whose centre j + 0.5 >= x, i.e. j >= ceil(x - 0.5).
    cols = np.clip(np.ceil(xs - 0.5), c0, c1).astype(np.int64)
    return rows.astype(np.int64), cols


def _exact_crossings(a: np.ndarray, b: np.ndarray, origin: tuple[float, float],
                     downsample: float, row_range: tuple[int, int],
                     col_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_crossings` of one edge ``a -> b`` (level-0 coordinates) in exact rational
    arithmetic (every float is a rational), for edges with a far end."""
    (r0, r1), (c0, c1) = row_range, col_range
    ox, oy, d = Fraction(origin[0]), Fraction(origin[1]), Fraction(downsample)
    xa, ya = (Fraction(a[0]) - ox) / d, (Fraction(a[1]) - oy) / d
    xb, yb = (Fraction(b[0]) - ox) / d, (Fraction(b[1]) - oy) / d
    half = Fraction(1, 2)
    first = min(max(math.ceil(min(ya, yb) - half), r0), r1)
    last = min(max(math.ceil(max(ya, yb) - half), r0), r1)
    if first >= last:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    slope = (xb - xa) / (yb - ya)
    rows = np.arange(first, last, dtype=np.int64)
    cols = [min(max(math.ceil(xa + (int(i) + half - ya) * slope - half), c0), c1)
            for i in rows]
    return rows, np.asarray(cols, dtype=np.int64)


def rasterize(
    geometry: BaseGeometry,
    shape: tuple[int, int],
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    downsample: float = 1.0,
) -> np.ndarray:
    """A boolean mask of ``shape`` (rows, cols) that is True inside ``geometry``.

    See the module docstring for the pixel-grid convention.
    """
    return fill_polygon(np.zeros(shape, dtype=bool), geometry, origin=origin,
                        downsample=downsample, value=True)
