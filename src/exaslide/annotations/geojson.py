"""QuPath GeoJSON annotations: read and write.

Accepted input: a FeatureCollection, a bare list of Features, one Feature, or a bare
geometry. Polygon, MultiPolygon (holes kept), Point and MultiPoint are read;
GeometryCollections are expanded; LineStrings (and other types) are skipped with a
warning and recorded in ``AnnotationSet.repairs`` as "dropped".

Group = ``properties.classification.name`` ("" when absent), name = ``properties.name``.
Other properties (``objectType``, ``measurements``, ``isLocked`` ...) and the feature
``id`` are kept in :attr:`Annotation.properties`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from shapely.geometry import LineString, MultiPoint, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from exaslide.annotations._fileio import atomic_write_text, read_text
from exaslide.annotations._geom import (
    XY,
    check_finite,
    color_to_hex,
    hex_to_rgb,
    multipolygon_source,
    points_source,
    polygon_with_holes,
)
from exaslide.annotations.model import (
    AREA_KINDS,
    POINT_KINDS,
    Annotation,
    AnnotationDraft,
    AnnotationSet,
    RepairRecord,
    build_annotation_set,
    merge_label_map,
)
from exaslide.errors import AnnotationError

logger = logging.getLogger(__name__)

_OWN_KEYS = ("name", "classification", "color", "exaslide_label", "exaslide_kind")
_KINDS = {
    "Polygon": "polygon",
    "MultiPolygon": "multipolygon",
    "Point": "point",
    "MultiPoint": "pointset",
}


# --------------------------------------------------------------------------- reading


def read_geojson(
    path: str | PathLike[str], *, label_map: Mapping[str, str] | None = None
) -> AnnotationSet:
    """Read a (QuPath) GeoJSON annotation file.

    Args:
        path: The ``.geojson`` / ``.json`` file.
        label_map: Extra ``group -> label`` entries on top of DEFAULT_LABEL_MAP.

    Returns:
        The annotations.

    Raises:
        AnnotationError: The file is missing, not valid JSON, not GeoJSON, or holds
            malformed or non-finite coordinates.
    """
    path = Path(path)
    return parse_geojson(load_json(path), path, label_map=label_map)


def load_json(path: Path) -> Any:
    """Load a JSON file, raising AnnotationError with the line of a syntax error."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg}); the file may be truncated"
        ) from exc


def parse_geojson(
    data: Any, path: str | PathLike[str] | None, *, label_map: Mapping[str, str] | None = None
) -> AnnotationSet:
    """Build an AnnotationSet from already-loaded GeoJSON data (see :func:`read_geojson`)."""
    where = str(path) if path is not None else "<geojson>"
    drafts: list[AnnotationDraft] = []
    skipped: list[RepairRecord] = []
    group_colors: dict[str, str] = {}
    for index, feature in enumerate(_features(data, where)):
        feature_drafts, feature_skipped = _feature_drafts(index, feature, where, group_colors)
        drafts.extend(feature_drafts)
        skipped.extend(feature_skipped)
    return build_annotation_set(
        drafts,
        path=path,
        format="geojson",
        label_map=merge_label_map(label_map),
        skipped=skipped,
        group_colors=group_colors,
    )


def _features(data: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise AnnotationError(f"{where}: FeatureCollection has no 'features' list")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, dict) and ("coordinates" in data or "geometries" in data):
        features = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        raise AnnotationError(
            f"{where}: expected a GeoJSON FeatureCollection, Feature or list of Features"
        )
    for i, feature in enumerate(features):
        if not isinstance(feature, dict):
            raise AnnotationError(f"{where}: feature {i} is not a JSON object")
    return features


def _feature_drafts(
    index: int, feature: dict[str, Any], where: str, group_colors: dict[str, str]
) -> tuple[list[AnnotationDraft], list[RepairRecord]]:
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise AnnotationError(f"{where}: feature {index}: 'properties' is not an object")
    name = props.get("name")
    name = "" if name is None else str(name)
    group, class_color = _classification(props.get("classification"))
    if group and class_color:
        group_colors.setdefault(group, class_color)
    extras = {k: v for k, v in props.items() if k not in _OWN_KEYS}
    if feature.get("id") is not None:
        extras["id"] = feature["id"]
    hint = props.get("exaslide_label")
    kind_hint = props.get("exaslide_kind")
    template = AnnotationDraft(
        index=index,
        source=Polygon(),
        kind=kind_hint if kind_hint in AREA_KINDS | POINT_KINDS else "",
        group=group,
        name=name,
        color=color_to_hex(props.get("color")) or class_color,
        properties=extras,
        label=hint if isinstance(hint, str) else None,
    )
    context = f"{where}: feature {index} ({name!r})"
    return _geometry_drafts(feature.get("geometry"), template, context)


def _classification(value: Any) -> tuple[str, str | None]:
    if isinstance(value, str):
        return value, None
    if not isinstance(value, dict):
        return "", None
    name = value.get("name")
    if name is None and isinstance(value.get("names"), list):
        name = ": ".join(str(n) for n in value["names"])
    color = color_to_hex(value.get("color", value.get("colorRGB")))
    return ("" if name is None else str(name)), color


def _geometry_drafts(
    geometry: Any, template: AnnotationDraft, context: str
) -> tuple[list[AnnotationDraft], list[RepairRecord]]:
    def skip(problem: str) -> tuple[list[AnnotationDraft], list[RepairRecord]]:
        logger.warning("%s: %s; skipped", context, problem)
        record = RepairRecord(template.index, template.name, template.group, problem, "dropped")
        return [], [record]

    if geometry is None:
        return skip("no geometry")
    if not isinstance(geometry, dict):
        raise AnnotationError(f"{context}: 'geometry' is not an object")
    gtype = geometry.get("type")
    if gtype == "GeometryCollection":
        drafts: list[AnnotationDraft] = []
        skipped: list[RepairRecord] = []
        for member in geometry.get("geometries") or []:
            member_drafts, member_skipped = _geometry_drafts(member, template, context)
            drafts.extend(member_drafts)
            skipped.extend(member_skipped)
        return drafts, skipped
    if gtype not in _KINDS:
        return skip(f"unsupported geometry type {gtype}")
    source, notes = _source(gtype, geometry.get("coordinates"), context)
    draft = AnnotationDraft(
        index=template.index,
        source=source,
        kind=_kind(gtype, template.kind),
        group=template.group,
        name=template.name,
        color=template.color,
        properties=dict(template.properties),
        label=template.label,
        notes=notes,
    )
    return [draft], []


def _kind(gtype: str, hint: str) -> str:
    """The kind for a geometry type; a stored ``exaslide_kind`` wins when compatible."""
    default = _KINDS[gtype]
    if hint and (hint in AREA_KINDS) == (default in AREA_KINDS):
        return hint
    return default


def _source(gtype: str, coords: Any, context: str) -> tuple[BaseGeometry, list[tuple[str, str]]]:
    if coords is None or (isinstance(coords, list) and not coords):
        empty = {"Polygon": Polygon(), "MultiPolygon": MultiPolygon(), "Point": Point()}
        return empty.get(gtype, MultiPoint()), []
    if gtype == "Point":
        return Point(_position(coords, context)), []
    if gtype == "MultiPoint":
        return points_source(_positions(coords, context)), []
    if gtype == "Polygon":
        rings = _rings(coords, context)
        return polygon_with_holes(rings[0], rings[1:])
    if not isinstance(coords, list):
        raise AnnotationError(f"{context}: MultiPolygon coordinates must be a list")
    polygons = []
    for poly in coords:
        rings = _rings(poly, context)
        polygons.append((rings[0], rings[1:]) if rings else ([], []))
    return multipolygon_source(polygons)


def _position(value: Any, context: str) -> XY:
    if (
        not isinstance(value, list | tuple)
        or len(value) < 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value[:2])
    ):
        raise AnnotationError(f"{context}: position {value!r} is not [x, y] numbers")
    point = (float(value[0]), float(value[1]))
    check_finite([point], context)
    return point


def _positions(value: Any, context: str) -> list[XY]:
    if not isinstance(value, list):
        raise AnnotationError(f"{context}: expected a list of positions, found {value!r}")
    return [_position(v, context) for v in value]


def _rings(value: Any, context: str) -> list[list[XY]]:
    if not isinstance(value, list):
        raise AnnotationError(f"{context}: expected a list of rings, found {value!r}")
    return [_positions(ring, context) for ring in value]


# --------------------------------------------------------------------------- writing


def write_geojson(
    annotations: Iterable[Annotation],
    path: str | PathLike[str],
    *,
    group_colors: Mapping[str, str] | None = None,
) -> Path:
    """Write annotations (their ``source`` geometries) as a QuPath GeoJSON FeatureCollection.

    Each feature's properties hold ``objectType`` (kept from the input, else
    "annotation"), ``name``, ``classification`` ``{"name": group or label, "color"}``,
    ``color`` (when it differs from the class colour), ``exaslide_label``,
    ``exaslide_kind`` (only when the geometry type does not imply the kind, e.g. "spline")
    and any extra properties. Coordinates are written with full float precision.

    Args:
        annotations: The annotations to write.
        path: Destination file.
        group_colors: Class colours (``#rrggbb``) by group name.

    Returns:
        The destination path.
    """
    return atomic_write_text(Path(path), geojson_text(annotations, group_colors=group_colors))


def geojson_text(
    annotations: Iterable[Annotation], *, group_colors: Mapping[str, str] | None = None
) -> str:
    """Return the GeoJSON text for ``annotations`` (see :func:`write_geojson`)."""
    colors = dict(group_colors or {})
    features = [_dump(_feature(ann, colors), ann) for ann in annotations]
    if not features:
        return '{"type":"FeatureCollection","features":[]}\n'
    return '{"type":"FeatureCollection","features":[\n' + ",\n".join(features) + "\n]}\n"


def _dump(feature: dict[str, Any], ann: Annotation) -> str:
    try:
        return json.dumps(feature, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise AnnotationError(
            f"annotation {ann.name!r}: properties cannot be written as JSON ({exc})"
        ) from exc


def _feature(ann: Annotation, colors: Mapping[str, str]) -> dict[str, Any]:
    extras = dict(ann.properties)
    feature_id = extras.pop("id", None)
    props: dict[str, Any] = {"objectType": extras.pop("objectType", "annotation")}
    if ann.name:
        props["name"] = ann.name
    class_name = ann.group or ann.label
    class_rgb: list[int] | None = None
    if class_name:
        class_rgb = hex_to_rgb(colors.get(class_name)) or hex_to_rgb(ann.color)
        classification: dict[str, Any] = {"name": class_name}
        if class_rgb is not None:
            classification["color"] = class_rgb
        props["classification"] = classification
    own_rgb = hex_to_rgb(ann.color)
    if own_rgb is not None and own_rgb != class_rgb:
        props["color"] = own_rgb
    props["exaslide_label"] = ann.label
    geometry = geometry_to_geojson(ann.source, ann.kind)
    if ann.kind != _KINDS.get(geometry["type"]):
        props["exaslide_kind"] = ann.kind
    for key, value in extras.items():
        props.setdefault(key, value)
    feature: dict[str, Any] = {"type": "Feature"}
    if feature_id is not None:
        feature["id"] = feature_id
    feature["geometry"] = geometry
    feature["properties"] = props
    return feature


def _ring(coords: Iterable[Any]) -> list[list[float]]:
    return [[float(c[0]), float(c[1])] for c in coords]


def geometry_to_geojson(source: BaseGeometry, kind: str) -> dict[str, Any]:
    """GeoJSON geometry for a source geometry; degenerate areas are written as Polygons."""
    if isinstance(source, Polygon):
        if source.is_empty:
            return {"type": "Polygon", "coordinates": []}
        rings = [source.exterior, *source.interiors]
        return {"type": "Polygon", "coordinates": [_ring(r.coords) for r in rings]}
    if isinstance(source, MultiPolygon):
        polys = [geometry_to_geojson(p, kind)["coordinates"] for p in source.geoms]
        return {"type": "MultiPolygon", "coordinates": polys}
    if kind in AREA_KINDS and isinstance(source, LineString | Point):
        pts = [] if source.is_empty else _ring(source.coords)
        return {"type": "Polygon", "coordinates": [[*pts, pts[0]]] if pts else []}
    if isinstance(source, Point):
        return {"type": "Point", "coordinates": [] if source.is_empty else _ring(source.coords)[0]}
    if isinstance(source, MultiPoint):
        return {"type": "MultiPoint", "coordinates": [[p.x, p.y] for p in source.geoms]}
    raise AnnotationError(
        f"cannot write a {source.geom_type} geometry to GeoJSON; "
        "expected Polygon, MultiPolygon, Point or MultiPoint"
    )
