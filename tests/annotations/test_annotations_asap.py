"""ASAP XML reader: types, groups, repair, hostile and malformed files (synthetic files)."""

from __future__ import annotations

import logging

import pytest
from shapely.geometry import MultiPoint, Point, Polygon

from exaslide.annotations import EXCLUSION, TUMOUR, read_annotations, read_asap
from exaslide.errors import AnnotationError, HostileXMLError

SQUARE = [(0, 0), (10, 0), (10, 10), (0, 10)]
BOWTIE = [(0, 0), (2, 2), (2, 0), (0, 2)]

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<ASAP_Annotations><Annotations>
<Annotation Name="&lol4;" Type="Polygon" PartOfGroup="_0"><Coordinates /></Annotation>
</Annotations></ASAP_Annotations>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE foo [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<ASAP_Annotations><Annotations>
<Annotation Name="&xxe;" Type="Polygon" PartOfGroup="_0"><Coordinates /></Annotation>
</Annotations></ASAP_Annotations>
"""


PLAIN_DTD = """<?xml version="1.0"?>
<!DOCTYPE ASAP_Annotations SYSTEM "asap.dtd">
<ASAP_Annotations><Annotations /></ASAP_Annotations>
"""


def test_reads_polygon_with_groups_and_colour(asap_file) -> None:
    groups = '<Group Name="_0" PartOfGroup="None" Color="#00ff00"><Attributes /></Group>'
    path = asap_file([("_0", SQUARE, "_0"), ("_1", SQUARE, "_2")], groups=groups)
    result = read_asap(path)
    assert result.format == "asap" and result.path == str(path)
    assert [(a.name, a.group, a.label, a.kind) for a in result] == [
        ("_0", "_0", TUMOUR, "polygon"),
        ("_1", "_2", EXCLUSION, "polygon"),
    ]
    assert result[0].color == "#F4FA58"
    assert result.group_colors == {"_0": "#00ff00"}
    assert result[0].geometry.area == 100
    assert result.repairs == []


def test_coordinates_sorted_by_order_and_comma_decimals(write_file) -> None:
    xml = """<ASAP_Annotations><Annotations>
    <Annotation Name="a" Type="Polygon" PartOfGroup="_0"><Coordinates>
      <Coordinate Order="2" X="10" Y="10,5" />
      <Coordinate Order="0" X="0" Y="0" />
      <Coordinate Order="3" X="0" Y="10,5" />
      <Coordinate Order="1" X="10,25" Y="0" />
    </Coordinates></Annotation></Annotations></ASAP_Annotations>"""
    result = read_annotations(write_file("order.xml", xml))
    assert list(result[0].source.exterior.coords)[:4] == [
        (0.0, 0.0),
        (10.25, 0.0),
        (10.0, 10.5),
        (0.0, 10.5),
    ]
    assert result[0].geometry.is_valid


def test_spline_control_points_are_polygon_vertices(asap_file) -> None:
    pts = [(0, 0), (5, -1), (10, 0), (11, 5), (10, 10), (0, 10)]
    result = read_asap(asap_file([("s", pts, "metastasis", "Spline")]))
    ann = result[0]
    assert ann.kind == "spline" and ann.label == TUMOUR and ann.is_area
    assert list(ann.source.exterior.coords)[:-1] == [(float(x), float(y)) for x, y in pts]


def test_rectangle_two_or_four_corners(asap_file) -> None:
    path = asap_file(
        [
            ("r2", [(1, 2), (5, 8)], "_0", "Rectangle"),
            ("r4", [(0, 0), (4, 0), (4, 4), (0, 4)], "_0", "Rectangle"),
        ]
    )
    r2, r4 = read_asap(path)
    assert r2.kind == "rectangle" and r2.geometry.bounds == (1.0, 2.0, 5.0, 8.0)
    assert r2.geometry.area == 24
    assert r4.geometry.area == 16


def test_dot_and_pointset(asap_file) -> None:
    path = asap_file(
        [("d", [(3, 4)], "_0", "Dot"), ("ps", [(1, 1), (2, 2), (3, 3)], "cells", "PointSet")]
    )
    dot, pointset = read_asap(path)
    assert dot.kind == "dot" and isinstance(dot.geometry, Point) and not dot.is_area
    assert (dot.geometry.x, dot.geometry.y) == (3.0, 4.0)
    assert pointset.kind == "pointset" and isinstance(pointset.geometry, MultiPoint)
    assert len(pointset.geometry.geoms) == 3


def test_group_none_means_no_group(asap_file) -> None:
    result = read_asap(asap_file([("x", SQUARE, "None")]))
    assert result[0].group == "" and result[0].label == ""
    assert result.unmapped_groups() == set()


def test_metastases_group_is_tumour(asap_file) -> None:
    result = read_annotations(asap_file([("Annotation 0", SQUARE, "metastases")]))
    assert result[0].label == TUMOUR
    assert result.labels() == {TUMOUR: 1}


def test_user_label_map_and_unmapped_group(asap_file) -> None:
    path = asap_file([("a", SQUARE, "Carcinoma_in_situ"), ("b", SQUARE, "Stroma")])
    default = read_annotations(path)
    assert default.unmapped_groups() == {"Carcinoma_in_situ", "Stroma"}
    mapped = read_annotations(path, label_map={"carcinoma_in_situ": "tumour"})
    assert [a.label for a in mapped] == [TUMOUR, "stroma"]
    assert [a.group for a in mapped] == ["Carcinoma_in_situ", "Stroma"]
    assert mapped.unmapped_groups() == {"Stroma"}


def test_user_label_map_overrides_default(asap_file) -> None:
    path = asap_file([("a", SQUARE, "_1")])
    assert read_annotations(path)[0].label == TUMOUR
    assert read_annotations(path, label_map={"_1": "exclusion"})[0].label == EXCLUSION


def test_bowtie_is_repaired_and_reported(asap_file, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="exaslide.annotations"):
        result = read_asap(asap_file([("bow", BOWTIE, "_0")]))
    ann = result[0]
    assert ann.geometry.is_valid and ann.repaired
    assert ann.geometry.area == pytest.approx(2.0)
    assert not ann.source.is_valid  # the stored vertices are kept
    assert len(result.repairs) == 1
    record = result.repairs[0]
    assert (record.index, record.name, record.group, record.action) == (
        0,
        "bow",
        "_0",
        "make_valid",
    )
    assert "Self-intersection" in record.problem
    assert "repaired with make_valid" in caplog.text


def test_two_vertex_and_empty_polygons_are_dropped(asap_file) -> None:
    path = asap_file([("ok", SQUARE, "_0"), ("two", [(0, 0), (5, 5)], "_0"), ("none", [], "_2")])
    result = read_asap(path)
    assert len(result) == 3
    assert result[1].geometry.is_empty and result[2].geometry.is_empty
    assert [(r.index, r.name, r.problem, r.action) for r in result.repairs] == [
        (1, "two", "fewer than 3 distinct vertices", "dropped"),
        (2, "none", "empty", "dropped"),
    ]
    assert result.union(TUMOUR).area == 100


def test_empty_annotations_file_is_an_empty_set(write_file) -> None:
    for name, xml in [
        ("e1.xml", "<ASAP_Annotations><Annotations /></ASAP_Annotations>"),
        ("e2.xml", '<?xml version="1.0"?><ASAP_Annotations />'),
    ]:
        result = read_annotations(write_file(name, xml))
        assert len(result) == 0 and result.repairs == [] and result.format == "asap"


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY, PLAIN_DTD])
def test_hostile_xml_is_refused(write_file, text: str) -> None:
    path = write_file("hostile.xml", text)
    with pytest.raises(HostileXMLError, match=r"hostile\.xml"):
        read_annotations(path)


def test_truncated_xml_names_file_and_line(asap_file) -> None:
    path = asap_file([("a", SQUARE), ("b", SQUARE)], name="cut.xml")
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"cut\.xml:\d+") as info:
        read_asap(path)
    assert not isinstance(info.value, HostileXMLError)
    assert "malformed XML" in str(info.value)


def test_non_numeric_coordinate_names_annotation(asap_file) -> None:
    path = asap_file([("good", SQUARE), ("Lesion 7", [(0, 0), ("abc", 1), (2, 2)])])
    with pytest.raises(AnnotationError, match=r"Lesion 7.*'abc'"):
        read_asap(path)


def test_non_finite_coordinate_is_an_error(asap_file) -> None:
    path = asap_file([("nanny", [(0, 0), ("nan", 1), (2, 2)])])
    with pytest.raises(AnnotationError, match=r"nanny.*finite"):
        read_asap(path)


def test_wrong_root_is_an_error(write_file) -> None:
    path = write_file("other.xml", "<Annotations><Annotation Name='x' /></Annotations>")
    with pytest.raises(AnnotationError, match="ASAP_Annotations"):
        read_asap(path)


def test_missing_file_is_an_annotation_error(tmp_path) -> None:
    with pytest.raises(AnnotationError, match="not found"):
        read_asap(tmp_path / "missing.xml")


def test_unsupported_type_is_skipped_and_recorded(asap_file) -> None:
    path = asap_file([("ruler", [(0, 0), (9, 9)], "_0", "Measurement"), ("ok", SQUARE)])
    result = read_asap(path)
    assert [a.name for a in result] == ["ok"]
    assert result.repairs[0].name == "ruler" and result.repairs[0].action == "dropped"
    assert "Measurement" in result.repairs[0].problem


def test_polygon_with_closing_vertex_keeps_vertices(asap_file) -> None:
    closed = [*SQUARE, SQUARE[0]]
    result = read_asap(asap_file([("c", closed)]))
    assert isinstance(result[0].source, Polygon)
    assert len(result[0].source.exterior.coords) == 5
    assert not result[0].repaired
