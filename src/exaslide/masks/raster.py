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
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry


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
    overlapping polygons add up to their union. Non-polygonal parts are ignored.

    Args:
        mask: a 2-D array, modified in place.
        geometry: a valid shapely Polygon/MultiPolygon in level-0 pixel coordinates.
        origin: level-0 coordinates of the mask's top-left corner.
        downsample: level-0 pixels per mask pixel.
        value: what to write in inside pixels.

    Returns:
        ``mask``, for chaining.
    """
    for poly in shapely.get_parts(geometry):
        if poly.is_empty or poly.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        rings = [(r - origin) / downsample for r in _rings(poly)]
        inside = _even_odd(rings, mask.shape)
        if inside is not None:
            (r0, c0), sub = inside
            mask[r0 : r0 + sub.shape[0], c0 : c0 + sub.shape[1]][sub] = value
    return mask


def _even_odd(rings: list[np.ndarray], shape: tuple[int, int]):
    """Even-odd fill of rings (mask-pixel coordinates) inside their clipped bounding box.

    Returns ``((row0, col0), bool array)`` or ``None`` when nothing is inside the mask.
    """
    height, width = shape[:2]
    pts = np.concatenate(rings)
    r0 = max(0, int(np.ceil(pts[:, 1].min() - 0.5)))
    r1 = min(height, int(np.ceil(pts[:, 1].max() - 0.5)))
    c0 = max(0, int(np.ceil(pts[:, 0].min() - 0.5)))
    c1 = min(width, int(np.ceil(pts[:, 0].max() - 0.5)))
    if r0 >= r1 or c0 >= c1:
        return None
    start = np.concatenate([r[:-1] for r in rings])
    end = np.concatenate([r[1:] for r in rings])
    ya, yb = start[:, 1], end[:, 1]
    lo, hi = np.minimum(ya, yb), np.maximum(ya, yb)
    # Rows whose centre line y = i + 0.5 satisfies lo <= y < hi (half-open: vertices once).
    first = np.clip(np.ceil(lo - 0.5).astype(np.int64), r0, r1)
    last = np.clip(np.ceil(hi - 0.5).astype(np.int64), r0, r1)
    counts = last - first
    keep = counts > 0
    if not keep.any():
        return None
    counts, first = counts[keep], first[keep]
    xa, ya, xb, yb = start[keep, 0], ya[keep], end[keep, 0], yb[keep]
    edge = np.repeat(np.arange(len(counts)), counts)
    rows = first[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(counts) - counts, counts))
    t = (rows + 0.5 - ya[edge]) / (yb[edge] - ya[edge])
    xs = xa[edge] + t * (xb[edge] - xa[edge])
    # A crossing at x toggles every pixel whose centre j + 0.5 >= x, i.e. j >= ceil(x - 0.5).
    cols = np.clip(np.ceil(xs - 0.5).astype(np.int64), c0, c1)
    stride = c1 - c0 + 1
    flat = (rows - r0) * stride + (cols - c0)
    positions, counts = np.unique(flat, return_counts=True)  # O(crossings) memory
    toggles = np.zeros((r1 - r0) * stride, dtype=np.uint8)
    toggles[positions[counts & 1 == 1]] = 1
    toggles = toggles.reshape(r1 - r0, stride)[:, :-1]
    inside = np.bitwise_xor.accumulate(toggles, axis=1).view(bool)
    return (r0, c0), inside


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
