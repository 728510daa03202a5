"""Synthetic CAMELYON17 patients: lesions sized by the definitions, node classes giving
every stage, the manifest and the reference stage CSVs agree with the written slides."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import shapely

from exaslide.annotations import read_annotations
from exaslide.evaluate.camelyon17 import (
    STAGES,
    lesion_diameters_mm,
    longest_diameter_um,
    pn_stage,
    read_stage_csv,
    slide_class_from_lesions,
)
from exaslide.synth import SynthError, SynthSpec
from exaslide.synth.patients import (
    DIAMETER_MM,
    LESION_GAP_MM,
    lesion_polygon,
    make_patients,
    node_classes_for_stage,
    plan_patients,
)

BASE = SynthSpec(width=1792, height=1792, mpp=2.0, tumours=3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("patients")
    manifest = make_patients(out, 5, base=BASE, seed=11, texture_sets=1)
    with open(manifest, newline="") as fh:
        return out, list(csv.DictReader(fh))


def test_written_annotations_give_the_manifest_classes(cohort):
    out, rows = cohort
    assert len(rows) == 25
    assert list(rows[0])[:7] == ["slide_id", "path", "annotation", "label", "split", "patient",
                                 "slide_class"]
    for row in rows:
        assert (out / row["path"]).exists()
        if row["slide_class"] == "negative":
            assert row["annotation"] == "" and row["label"] == "normal"
            continue
        assert row["label"] == "tumour"
        annotations = read_annotations(out / row["annotation"])
        assert slide_class_from_lesions(annotations, float(row["mpp"])) == row["slide_class"]
        diameters = lesion_diameters_mm(annotations, float(row["mpp"]))
        assert len(diameters) == int(row["lesions"])
        assert diameters[0] == pytest.approx(float(row["largest_mm"]), abs=1e-4)


def test_stage_csv_is_the_rule_applied_to_the_nodes(cohort):
    out, rows = cohort
    table = read_stage_csv(out / "stage.csv")
    by_patient: dict[str, list[str]] = {}
    for row in rows:
        by_patient.setdefault(row["patient"], []).append(row["slide_class"])
        assert table.slides[row["slide_id"]] == row["slide_class"]
    assert {p: pn_stage(c) for p, c in by_patient.items()} == table.patients
    assert sorted(table.patients.values()) == sorted(STAGES)  # 5 patients: every stage
    splits = {row["patient"]: row["split"] for row in rows}
    assert all(row["split"] == splits[row["patient"]] for row in rows)
    for split in set(splits.values()):
        part = read_stage_csv(out / f"stage_{split}.csv")
        assert set(part.patients) == {p for p, s in splits.items() if s == split}


def test_slides_open_at_their_resolution(cohort):
    from exaslide.slides import open_slide

    out, rows = cohort
    with open_slide(out / rows[0]["path"]) as slide:
        assert slide.dimensions == (1792, 1792)
        assert slide.level_mpp(0)[0] == pytest.approx(2.0)


def test_plans_are_seeded_and_lesions_follow_the_definitions():
    plans, stages = plan_patients(12, BASE, seed=4)
    again, _ = plan_patients(12, BASE, seed=4)
    other, _ = plan_patients(12, BASE, seed=5)
    assert [p.layout.tumours for p in plans] == [p.layout.tumours for p in again]
    assert [p.slide_class for p in plans] != [p.slide_class for p in other]
    assert set(stages.values()) == set(STAGES)
    frame = shapely.box(0, 0, BASE.width, BASE.height)
    for plan in plans:
        lesions = plan.layout.tumours
        assert (plan.slide_class == "negative") == (not lesions)
        if not lesions:
            continue
        low, high = DIAMETER_MM[plan.slide_class]
        assert low <= plan.largest_mm <= high
        assert all(frame.contains(p) and plan.layout.tissue.contains(p) for p in lesions)
        for i, a in enumerate(lesions):
            for b in lesions[i + 1:]:
                assert a.distance(b) >= LESION_GAP_MM * 1000 / BASE.mpp - 1e-6


@pytest.mark.parametrize("stage", STAGES)
def test_node_classes_give_their_stage(stage):
    rng = np.random.default_rng(0)
    for _ in range(50):
        classes = node_classes_for_stage(stage, rng)
        assert len(classes) == 5 and pn_stage(classes) == stage


def test_lesion_polygons_have_the_exact_longest_diameter():
    rng = np.random.default_rng(1)
    for diameter_px in (7.0, 120.0, 1400.0):
        polygon = lesion_polygon(diameter_px, rng)
        assert longest_diameter_um(polygon, 1.0) == pytest.approx(diameter_px)
        x0, y0, x1, y1 = polygon.bounds
        assert x0 == pytest.approx(-x1) and y0 == pytest.approx(-y1)


def test_bad_parameters(tmp_path):
    with pytest.raises(SynthError, match="use at least 1786 x 1786 pixels"):
        make_patients(tmp_path, 2, base=SynthSpec(width=1024, height=1024, mpp=2.0))
    with pytest.raises(SynthError, match="1 to 10000 patients"):
        make_patients(tmp_path, 0)
    with pytest.raises(SynthError, match="unknown stage 'pN3'"):
        node_classes_for_stage("pN3", np.random.default_rng(0))
    assert not any(tmp_path.iterdir())
