"""`exaslide evaluate` and `exaslide evaluate stage` through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import shapely
from evaluate_helpers import annotation_set, disc, heatmap_from_geometry

from exaslide.annotations import write_asap
from exaslide.evaluate import write_heatmap
from exaslide.manifest import write_manifest

SIZE = (20000, 20000)


def run(*args, check_rc=0):
    done = subprocess.run([sys.executable, "-m", "exaslide", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == check_rc, done.stderr
    return done


@pytest.fixture
def cohort(tmp_path):
    """Heatmaps that find every lesion, their annotations and a manifest (+ one slide
    without heatmap in split 'extra')."""
    heatmaps = tmp_path / "heatmaps"
    lesions = {"t1": [disc(5000, 5000, 1000), disc(15000, 14000, 600)],
               "t2": [disc(9000, 9000, 1500)], "n1": []}
    rows = []
    for slide_id, polygons in lesions.items():
        geometry = shapely.union_all(polygons) if polygons else shapely.Polygon()
        heatmap = heatmap_from_geometry(geometry, SIZE, inside=0.95, outside=0.05)
        write_heatmap(heatmaps, slide_id, heatmap.probabilities, heatmap.meta)
        annotation = ""
        if polygons:
            annotation = f"{slide_id}.xml"
            write_asap(annotation_set(polygons), tmp_path / annotation)
        rows.append({"slide_id": slide_id, "path": f"{slide_id}.tif", "annotation": annotation,
                     "label": "tumour" if polygons else "normal", "split": "test"})
    rows.append({"slide_id": "x9", "path": "x9.tif", "annotation": "", "label": "normal",
                 "split": "extra"})
    write_manifest(tmp_path / "manifest.csv", rows)
    (tmp_path / "patches.csv").write_text("slide_id,x,y,label,score\n"
                                          "t1,0,0,tumour,0.9\nt1,1,0,normal,0.2\n"
                                          "n1,0,0,normal,0.6\nt2,0,0,tumour,0.7\n")
    return tmp_path


def test_evaluate_writes_metrics_and_figures(cohort):
    out = cohort / "eval"
    done = run("evaluate", "heatmaps", "--heatmaps", cohort / "heatmaps", "--manifest",
               cohort / "manifest.csv", "--patch-predictions", cohort / "patches.csv",
               "--split", "test", "--out", out)
    assert "FROC score 1.0000" in done.stdout and "slide: n=3 (2 tumour) AUC 1.0000" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["slide"]["roc_auc"] == 1.0 and metrics["lesion"]["score"] == 1.0
    assert metrics["lesion"]["num_lesions"] == 3 and metrics["lesion"]["normal_slides"] == 1
    assert metrics["patch"]["roc_auc"] == 1.0 and metrics["patch"]["accuracy"] == 0.75
    assert metrics["options"]["split"] == "test" and metrics["slides"]["failed"] == []
    for name in ("slide_roc.png", "froc.png", "patch_roc.png", "slide_scores.csv",
                 "detections.csv"):
        assert (out / name).stat().st_size > 0 and name in metrics["files"]
    assert (out / "froc.png").read_bytes()[:4] == b"\x89PNG"
    detections = (out / "detections.csv").read_text().splitlines()
    assert detections[0] == "slide_id,x,y,p,outcome,lesion"
    assert {line.split(",")[4] for line in detections[1:]} == {"tp"}


def test_missing_heatmaps(cohort):
    done = run("evaluate", "heatmaps", "--heatmaps", cohort / "nowhere", "--manifest",
               cohort / "manifest.csv", "--out", cohort / "o", check_rc=2)
    assert "nowhere: no such heatmap folder" in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    done = run("evaluate", "heatmaps", "--heatmaps", cohort / "heatmaps", "--manifest",
               cohort / "manifest.csv", "--out", cohort / "o", check_rc=1)
    assert "x9" in done.stderr and "3 slides evaluated, 1 failed" in done.stdout
    failed = json.loads((cohort / "o" / "metrics.json").read_text())["slides"]["failed"]
    assert [f["slide_id"] for f in failed] == ["x9"]
    # no --manifest/--out
    run("evaluate", "heatmaps", "--heatmaps", cohort / "heatmaps", check_rc=2)


def test_heatmap_of_another_class_refused(cohort):
    meta_path = cohort / "heatmaps" / "t1.heatmap.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "class": "normal"}))
    args = ("evaluate", "heatmaps", "--heatmaps", cohort / "heatmaps", "--manifest",
            cohort / "manifest.csv", "--split", "test", "--out", cohort / "o")
    done = run(*args, check_rc=2)
    assert "t1: the heatmap maps the probability of class 'normal', not 'tumour'" \
        in done.stderr and "Traceback" not in done.stderr
    run(*args, "--class", "normal")  # the others have no "class": taken as normal too


def test_stage_command(tmp_path):
    ref = tmp_path / "ref.csv"
    ref.write_text("patient,stage\npatient_000.zip,pN0\npatient_000_node_0.tif,negative\n"
                   "patient_001.zip,pN1\npatient_002.zip,pN2\n")
    done = run("evaluate", "stage", "--reference", ref, "--submission", ref)
    assert "kappa (quadratic) 1.0000 over 3 patients" in done.stdout
    report = json.loads(run("evaluate", "stage", "--reference", ref, "--submission", ref,
                            "--json").stdout)
    assert report["kappa"] == 1.0 and report["stages"][1] == "pN0(i+)"
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,stage\npatient_000.zip,stage0\n")
    done = run("evaluate", "stage", "--reference", ref, "--submission", bad, check_rc=2)
    assert "bad.csv:2: unknown stage 'stage0'" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    run("evaluate", "--out", tmp_path, "stage", "--reference", ref, "--submission", ref,
        check_rc=2)
    config = tmp_path / "exaslide.yaml"  # config defaults for evaluate do not block `stage`
    config.write_text("evaluate:\n  split: test\n  min_distance_um: 150\n")
    run("--config", config, "evaluate", "stage", "--reference", ref, "--submission", ref)
