"""Vertex-table (CSV/TXT/TSV) and NCRF JSON readers (synthetic files)."""

from __future__ import annotations

import json

import pytest
from shapely.geometry import MultiPoint, Point, Polygon

from exaslide.annotations import EXCLUSION, TUMOUR, read_annotations, read_ncrf, read_table
from exaslide.errors import AnnotationError

CSV_TEXT = """annotation,label,x,y,type
lesion-1,tumour,0,0,polygon
lesion-1,tumour,10,0,polygon
lesion-1,tumour,10,10,polygon
lesion-1,tumour,0,10,polygon
cell-7,lymphocyte,40.5,41,point
cells,_2,1,1,point
cells,_2,2,2,point
"""


def test_csv_points_and_polygons(write_file) -> None:
    result = read_annotations(write_file("t.csv", CSV_TEXT))
    assert result.format == "table"
    lesion, cell, cells = result
    assert (lesion.name, lesion.group, lesion.label, lesion.kind) == (
        "lesion-1",
        "tumour",
        TUMOUR,
        "polygon",
    )
    assert isinstance(lesion.geometry, Polygon) and lesion.geometry.area == 100
    assert cell.kind == "point" and isinstance(cell.geometry, Point)
    assert (cell.geometry.x, cell.geometry.y) == (40.5, 41.0)
    assert cell.label == "lymphocyte"
    assert cells.kind == "pointset" and isinstance(cells.geometry, MultiPoint)
    assert cells.label == EXCLUSION


def test_txt_whitespace_without_type_column(write_file) -> None:
    text = "Annotation  Label X Y\n\nA tumor 0 0\nA tumor 4 0\nA tumor 4 3,5\nB other 7 8\n"
    result = read_table(write_file("t.txt", text))
    assert [(a.name, a.kind, a.label) for a in result] == [
        ("A", "polygon", TUMOUR),
        ("B", "point", "other"),
    ]
    assert result[0].geometry.area == pytest.approx(7.0)  # decimal comma accepted in .txt


def test_tsv_tab_separated_with_spaces_in_names(write_file) -> None:
    text = (
        "x\ty\tannotation\tlabel\n0\t0\tmy lesion\t_0\n5\t0\tmy lesion\t_0\n5\t5\tmy lesion\t_0\n"
    )
    result = read_table(write_file("t.tsv", text))
    assert result[0].name == "my lesion" and result[0].geometry.area == 12.5


def test_rows_of_one_id_need_not_be_adjacent(write_file) -> None:
    text = "annotation,label,x,y\na,_0,0,0\nb,_0,9,9\na,_0,1,0\na,_0,1,1\n"
    result = read_table(write_file("t.csv", text))
    assert [a.name for a in result] == ["a", "b"]
    assert result[0].geometry.area == 0.5


def test_degenerate_table_polygon_is_dropped(write_file) -> None:
    text = "annotation,label,x,y,type\na,_0,0,0,polygon\n"
    result = read_table(write_file("t.csv", text))
    assert result[0].geometry.is_empty
    assert result.repairs[0].action == "dropped"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("annotation,label,x,y\na,_0,1,2\na,_0,abc,3\n", r"t\.csv:3: x value 'abc'"),
        ("annotation,label,x,y\na,_0,1\n", r"t\.csv:2: expected 4 fields"),
        ("annotation,label,x,y,type\na,_0,1,2,circle\n", r"t\.csv:2: type 'circle'"),
        ("annotation,label,x,y\na,_0,1,2\na,_2,3,4\n", r"t\.csv:3: annotation 'a'"),
        ("annotation,label,x,y\n,_0,1,2\n", r"t\.csv:2: empty annotation id"),
        ("annotation,label,x,y\na,_0,inf,2\n", r"t\.csv:2: x value 'inf' is not a finite"),
        ("name,x,y\na,1,2\n", r"t\.csv:1: header"),
        ("", "empty table"),
    ],
)
def test_bad_table_rows_name_file_and_line(write_file, text: str, match: str) -> None:
    with pytest.raises(AnnotationError, match=match):
        read_table(write_file("t.csv", text))


def test_ncrf_positive_and_negative(write_file) -> None:
    data = {
        "positive": [
            {"name": "_0", "vertices": [[0, 0], [10, 0], [10, 10], [0, 10]]},
            {"name": "_1", "vertices": [[20, 20], [30, 20], [30, 30]]},
        ],
        "negative": [{"name": "Annotation 2", "vertices": [[2, 2], [4, 2], [4, 4]]}],
    }
    result = read_annotations(write_file("n.json", json.dumps(data)))
    assert result.format == "ncrf"
    assert [(a.name, a.group, a.label) for a in result] == [
        ("_0", "positive", TUMOUR),
        ("_1", "positive", TUMOUR),
        ("Annotation 2", "negative", EXCLUSION),
    ]
    assert result.union(TUMOUR).area == 150
    assert result.union(EXCLUSION).area == 2


def test_ncrf_errors(write_file) -> None:
    bad = {"positive": [{"name": "p", "vertices": [[0, 0], [1, "x"], [2, 2]]}]}
    with pytest.raises(AnnotationError, match=r"positive\[0\] \('p'\)"):
        read_ncrf(write_file("n.json", json.dumps(bad)))
    with pytest.raises(AnnotationError, match="NCRF"):
        read_ncrf(write_file("g.json", json.dumps({"type": "FeatureCollection"})))
    with pytest.raises(AnnotationError, match="positive"):
        read_annotations(write_file("n2.json", json.dumps({"positive": 3})))


def test_explicit_table_format_with_other_suffix(write_file) -> None:
    path = write_file("vertices.dat", 'annotation,label,x,y\np,_0,"1,5",2\n')
    with pytest.raises(AnnotationError, match="suffix"):
        read_annotations(path)
    result = read_annotations(path, format="table")
    assert (result[0].geometry.x, result[0].geometry.y) == (1.5, 2.0)
