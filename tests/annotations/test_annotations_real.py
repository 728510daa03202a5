"""Real annotation files (CAMELYON16/17 ASAP XML, NCRF JSON, QuPath GeoJSON).

The files are read in place from the shared test-data folder and never copied; every test
here skips when that folder (or the file) is absent. Expected numbers are the facts listed
in the data folder's PROVENANCE.md, checked independently.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import shapely

from exaslide.annotations import EXCLUSION, TUMOUR, read_annotations, write_annotations

TEST_040 = "camelyon16/test_040.xml"
TUMOR_009 = "camelyon16/tumor_009_relabelled.xml"
TUMOR_036 = "camelyon16/tumor_036_relabelled.xml"
TUMOR_085 = "camelyon16/tumor_085_relabelled.xml"
PATIENT_004 = "camelyon17/patient_004_node_4.xml"
TD_01 = "geojson/qupath_TD_01_verysmall_mIF.geojson"
SINGLE_CELLS = "geojson/qupath_Single_cells.geojson"
NCRF_001 = "camelyon16/ncrf_json/Tumor_001.json"
NCRF_091 = "camelyon16/ncrf_json/Tumor_091.json"
NCRF_107 = "camelyon16/ncrf_json/Tumor_107.json"


def _vertices(aset, *, closing: bool = False) -> int:
    """Stored polygon vertices; ``closing`` also counts each ring's repeated first vertex."""
    total = 0
    for ann in aset:
        if ann.is_area:
            for poly in shapely.get_parts(ann.source):
                rings = [poly.exterior, *poly.interiors]
                total += sum(len(r.coords) - (0 if closing else 1) for r in rings)
    return total


def _key(aset) -> list:
    return [(a.name, a.group, a.label, shapely.get_coordinates(a.source).tolist()) for a in aset]


@pytest.fixture(scope="module")
def test_040(real_file):
    return read_annotations(real_file(TEST_040))


def test_test_040_counts_and_labels(test_040) -> None:
    assert test_040.format == "asap"
    assert len(test_040) == 78
    assert Counter(a.group for a in test_040) == {"_0": 34, "_2": 44}
    assert test_040.labels() == {TUMOUR: 34, EXCLUSION: 44}
    assert {a.kind for a in test_040} == {"polygon"}
    assert _vertices(test_040) == 66_697
    assert test_040.group_colors == {"_0": "#00ff00", "_1": "#00ffff", "_2": "#0000ff"}
    assert test_040[-1].name == "Annotation 77"
    minx, miny, maxx, maxy = test_040.bounds()
    assert (round(minx), round(miny), round(maxx), round(maxy)) == (23425, 64300, 75056, 106328)


def test_test_040_repairs(test_040) -> None:
    invalid = [i for i, a in enumerate(test_040) if not a.source.is_valid]
    assert len(invalid) == 39
    assert len(test_040.repairs) == 39
    assert {r.action for r in test_040.repairs} == {"make_valid"}
    assert [r.index for r in test_040.repairs] == invalid
    assert all("Self-intersection" in r.problem for r in test_040.repairs)
    assert all(a.geometry.is_valid and not a.geometry.is_empty for a in test_040)
    assert sum(a.repaired for a in test_040) == 39


def test_test_040_lesion_area(test_040) -> None:
    tumour = test_040.union(TUMOUR)
    exclusion = test_040.union(EXCLUSION)
    assert tumour.is_valid and exclusion.is_valid
    lesion = tumour.difference(exclusion)
    assert lesion.area > 0
    assert lesion.area < tumour.area  # the exclusions cut into the tumour


def test_tumor_009_splines(real_file) -> None:
    aset = read_annotations(real_file(TUMOR_009))
    assert len(aset) == 6
    assert {a.kind for a in aset} == {"spline"}
    assert {a.group for a in aset} == {"metastasis"}
    assert aset.labels() == {TUMOUR: 6}
    assert _vertices(aset) == 10_778
    assert len(aset.repairs) == 3  # only 3 of 6 are valid polygons
    assert aset.union(TUMOUR).area > 0


def test_tumor_036_and_085(real_file) -> None:
    t036 = read_annotations(real_file(TUMOR_036))
    assert t036.labels() == {TUMOUR: 103, EXCLUSION: 2}
    assert Counter(a.group for a in t036) == {"metastasis": 103, "negative": 2}
    assert _vertices(t036) == 40_483
    assert len(t036.repairs) == 10  # 95 of 105 valid
    t085 = read_annotations(real_file(TUMOR_085))
    assert t085.labels() == {TUMOUR: 50}
    assert _vertices(t085) == 7_220
    assert len(t085.repairs) == 2  # 48 of 50 valid


def test_camelyon17_patient_004(real_file) -> None:
    aset = read_annotations(real_file(PATIENT_004))
    assert len(aset) == 3
    assert [a.name for a in aset] == ["Annotation 0", "Annotation 1", "Annotation 2"]
    assert {a.group for a in aset} == {"Tumor"}
    assert aset.labels() == {TUMOUR: 3}
    assert _vertices(aset) == 35
    assert aset.repairs == []
    first = aset[0].source.exterior.coords[0]
    assert first == (12711.2998, 88778.1016)


def test_qupath_td_01(real_file) -> None:
    aset = read_annotations(real_file(TD_01))
    assert aset.format == "geojson"
    assert len(aset) == 9
    assert Counter(a.kind for a in aset) == {"polygon": 6, "point": 3}
    assert Counter(a.group for a in aset) == {"class_1": 3, "class_2": 3, "": 3}
    assert {a.properties["objectType"] for a in aset} == {"annotation"}
    assert all("id" in a.properties for a in aset)
    assert _vertices(aset, closing=True) == 582  # as stored, closing vertices included
    assert aset.repairs == []
    assert aset.unmapped_groups() == {"class_1", "class_2"}


def test_qupath_single_cells(real_file) -> None:
    aset = read_annotations(real_file(SINGLE_CELLS))
    assert len(aset) == 131
    assert Counter(a.kind for a in aset) == {"polygon": 128, "point": 3}
    assert Counter(a.properties["objectType"] for a in aset) == {"cell": 121, "annotation": 10}
    cells = [a for a in aset if a.properties["objectType"] == "cell"]
    assert {a.group for a in cells} == {"single_cells_demo"}
    assert all("measurements" in a.properties for a in cells)
    assert _vertices(aset, closing=True) == 2_880
    assert aset.repairs == []


def test_ncrf_files(real_file) -> None:
    t001 = read_annotations(real_file(NCRF_001))
    assert t001.format == "ncrf"
    assert [(a.name, a.group, a.label) for a in t001] == [
        ("_0", "positive", TUMOUR),
        ("_1", "positive", TUMOUR),
    ]
    assert _vertices(t001) == 2_512
    assert t001[0].source.exterior.coords[0] == (71924.0, 131761.0)
    t107 = read_annotations(real_file(NCRF_107))
    assert t107.labels() == {TUMOUR: 2, EXCLUSION: 3}
    assert _vertices(t107) == 493
    t091 = read_annotations(real_file(NCRF_091))
    assert t091.labels() == {TUMOUR: 6, EXCLUSION: 1}
    assert _vertices(t091) == 1_427
    assert all(a.geometry.is_valid for a in (*t001, *t091, *t107))


@pytest.mark.parametrize("relative", [TEST_040, TUMOR_009, PATIENT_004])
def test_real_asap_round_trips(real_file, tmp_path: Path, relative: str) -> None:
    original = read_annotations(real_file(relative))
    asap = read_annotations(write_annotations(original, tmp_path / "same.xml"))
    assert _key(asap) == _key(original)
    assert [a.kind for a in asap] == [a.kind for a in original]
    middle = read_annotations(write_annotations(original, tmp_path / "mid.geojson"))
    assert _key(middle) == _key(original)
    final = read_annotations(write_annotations(middle, tmp_path / "final.xml"))
    assert _key(final) == _key(original)
    assert [a.kind for a in final] == [a.kind for a in original]
    assert len(final.repairs) == len(original.repairs)


@pytest.mark.parametrize("relative", [TD_01, SINGLE_CELLS])
def test_real_geojson_round_trips(real_file, tmp_path: Path, relative: str) -> None:
    original = read_annotations(real_file(relative))
    again = read_annotations(write_annotations(original, tmp_path / "same.geojson"))
    assert _key(again) == _key(original)
    assert [a.kind for a in again] == [a.kind for a in original]
    assert [a.properties for a in again] == [a.properties for a in original]
    assert [a.color for a in again] == [a.color for a in original]
    assert again.group_colors == original.group_colors
