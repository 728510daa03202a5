"""QuPath GeoJSON reader (synthetic files)."""

from __future__ import annotations

import json
import logging

import pytest
from shapely.geometry import MultiPoint, MultiPolygon, Point, Polygon

from exaslide.annotations import EXCLUSION, TUMOUR, read_annotations, read_geojson
from exaslide.errors import AnnotationError

SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
HOLE = [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]


def _feature(geometry, **props) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _write(write_file, data, name: str = "a.geojson"):
    return write_file(name, json.dumps(data))


def test_feature_collection_with_qupath_properties(write_file) -> None:
    data = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "uuid-1",
                "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
                "properties": {
                    "objectType": "annotation",
                    "name": "lesion",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "isLocked": True,
                },
            },
            _feature({"type": "Point", "coordinates": [5, 6]}, objectType="annotation"),
            _feature(
                {"type": "MultiPoint", "coordinates": [[1, 1], [2, 2]]},
                objectType="detection",
                classification={"name": "Ignore*"},
                measurements={"area": 3.5},
            ),
        ],
    }
    result = read_geojson(_write(write_file, data))
    lesion, dot, cells = result
    assert (lesion.name, lesion.group, lesion.label, lesion.kind) == (
        "lesion",
        "Tumor",
        TUMOUR,
        "polygon",
    )
    assert lesion.color == "#c80000"
    assert lesion.properties == {"objectType": "annotation", "isLocked": True, "id": "uuid-1"}
    assert result.group_colors == {"Tumor": "#c80000"}
    assert (dot.group, dot.label, dot.name, dot.kind) == ("", "", "", "point")
    assert isinstance(dot.geometry, Point)
    assert cells.kind == "pointset" and isinstance(cells.geometry, MultiPoint)
    assert cells.label == EXCLUSION
    assert cells.properties["measurements"] == {"area": 3.5}


def test_bare_list_and_single_feature(write_file) -> None:
    feat = _feature({"type": "Polygon", "coordinates": [SQUARE]}, classification={"name": "x"})
    assert len(read_geojson(_write(write_file, [feat, feat], "list.geojson"))) == 2
    assert len(read_geojson(_write(write_file, feat, "one.geojson"))) == 1


def test_multipolygon_with_hole_keeps_hole(write_file) -> None:
    far = [[20, 20], [30, 20], [30, 30], [20, 30], [20, 20]]
    geometry = {"type": "MultiPolygon", "coordinates": [[SQUARE, HOLE], [far]]}
    result = read_geojson(_write(write_file, [_feature(geometry)]))
    ann = result[0]
    assert ann.kind == "multipolygon" and ann.is_area
    assert isinstance(ann.geometry, MultiPolygon)
    assert ann.geometry.area == pytest.approx(100 - 4 + 100)
    first = ann.geometry.geoms[0]
    assert len(first.interiors) == 1
    assert not ann.geometry.contains(Point(3, 3))
    assert not ann.repaired


def test_polygon_with_hole(write_file) -> None:
    result = read_geojson(
        _write(write_file, [_feature({"type": "Polygon", "coordinates": [SQUARE, HOLE]})])
    )
    assert isinstance(result[0].geometry, Polygon)
    assert result[0].geometry.area == pytest.approx(96)


def test_linestring_is_skipped_and_counted(write_file, caplog: pytest.LogCaptureFixture) -> None:
    features = [
        _feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, name="ruler"),
        _feature({"type": "Polygon", "coordinates": [SQUARE]}, name="area"),
    ]
    with caplog.at_level(logging.WARNING, logger="exaslide.annotations"):
        result = read_geojson(_write(write_file, features))
    assert [a.name for a in result] == ["area"]
    assert len(result.repairs) == 1
    record = result.repairs[0]
    assert (record.index, record.name, record.action) == (0, "ruler", "dropped")
    assert "LineString" in record.problem
    assert "LineString" in caplog.text


def test_geometry_collection_is_expanded(write_file) -> None:
    geometry = {
        "type": "GeometryCollection",
        "geometries": [
            {"type": "Polygon", "coordinates": [SQUARE]},
            {"type": "Point", "coordinates": [50, 50]},
        ],
    }
    result = read_geojson(_write(write_file, [_feature(geometry, name="gc")]))
    assert [(a.name, a.kind) for a in result] == [("gc", "polygon"), ("gc", "point")]


def test_invalid_polygon_is_repaired(write_file) -> None:
    bowtie = [[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]
    result = read_geojson(
        _write(write_file, [_feature({"type": "Polygon", "coordinates": [bowtie]})])
    )
    assert result[0].geometry.is_valid
    assert result[0].geometry.area == pytest.approx(2.0)
    assert result.repairs[0].action == "make_valid"


def test_json_with_positive_key_goes_to_ncrf_not_geojson(write_file) -> None:
    path = write_file("n.json", json.dumps({"positive": [], "negative": []}))
    assert read_annotations(path).format == "ncrf"
    path = write_file("g.json", json.dumps([_feature({"type": "Point", "coordinates": [1, 2]})]))
    assert read_annotations(path).format == "geojson"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"type": "FeatureCollection", "features": [', r"bad\.geojson:1"),
        ('{"type": "Topology"}', "FeatureCollection"),
        (
            json.dumps([_feature({"type": "Point", "coordinates": ["a", 1]})]),
            "feature 0",
        ),
        (
            '[{"type": "Feature", "properties": {}, '
            '"geometry": {"type": "Point", "coordinates": [NaN, 1]}}]',
            "finite",
        ),
    ],
)
def test_bad_geojson_errors(write_file, text: str, match: str) -> None:
    with pytest.raises(AnnotationError, match=match):
        read_geojson(write_file("bad.geojson", text))
