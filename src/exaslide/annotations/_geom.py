"""Geometry helpers shared by the readers and writers (internal).

Readers build the *source* geometry from raw vertices here; writers turn a source geometry
back into flat lists of vertices ("parts") for formats that store one ring per record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shapely.geometry import LineString, MultiPoint, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from exaslide.annotations.model import AREA_KINDS, PROBLEM_TOO_FEW, TUMOUR
from exaslide.errors import AnnotationError

XY = tuple[float, float]

#: Group used for the holes of polygons written to formats that cannot store holes.
HOLE_GROUP = "_2"


def check_finite(points: Sequence[XY], where: str) -> None:
    """Raise AnnotationError if any coordinate is NaN or infinite.

    Args:
        points: The vertices.
        where: Context for the message (file and annotation).
    """
    for x, y in points:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise AnnotationError(
                f"{where}: coordinate ({x}, {y}) is not a finite number; fix the file"
            )


def open_ring(points: Sequence[XY]) -> list[XY]:
    """Return the vertices without an explicit closing vertex (last == first)."""
    pts = list(points)
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts.pop()
    return pts


def polygon_source(points: Sequence[XY]) -> BaseGeometry:
    """Build the source geometry of a polygon from its stored vertices.

    Three or more vertices give a Polygon (possibly invalid). Degenerate rings are kept
    losslessly as a LineString (2 vertices), a Point (1 vertex) or an empty Polygon.
    """
    pts = open_ring(points)
    if len(pts) >= 3:
        return Polygon(pts)
    if len(pts) == 2:
        return LineString(pts)
    if len(pts) == 1:
        return Point(pts[0])
    return Polygon()


def polygon_with_holes(
    shell: Sequence[XY], holes: Sequence[Sequence[XY]]
) -> tuple[BaseGeometry, list[tuple[str, str]]]:
    """Build a polygon with holes; holes with fewer than 3 vertices are left out.

    Returns:
        The source geometry and (problem, action) notes for left-out holes.
    """
    outer = polygon_source(shell)
    if not isinstance(outer, Polygon) or outer.is_empty or not holes:
        return outer, []
    notes: list[tuple[str, str]] = []
    kept: list[list[XY]] = []
    for k, hole in enumerate(holes, start=1):
        pts = open_ring(hole)
        if len(pts) >= 3:
            kept.append(pts)
        else:
            notes.append((f"hole {k}: {PROBLEM_TOO_FEW}", "dropped"))
    return Polygon(open_ring(shell), kept), notes


def multipolygon_source(
    polygons: Sequence[tuple[Sequence[XY], Sequence[Sequence[XY]]]],
) -> tuple[BaseGeometry, list[tuple[str, str]]]:
    """Build a MultiPolygon from (shell, holes) pairs; degenerate parts are left out."""
    parts: list[Polygon] = []
    notes: list[tuple[str, str]] = []
    for k, (shell, holes) in enumerate(polygons, start=1):
        geom, part_notes = polygon_with_holes(shell, holes)
        notes.extend((f"part {k}: {p}", a) for p, a in part_notes)
        if isinstance(geom, Polygon) and not geom.is_empty:
            parts.append(geom)
        else:
            notes.append((f"part {k}: {PROBLEM_TOO_FEW}", "dropped"))
    return MultiPolygon(parts), notes


def points_source(points: Sequence[XY]) -> BaseGeometry:
    """A Point for one vertex, a MultiPoint for several, an empty Point for none."""
    if len(points) == 1:
        return Point(points[0])
    if not points:
        return Point()
    return MultiPoint(list(points))


@dataclass
class Part:
    """One ring or point list to write to a format without holes / multi-part geometries.

    Attributes:
        name: Record name (``#k`` suffix for multi-part, ``hole k`` for holes).
        group: Group to write.
        kind: "polygon", "spline", "rectangle", "dot" or "pointset".
        points: Vertices without a closing vertex.
        hole: True when the part is a hole written as an exclusion polygon.
    """

    name: str
    group: str
    kind: str
    points: list[XY]
    hole: bool = False


def _coords(geom: BaseGeometry) -> list[XY]:
    return [(float(c[0]), float(c[1])) for c in geom.coords]


def _polygon_parts(polys: list[Polygon], name: str, group: str, kind: str,
                   label: str) -> list[Part]:
    if label != TUMOUR and any(poly.interiors for poly in polys):
        raise AnnotationError(
            f"annotation {name!r} (label {label or 'none'!r}) has holes: ASAP XML and tables "
            "can only store holes of tumour polygons (as `_2` exclusions); write GeoJSON"
        )
    parts: list[Part] = []
    multi = len(polys) > 1
    hole_no = 0
    for k, poly in enumerate(polys, start=1):
        part_name = f"{name}#{k}" if multi else name
        parts.append(Part(part_name, group, kind, open_ring(_coords(poly.exterior))))
        for ring in poly.interiors:
            hole_no += 1
            hole = open_ring(_coords(ring))
            parts.append(Part(f"{name} hole {hole_no}", HOLE_GROUP, "polygon", hole, hole=True))
    return parts


def flatten(source: BaseGeometry, kind: str, name: str, group: str,
            label: str = TUMOUR) -> list[Part]:
    """Split a source geometry into single rings / point lists for ASAP XML and tables.

    Holes of tumour polygons become separate exclusion parts in group ``_2`` named
    ``<name> hole k`` (the tumour-minus-exclusion area is kept); holes in polygons of any
    other label raise :class:`AnnotationError`, since an exclusion would erase tumour;
    the parts of a MultiPolygon are named ``<name>#k``. Degenerate area sources (LineString,
    Point, empty) are written as polygons with their stored vertices.
    """
    area_kind = kind if kind in ("polygon", "spline", "rectangle") else "polygon"
    if isinstance(source, Polygon) and not source.is_empty:
        return _polygon_parts([source], name, group, area_kind, label)
    if isinstance(source, MultiPolygon) and not source.is_empty:
        return _polygon_parts(list(source.geoms), name, group, area_kind, label)
    if isinstance(source, Point | MultiPoint | LineString) and kind in AREA_KINDS:
        pts = [] if source.is_empty else _coords_any(source)
        return [Part(name, group, area_kind, pts)]
    if isinstance(source, Point):
        return [Part(name, group, "dot", [] if source.is_empty else _coords(source))]
    if isinstance(source, MultiPoint):
        return [Part(name, group, "pointset", _coords_any(source))]
    if source.is_empty:
        return [Part(name, group, area_kind if kind in AREA_KINDS else "dot", [])]
    raise AnnotationError(
        f"annotation {name!r}: cannot write a {source.geom_type} geometry; "
        "expected Polygon, MultiPolygon, Point or MultiPoint"
    )


def _coords_any(geom: BaseGeometry) -> list[XY]:
    if isinstance(geom, MultiPoint):
        return [(float(p.x), float(p.y)) for p in geom.geoms]
    return _coords(geom)


def color_to_hex(value: object) -> str | None:
    """Convert a QuPath colour ([r, g, b] list or packed ARGB int) to ``#rrggbb``."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, list | tuple) and len(value) >= 3:
        try:
            r, g, b = (int(v) & 0xFF for v in value[:3])
        except (TypeError, ValueError):
            return None
        return f"#{r:02x}{g:02x}{b:02x}"
    if isinstance(value, int) and not isinstance(value, bool):
        rgb = value & 0xFFFFFF
        return f"#{rgb:06x}"
    return None


def hex_to_rgb(value: str | None) -> list[int] | None:
    """Convert ``#rrggbb`` (or ``rrggbb``) to [r, g, b]; None when not parseable."""
    if not value:
        return None
    text = value.strip().lstrip("#")
    if len(text) != 6:
        return None
    try:
        return [int(text[i : i + 2], 16) for i in (0, 2, 4)]
    except ValueError:
        return None
