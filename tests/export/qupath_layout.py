"""A checker of QuPath's GeoJSON layout (QuPath >= 0.4, ``PathObjectTypeAdapters``), for
the export tests: what QuPath's File > Import objects expects."""

from __future__ import annotations

import math
import uuid

OBJECT_TYPES = {"annotation", "detection", "tile", "cell", "tmaCore", "root"}
GEOMETRIES = {"Polygon", "MultiPolygon", "Point", "MultiPoint"}


def _position(value, where):
    assert isinstance(value, list) and len(value) == 2, f"{where}: position {value!r}"
    assert all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
               for v in value), f"{where}: position {value!r}"


def _polygon(rings, where):
    assert isinstance(rings, list) and rings, f"{where}: a polygon needs rings"
    for ring in rings:
        assert isinstance(ring, list) and len(ring) >= 4, f"{where}: ring of {len(ring)}"
        for pos in ring:
            _position(pos, where)
        assert ring[0] == ring[-1], f"{where}: ring not closed"


def _geometry(geometry, where):
    assert isinstance(geometry, dict) and geometry.get("type") in GEOMETRIES, where
    coords = geometry["coordinates"]
    if geometry["type"] == "Point":
        _position(coords, where)
    elif geometry["type"] == "MultiPoint":
        for pos in coords:
            _position(pos, where)
    elif geometry["type"] == "Polygon":
        _polygon(coords, where)
    else:
        for poly in coords:
            _polygon(poly, where)


def _classification(value, where):
    assert isinstance(value, dict) and isinstance(value.get("name"), str), where
    assert value["name"], f"{where}: empty class name"
    if "color" in value:
        colour = value["color"]
        assert isinstance(colour, list) and len(colour) == 3, f"{where}: colour {colour!r}"
        assert all(isinstance(c, int) and 0 <= c <= 255 for c in colour), where


def check_layout(data) -> list[dict]:
    """Assert that ``data`` is a FeatureCollection in QuPath's layout; return the
    features."""
    assert isinstance(data, dict) and data.get("type") == "FeatureCollection"
    features = data["features"]
    assert isinstance(features, list)
    ids = set()
    for i, feature in enumerate(features):
        where = f"feature {i}"
        assert feature.get("type") == "Feature", where
        assert str(uuid.UUID(feature["id"])) == feature["id"], f"{where}: id not a UUID"
        ids.add(feature["id"])
        _geometry(feature["geometry"], where)
        props = feature["properties"]
        assert isinstance(props, dict), where
        assert props.get("objectType") in OBJECT_TYPES, f"{where}: {props.get('objectType')}"
        if "classification" in props:
            _classification(props["classification"], where)
        if "measurements" in props:
            m = props["measurements"]
            assert isinstance(m, dict), f"{where}: measurements must be an object"
            assert all(isinstance(k, str) and isinstance(v, int | float)
                       and math.isfinite(v) for k, v in m.items()), where
        if "name" in props:
            assert isinstance(props["name"], str), where
    assert len(ids) == len(features), "feature ids are not unique"
    return features
