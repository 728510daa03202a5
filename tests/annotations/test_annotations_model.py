"""Label mapping, geometry repair and the AnnotationSet container."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from shapely.geometry import LineString, MultiPoint, MultiPolygon, Point, Polygon, box

from exaslide.annotations import (
    DEFAULT_LABEL_MAP,
    EXCLUSION,
    TUMOUR,
    Annotation,
    AnnotationSet,
    load_label_map,
    map_label,
    merge_label_map,
    repair_geometry,
)
from exaslide.annotations.model import AnnotationDraft, build_annotation_set
from exaslide.errors import AnnotationError

BOWTIE = [(0.0, 0.0), (2.0, 2.0), (2.0, 0.0), (0.0, 2.0)]


def _ann(geom, label: str, *, kind: str = "polygon", group: str | None = None) -> Annotation:
    return Annotation(
        geometry=geom,
        label=label,
        group=label if group is None else group,
        name="",
        kind=kind,
        source=geom,
    )


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("group", "label"),
    [
        ("_0", TUMOUR),
        ("_1", TUMOUR),
        ("Tumor", TUMOUR),
        ("TUMOUR", TUMOUR),
        ("metastases", TUMOUR),
        ("Metastasis", TUMOUR),
        ("positive", TUMOUR),
        ("Carcinoma", TUMOUR),
        ("_2", EXCLUSION),
        ("Exclusion", EXCLUSION),
        ("negative", EXCLUSION),
        ("Ignore", EXCLUSION),
        ("Ignore*", EXCLUSION),
    ],
)
def test_default_label_map(group: str, label: str) -> None:
    assert map_label(group) == label
    assert DEFAULT_LABEL_MAP[group.lower()] == label


def test_unmapped_group_is_lower_cased_and_empty_stays_empty() -> None:
    assert map_label("Stroma") == "stroma"
    assert map_label("") == ""


def test_merge_label_map_user_wins_case_insensitive() -> None:
    merged = merge_label_map({"Carcinoma_In_Situ": "Tumour", "_1": "exclusion"})
    assert merged["carcinoma_in_situ"] == TUMOUR
    assert merged["_1"] == EXCLUSION
    assert merged["_0"] == TUMOUR
    assert "carcinoma_in_situ" not in DEFAULT_LABEL_MAP  # defaults untouched


def test_load_label_map_csv_and_json(tmp_path: Path) -> None:
    csv_path = tmp_path / "map.csv"
    csv_path.write_text("group,label\nCIS,tumour\nNecrosis,exclusion\n", encoding="utf-8")
    assert load_label_map(csv_path) == {"cis": TUMOUR, "necrosis": EXCLUSION}
    json_path = tmp_path / "map.json"
    json_path.write_text(json.dumps({"DCIS": "tumor"}), encoding="utf-8")
    assert load_label_map(json_path) == {"dcis": TUMOUR}


def test_load_label_map_requires_header(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_text("CIS,tumour\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="group,label"):
        load_label_map(path)


def test_load_label_map_rejects_non_object_json(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(AnnotationError, match="JSON object"):
        load_label_map(path)


# --------------------------------------------------------------------------- repair


def test_repair_bowtie_gives_two_triangles() -> None:
    geom, problem, action = repair_geometry(Polygon(BOWTIE), "polygon")
    assert action == "make_valid"
    assert problem is not None and problem.startswith("Self-intersection")
    assert geom.is_valid
    assert isinstance(geom, MultiPolygon)
    assert len(geom.geoms) == 2
    assert geom.area == pytest.approx(2.0)


def test_repair_uses_structure_method_for_a_hole_crossing_the_shell() -> None:
    # "structure" subtracts the hole from the shell (75); "linework" would give 150.
    crossing = Polygon(box(0, 0, 10, 10).exterior.coords, [box(5, 5, 15, 15).exterior.coords])
    geom, _problem, action = repair_geometry(crossing, "polygon")
    assert action == "make_valid" and geom.is_valid
    assert geom.area == pytest.approx(75.0)


def test_repair_valid_polygon_is_untouched() -> None:
    square = box(0, 0, 1, 1)
    geom, problem, action = repair_geometry(square, "polygon")
    assert geom is square
    assert problem is None and action is None


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (LineString([(0, 0), (1, 1)]), "fewer than 3 distinct vertices"),
        (Point(1, 1), "fewer than 3 distinct vertices"),
        (Polygon([(0, 0), (0, 0), (0, 0)]), "fewer than 3 distinct vertices"),
        (Polygon(), "empty"),
    ],
)
def test_repair_drops_degenerate(source, problem: str) -> None:
    geom, found, action = repair_geometry(source, "polygon")
    assert geom.is_empty and isinstance(geom, Polygon)
    assert (found, action) == (problem, "dropped")


def test_repair_drops_zero_area_collinear() -> None:
    geom, problem, action = repair_geometry(Polygon([(0, 0), (1, 0), (2, 0)]), "polygon")
    assert geom.is_empty
    assert action == "dropped"
    assert problem


def test_points_are_not_repaired() -> None:
    pts = MultiPoint([(0, 0), (0, 0)])
    assert repair_geometry(pts, "pointset") == (pts, None, None)
    assert repair_geometry(Point(), "dot")[2] == "dropped"


def test_build_annotation_set_records_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    drafts = [
        AnnotationDraft(0, Polygon(BOWTIE), "polygon", "_0", "bow"),
        AnnotationDraft(1, LineString([(0, 0), (5, 5)]), "polygon", "_2", "line"),
        AnnotationDraft(2, box(0, 0, 3, 3), "polygon", "stroma", "ok"),
    ]
    with caplog.at_level(logging.WARNING, logger="exaslide.annotations"):
        result = build_annotation_set(drafts, path="x.xml", format="asap")
    assert [(r.index, r.name, r.action) for r in result.repairs] == [
        (0, "bow", "make_valid"),
        (1, "line", "dropped"),
    ]
    assert "1 annotation geometry repaired with make_valid, 1 dropped" in caplog.text
    assert [a.repaired for a in result] == [True, True, False]
    assert [a.label for a in result] == [TUMOUR, EXCLUSION, "stroma"]
    assert all(a.geometry.is_valid for a in result)


def test_label_hint_used_only_for_unmapped_groups() -> None:
    drafts = [
        AnnotationDraft(0, box(0, 0, 1, 1), "polygon", "CIS", "a", label=TUMOUR),
        AnnotationDraft(1, box(0, 0, 1, 1), "polygon", "_2", "b", label=TUMOUR),
    ]
    result = build_annotation_set(drafts, path=None, format="geojson")
    assert [a.label for a in result] == [TUMOUR, EXCLUSION]


def test_negative_coordinates_are_kept_and_noted(caplog: pytest.LogCaptureFixture) -> None:
    drafts = [AnnotationDraft(0, box(-5, -5, 1, 1), "polygon", "_0", "edge")]
    with caplog.at_level(logging.WARNING, logger="exaslide.annotations"):
        result = build_annotation_set(drafts, path="neg.xml", format="asap")
    assert result[0].geometry.bounds == (-5.0, -5.0, 1.0, 1.0)
    assert "negative coordinates" in caplog.text


# --------------------------------------------------------------------------- containers


def test_annotation_properties_and_hash() -> None:
    area = _ann(box(0, 0, 1, 1), TUMOUR)
    dot = _ann(Point(1, 2), TUMOUR, kind="dot")
    assert area.is_area and not dot.is_area
    assert not area.repaired
    assert hash(area) == hash(_ann(box(0, 0, 1, 1), TUMOUR))
    with pytest.raises(AttributeError):
        area.label = "x"  # type: ignore[misc]


def test_annotation_set_queries() -> None:
    anns = [
        _ann(box(0, 0, 10, 10), TUMOUR, group="_0"),
        _ann(box(5, 5, 20, 20), TUMOUR, group="Tumor"),
        _ann(box(2, 2, 4, 4), EXCLUSION, group="_2"),
        _ann(Point(100, 100), TUMOUR, kind="dot", group="_0"),
        _ann(box(50, 50, 60, 60), "stroma", group="Stroma"),
        _ann(Polygon(), TUMOUR, group="_0"),
    ]
    aset = AnnotationSet(annotations=anns, path="p", format="asap")
    assert len(aset) == 6
    assert aset[2].label == EXCLUSION
    assert list(aset)[4].group == "Stroma"
    assert isinstance(aset[1:3], AnnotationSet) and len(aset[1:3]) == 2
    assert aset.labels() == {TUMOUR: 4, EXCLUSION: 1, "stroma": 1}
    assert len(aset.select(TUMOUR)) == 4
    assert len(aset.select("tumor", EXCLUSION)) == 5  # "tumor" is an alias of "tumour"
    tumour = aset.union(TUMOUR)
    assert tumour.area == pytest.approx(100 + 225 - 25)  # the dot is ignored
    assert aset.union().area == pytest.approx(300 + 100)
    assert aset.union("nothing").is_empty and isinstance(aset.union("nothing"), Polygon)
    assert aset.bounds() == (0.0, 0.0, 100.0, 100.0)
    assert aset.unmapped_groups() == {"Stroma"}


def test_empty_annotation_set() -> None:
    aset = AnnotationSet()
    assert len(aset) == 0
    assert aset.bounds() is None
    assert aset.labels() == {}
    assert aset.union(TUMOUR).is_empty
