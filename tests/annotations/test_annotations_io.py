"""Format dispatch, writers, synthetic round trips and atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import shapely
from shapely.geometry import LineString, MultiPoint, MultiPolygon, Point, Polygon, box

from exaslide.annotations import (
    EXCLUSION,
    TUMOUR,
    Annotation,
    AnnotationSet,
    read_annotations,
    write_annotations,
)
from exaslide.errors import AnnotationError

SQUARE = [(0, 0), (10, 0), (10, 10), (0, 10)]
BOWTIE = [(0.1, 0.2), (2.000000001, 2.3), (2.7, 0.1), (1e-7, 2.123456789012)]


def _ann(source, *, name="a", group="_0", label=TUMOUR, kind="polygon", color=None, props=None):
    return Annotation(
        geometry=source,
        label=label,
        group=group,
        name=name,
        kind=kind,
        source=source,
        color=color,
        properties=props or {},
    )


def _key(aset) -> list:
    return [(a.name, a.group, a.label, shapely.get_coordinates(a.source).tolist()) for a in aset]


def _sample(asap_file) -> AnnotationSet:
    groups = '<Group Name="_0" PartOfGroup="None" Color="#00ff00"><Attributes /></Group>'
    return read_annotations(
        asap_file(
            [
                ("lesion", [(0.1, 0.25), (100.5, 0.3333333333333333), (100, 100.1), (0, 100)]),
                ("bow", BOWTIE, "_0"),
                ("hole", [(10, 10), (20, 10), (20, 20), (10, 20)], "_2"),
                ("spl", [(1, 1), (5, 1), (5, 5)], "metastasis", "Spline"),
                ("dot", [(7.5, 8.5)], "Stroma", "Dot"),
                ("pts", [(1, 2), (3, 4)], "cells", "PointSet"),
                ("two", [(0, 0), (1, 1)], "_0"),
            ],
            groups=groups,
        )
    )


@pytest.mark.parametrize("suffix", [".xml", ".geojson", ".json", ".csv", ".txt", ".tsv"])
def test_round_trip_by_suffix_is_exact(asap_file, tmp_path: Path, suffix: str) -> None:
    original = _sample(asap_file)
    out = write_annotations(original, tmp_path / f"out{suffix}")
    assert out == tmp_path / f"out{suffix}"
    again = read_annotations(out)
    assert _key(again) == _key(original)
    assert [r.action for r in again.repairs] == [r.action for r in original.repairs]


@pytest.mark.parametrize("suffix", [".xml", ".geojson"])
def test_round_trip_keeps_kind_and_colours(asap_file, tmp_path: Path, suffix: str) -> None:
    original = _sample(asap_file)
    again = read_annotations(write_annotations(original, tmp_path / f"out{suffix}"))
    assert [a.kind for a in again] == [a.kind for a in original]
    assert again.group_colors["_0"].lower() == "#00ff00"


def test_asap_to_geojson_to_asap(asap_file, tmp_path: Path) -> None:
    original = _sample(asap_file)
    middle = read_annotations(write_annotations(original, tmp_path / "mid.geojson"))
    final = read_annotations(write_annotations(middle, tmp_path / "final.xml"))
    assert _key(final) == _key(original)
    assert [a.kind for a in final] == [a.kind for a in original]


def test_geojson_writer_properties(tmp_path: Path) -> None:
    anns = [
        _ann(box(0, 0, 1, 1), name="n", color="#ff0000", props={"objectType": "cell", "k": 1}),
        _ann(Point(3, 4), name="", group="", label="", kind="dot"),
    ]
    path = write_annotations(anns, tmp_path / "w.geojson")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["type"] == "FeatureCollection"
    first, second = (f["properties"] for f in data["features"])
    assert first["objectType"] == "cell" and first["k"] == 1 and first["name"] == "n"
    assert first["classification"] == {"name": "_0", "color": [255, 0, 0]}
    assert first["exaslide_label"] == TUMOUR
    assert second["objectType"] == "annotation" and "classification" not in second
    assert second["exaslide_kind"] == "dot"
    assert data["features"][1]["geometry"] == {"type": "Point", "coordinates": [3.0, 4.0]}


def test_user_label_survives_geojson_round_trip(write_file, tmp_path: Path) -> None:
    xml = (
        '<ASAP_Annotations><Annotations><Annotation Name="c" Type="Polygon" '
        'PartOfGroup="CIS"><Coordinates><Coordinate Order="0" X="0" Y="0" />'
        '<Coordinate Order="1" X="1" Y="0" /><Coordinate Order="2" X="1" Y="1" />'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    mapped = read_annotations(write_file("cis.xml", xml), label_map={"CIS": "tumour"})
    again = read_annotations(write_annotations(mapped, tmp_path / "cis.geojson"))
    assert again[0].group == "CIS" and again[0].label == TUMOUR


def test_asap_writer_splits_holes_and_parts(tmp_path: Path) -> None:
    holed = Polygon(SQUARE, [[(2, 2), (4, 2), (4, 4), (2, 4)]])
    multi = MultiPolygon([box(20, 20, 30, 30), box(40, 40, 50, 50)])
    path = write_annotations([_ann(holed, name="h"), _ann(multi, name="m")], tmp_path / "w.xml")
    text = path.read_text(encoding="utf-8")
    assert 'Name="h hole 1"' in text and 'Name="m#1"' in text and 'Name="m#2"' in text
    again = read_annotations(path)
    assert [(a.name, a.group, a.label) for a in again] == [
        ("h", "_0", TUMOUR),
        ("h hole 1", "_2", EXCLUSION),
        ("m#1", "_0", TUMOUR),
        ("m#2", "_0", TUMOUR),
    ]
    lesion = again.union(TUMOUR).difference(again.union(EXCLUSION))
    assert lesion.area == pytest.approx(holed.area + multi.area)
    assert '<Group Name="_2"' in text


def test_asap_and_table_writers_refuse_holes_outside_tumour(tmp_path: Path) -> None:
    """A hole in a stroma polygon cannot become a `_2` exclusion: that would erase any
    tumour drawn inside it. The writers refuse and leave no file."""
    holed = Polygon(SQUARE, [[(2, 2), (4, 2), (4, 4), (2, 4)]])
    stroma = Annotation(geometry=holed, label="stroma", group="Stroma", name="s",
                        kind="polygon", source=holed)
    for name in ("w.xml", "w.csv"):
        with pytest.raises(AnnotationError, match="holes"):
            write_annotations([stroma], tmp_path / name)
        assert not (tmp_path / name).exists()
    assert not list(tmp_path.iterdir())


def test_geojson_writer_keeps_holes(tmp_path: Path) -> None:
    holed = Polygon(SQUARE, [[(2, 2), (4, 2), (4, 4), (2, 4)]])
    multi = MultiPolygon([holed, box(20, 20, 30, 30)])
    again = read_annotations(
        write_annotations([_ann(multi, kind="multipolygon")], tmp_path / "w.geojson")
    )
    assert again[0].kind == "multipolygon"
    assert again[0].source.equals_exact(multi, 0)


def test_degenerate_sources_round_trip(tmp_path: Path) -> None:
    anns = [
        _ann(LineString([(0, 0), (1, 1)]), name="line"),
        _ann(Point(5, 5), name="single"),
        _ann(Polygon(), name="empty"),
        _ann(MultiPoint([(1, 1), (2, 2)]), name="mp", kind="pointset"),
    ]
    for suffix in (".xml", ".geojson"):
        again = read_annotations(write_annotations(anns, tmp_path / f"d{suffix}"))
        assert [a.name for a in again] == ["line", "single", "empty", "mp"]
        assert [a.source.geom_type for a in again] == [
            "LineString",
            "Point",
            "Polygon",
            "MultiPoint",
        ]
        assert [r.action for r in again.repairs] == ["dropped"] * 3


def test_format_argument_overrides_suffix(asap_file, tmp_path: Path) -> None:
    original = _sample(asap_file)
    path = write_annotations(original, tmp_path / "data.annot", format="geojson")
    assert json.loads(path.read_text(encoding="utf-8"))["type"] == "FeatureCollection"
    assert read_annotations(path, format="geojson").format == "geojson"
    with pytest.raises(AnnotationError, match="suffix"):
        read_annotations(path)
    with pytest.raises(AnnotationError, match="unknown annotation format"):
        read_annotations(path, format="dicom")
    with pytest.raises(AnnotationError, match="not supported"):
        write_annotations(original, tmp_path / "x.json", format="ncrf")


def test_label_map_file_argument(asap_file, tmp_path: Path) -> None:
    path = asap_file([("a", SQUARE, "DCIS")])
    mapping = tmp_path / "labels.csv"
    mapping.write_text("group,label\nDCIS,tumour\n", encoding="utf-8")
    assert read_annotations(path, label_map=mapping)[0].label == TUMOUR


def test_write_is_atomic_and_leaves_no_temp_file(asap_file, tmp_path: Path) -> None:
    original = _sample(asap_file)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for suffix in (".xml", ".geojson", ".csv"):
        write_annotations(original, out_dir / f"a{suffix}")
        write_annotations(original, out_dir / f"a{suffix}")  # overwrite
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.csv", "a.geojson", "a.xml"]


def test_failed_write_keeps_old_file_and_removes_temp(
    asap_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = _sample(asap_file)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "a.xml"
    target.write_text("old", encoding="utf-8")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(AnnotationError, match="disk full"):
        write_annotations(original, target)
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in out_dir.iterdir()] == ["a.xml"]


def test_table_writer_ids(tmp_path: Path) -> None:
    anns = [
        _ann(box(0, 0, 1, 1), name=""),
        _ann(box(0, 0, 2, 2), name="dup"),
        _ann(box(0, 0, 3, 3), name="dup"),
        _ann(Point(1, 1), name="#p", kind="point"),
    ]
    again = read_annotations(write_annotations(anns, tmp_path / "t.csv"))
    assert [a.name for a in again] == ["annotation_0", "dup#1", "dup#2", "#p"]
    assert [round(a.geometry.area) for a in again] == [1, 4, 9, 0]
