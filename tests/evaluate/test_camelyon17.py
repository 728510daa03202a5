"""CAMELYON17: slide classes, pN-stage rules, the official stage CSV and kappa."""

from __future__ import annotations

import csv

import pytest
from evaluate_helpers import annotation_set, disc
from shapely.geometry import box

from exaslide.annotations import read_annotations
from exaslide.errors import EvaluationError
from exaslide.evaluate import (
    STAGES,
    lesion_diameters_mm,
    longest_diameter_um,
    pn_stage,
    read_stage_csv,
    slide_class_from_lesions,
    stage_kappa,
    stage_report,
    stages_from_slide_classes,
    write_stage_csv,
)

LABELS = "labels/camelyon17_stage_labels.csv"


def test_slide_class_thresholds():
    assert slide_class_from_lesions([]) == "negative"
    assert slide_class_from_lesions([0.05, 0.2]) == "itc"
    assert slide_class_from_lesions([0.21, 0.1]) == "micro"
    assert slide_class_from_lesions([2.0]) == "micro"
    assert slide_class_from_lesions([2.01, 0.1]) == "macro"
    with pytest.raises(EvaluationError, match="finite"):
        slide_class_from_lesions([float("nan")])


def test_longest_diameter_from_polygons():
    assert longest_diameter_um(box(0, 0, 300, 400), 0.5) == pytest.approx(250.0)
    assert longest_diameter_um(box(0, 0, 300, 400), (1.0, 0.5)) == pytest.approx(
        (300**2 + 200**2) ** 0.5)
    lesions = annotation_set([disc(2000, 2000, 150, 0.25), disc(9000, 9000, 2500, 0.25),
                              disc(9500, 9000, 1000, 0.25)])  # overlapping: one lesion
    diameters = lesion_diameters_mm(lesions, 0.25)
    assert len(diameters) == 2 and diameters[0] == pytest.approx(2.5, rel=1e-3)
    assert slide_class_from_lesions(lesions, mpp=0.25) == "macro"
    assert slide_class_from_lesions(annotation_set([disc(0, 0, 150, 0.25)]), 0.25) == "itc"
    with pytest.raises(EvaluationError, match="mpp"):
        slide_class_from_lesions(lesions)


def test_real_annotation_is_itc(shared_data):
    annotations = read_annotations(shared_data / "annotations/camelyon17/patient_004_node_4.xml")
    diameters = lesion_diameters_mm(annotations, 0.243)
    assert len(diameters) == 3 and max(diameters) < 0.2
    assert slide_class_from_lesions(annotations, 0.243) == "itc"


def test_pn_stage_rules():
    assert pn_stage(["negative"] * 5) == "pN0"
    assert pn_stage(["negative", "itc", "itc"]) == "pN0(i+)"
    assert pn_stage(["micro", "micro", "micro", "micro", "itc"]) == "pN1mi"
    assert pn_stage(["macro", "micro", "micro", "itc", "itc"]) == "pN1"  # ITC nodes: no count
    assert pn_stage(["macro", "micro", "micro", "micro", "itc"]) == "pN2"
    assert pn_stage(["Macro"]) == "pN1"
    with pytest.raises(EvaluationError, match="unknown slide class"):
        pn_stage(["negative", "tumour"])
    with pytest.raises(EvaluationError, match="pN3"):
        pn_stage(["macro"] * 10)


def test_stage_rule_reproduces_all_100_training_patients(shared_data):
    table = read_stage_csv(shared_data / LABELS)
    assert len(table.patients) == 100 and len(table.slides) == 500
    assert stages_from_slide_classes(table.slides) == table.patients
    assert all(pn_stage(table.slides_of(p).values()) == s for p, s in table.patients.items())


def test_kappa_of_reference(shared_data, tmp_path):
    reference = shared_data / LABELS
    assert stage_kappa(reference, reference) == 1.0
    table = read_stage_csv(reference)
    perturbed = dict(table.patients)
    for patient in sorted(perturbed)[:10]:
        perturbed[patient] = STAGES[(STAGES.index(perturbed[patient]) + 2) % 5]
    path = write_stage_csv(tmp_path / "submission.csv", perturbed)
    report = stage_report(reference, path)
    assert 0 < report["kappa"] < 1 and report["accuracy"] == pytest.approx(0.9)
    assert sum(map(sum, report["confusion_matrix"])) == 100


def test_kappa_hand_computed_and_round_trip(tmp_path):
    ref = {"patient_000": "pN0", "patient_001": "pN1", "patient_002": "pN2"}
    sub = {"patient_000": "pN0", "patient_001": "pN1", "patient_002": "pN1", "patient_9": "pN0"}
    # weights (i - j)^2 / 16 over stage indices; ref (0, 3, 4), sub (0, 3, 3):
    # sum w*O = w(4,3) = 1/16; E = outer(ref counts, sub counts) / 3, sum w*E = 45/48
    expected = 1 - (1 / 16) / (45 / 48)  # 14/15; patient_9 (not in ref) is ignored
    assert stage_kappa(ref, sub) == pytest.approx(expected)
    path = write_stage_csv(tmp_path / "s.csv", ref, {"patient_000_node_1.tif": "itc",
                                                      "patient_001_node_0": "macro"})
    lines = path.read_text().splitlines()
    assert lines[:3] == ["patient,stage", "patient_000.zip,pN0", "patient_000_node_1.tif,itc"]
    table = read_stage_csv(path)
    assert table.patients == ref and table.slides["patient_001_node_0"] == "macro"
    assert stage_kappa({"p": "pN0"}, {"p": "pN0"}) == 1.0  # one stage only: not 0/0


def _csv(tmp_path, rows, header=("patient", "stage")):
    path = tmp_path / "stages.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def test_malformed_stage_csvs(tmp_path):
    with pytest.raises(EvaluationError, match="header 'patient,stage'"):
        read_stage_csv(_csv(tmp_path, [], header=("case", "label")))
    with pytest.raises(EvaluationError, match=r"stages.csv:3: unknown stage 'pN3'"):
        read_stage_csv(_csv(tmp_path, [("patient_000.zip", "pN0"), ("patient_001.zip", "pN3")]))
    with pytest.raises(EvaluationError, match="unknown slide class 'tumour'"):
        read_stage_csv(_csv(tmp_path, [("patient_000_node_0.tif", "tumour")]))
    with pytest.raises(EvaluationError, match="duplicate row"):
        read_stage_csv(_csv(tmp_path, [("patient_000.zip", "pN0"), ("patient_000.zip", "pN1")]))
    with pytest.raises(EvaluationError, match="expected 'name,stage'"):
        read_stage_csv(_csv(tmp_path, [("patient_000.zip",)]))
    with pytest.raises(EvaluationError, match="cannot read"):
        read_stage_csv(tmp_path / "missing.csv")
    ok = read_stage_csv(_csv(tmp_path, [("patient_000.zip", "pn0(I+)"),
                                        ("patient_000_node_0.tif", "")]))
    assert ok.patients == {"patient_000": "pN0(i+)"} and ok.slides == {}
    ref = _csv(tmp_path, [("patient_000.zip", "pN0"), ("patient_001.zip", "pN1")])
    sub = tmp_path / "sub.csv"
    sub.write_text("patient,stage\npatient_000.zip,pN0\n")
    with pytest.raises(EvaluationError, match=r"1 reference patient.*missing.*patient_001"):
        stage_kappa(ref, sub)
