"""`exaslide stage train|predict` and `exaslide synth --cohort N --patients`: outputs,
one-line errors and exit codes, through the real command group."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from exaslide.cli.main import ExaslideGroup, cli
from exaslide.cli.stage import command as stage_command
from exaslide.heatmaps import write_heatmap
from exaslide.manifest import write_manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
from test_slide_classes import RANGES, meta, noisy_slide

# the lead registers `stage` in exaslide.cli.main; until then a group with it and the rest
ROOT = cli if "stage" in cli.commands else \
    ExaslideGroup("exaslide", commands={**cli.commands, "stage": stage_command})


def invoke(*args):
    return CliRunner().invoke(ROOT, [str(a) for a in args])


def cohort(folder: Path, n_patients: int, seed: int, skip=()) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for n in range(5):
            slide_id = f"patient_{p:03d}_node_{n}"
            cls = str(rng.choice(list(RANGES), p=[0.5, 0.15, 0.15, 0.2]))
            if slide_id not in skip:
                write_heatmap(folder / "heatmaps", slide_id, noisy_slide(cls, rng), meta())
            rows.append({"slide_id": slide_id, "path": f"{slide_id}.tif", "annotation": "",
                         "label": "tumour" if cls != "negative" else "normal",
                         "split": "train" if p % 3 else "test", "patient": f"patient_{p:03d}",
                         "slide_class": cls})
    return write_manifest(folder / "manifest.csv", rows)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stage")
    manifest = cohort(folder, 9, seed=0)
    done = invoke("stage", "train", folder / "heatmaps", "--manifest", manifest, "--split",
                  "train", "--out", folder / "model")
    assert done.exit_code == 0, done.output
    return folder, manifest, done.output


def test_train_predict_and_score(trained, tmp_path):
    folder, manifest, output = trained
    assert "slide classifier (random-forest) on 30 slides" in output
    assert (folder / "model" / "slide_classifier.json").exists()
    submission = tmp_path / "sub.csv"
    done = invoke("stage", "predict", folder / "heatmaps", "--model", folder / "model",
                  "--manifest", manifest, "--split", "test", "--out", submission,
                  "--predictions", tmp_path / "slides.csv")
    assert done.exit_code == 0, done.output
    assert "15 slides classified (trained model), 0 failed; 3 patients staged" in done.output
    lines = submission.read_text().splitlines()
    assert lines[0] == "patient,stage" and lines[1].startswith("patient_000.zip,pN")
    assert lines[2].startswith("patient_000_node_0.tif,")
    reference = tmp_path / "ref.csv"
    from exaslide.evaluate.camelyon17 import write_stage_csv

    with open(manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    from exaslide.evaluate.camelyon17 import stages_from_slide_classes

    write_stage_csv(reference, stages_from_slide_classes(
        {r["slide_id"]: r["slide_class"] for r in rows}))
    scored = invoke("evaluate", "stage", "--reference", reference, "--submission", submission)
    assert scored.exit_code == 0 and "kappa (quadratic)" in scored.output


def test_rule_and_a_missing_heatmap(tmp_path):
    manifest = cohort(tmp_path, 2, seed=1, skip={"patient_001_node_2"})
    done = invoke("stage", "predict", tmp_path / "heatmaps", "--manifest", manifest,
                  "--out", tmp_path / "sub.csv", "--threshold", 0.6)
    assert done.exit_code == 1
    assert "rule at threshold 0.6" in done.output and "2 patients staged" in done.output
    assert "exaslide: error: patient_001_node_2: " in done.output
    assert "patient_001: staged from 1 node(s) fewer" in done.output
    assert (tmp_path / "sub.csv").exists()


def test_one_line_errors(trained, tmp_path):
    folder, manifest, _ = trained
    no_class = tmp_path / "plain.csv"
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    write_manifest(no_class, [{k: v for k, v in r.items() if k != "slide_class"}
                              for r in rows])
    cases = [
        (("stage", "train", folder / "heatmaps", "--manifest", no_class, "--out",
          tmp_path / "m"), "no slide_class column"),
        (("stage", "predict", folder / "heatmaps", "--model", tmp_path, "--out",
          tmp_path / "s.csv"), "not a slide classifier"),
        (("stage", "predict", tmp_path / "none", "--out", tmp_path / "s.csv"),
         "no such heatmap folder"),
        (("stage", "predict", folder / "heatmaps", "--out", tmp_path / "s.csv", "--class",
          "normal"), "class 'tumour', not 'normal'"),
    ]
    for args, message in cases:
        done = invoke(*args)
        assert done.exit_code == 2, done.output
        assert message in done.output and done.output.count("\n") == 1, done.output
    usage = invoke("stage", "predict", folder / "heatmaps", "--model", folder / "model",
                   "--threshold", 0.5, "--out", tmp_path / "s.csv")
    assert usage.exit_code == 2 and "--threshold sets the rule" in usage.output
    assert not (tmp_path / "s.csv").exists()


def test_synth_patients_command(tmp_path):
    done = invoke("synth", tmp_path / "p", "--cohort", 1, "--patients", "--seed", 3)
    assert done.exit_code == 0, done.output
    assert "1 patients x 5 nodes" in done.output
    with open(tmp_path / "p" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slide_id"] for r in rows] == [f"patient_000_node_{i}" for i in range(5)]
    assert {r["width"] for r in rows} == {"2048"} and {r["mpp"] for r in rows} == {"2.0"}
    assert (tmp_path / "p" / "stage.csv").read_text().startswith("patient,stage\n")
    for args, message in [(("--patients",), "--patients needs --cohort N"),
                          (("--cohort", 2, "--patients", "--width", 1024),
                           "too small for a macro-metastasis"),
                          (("--cohort", 2, "--patients", "--tumour-fraction", 0.2),
                           "does not apply to --patients")]:
        bad = invoke("synth", tmp_path / "q", *args)
        assert bad.exit_code == 2 and message in bad.output, bad.output
    assert not (tmp_path / "q").exists()


def test_stages_from_four_class_predictions(tmp_path):
    from click.testing import CliRunner

    from exaslide.cli.main import cli
    from exaslide.evaluate.camelyon17 import read_stage_csv

    rows = ["slide_id,p_negative,p_itc,p_micro,p_macro,predicted"]
    classes = {"patient_001": ["negative"] * 5,
               "patient_002": ["itc", "negative", "negative", "negative", "negative"],
               "patient_003": ["micro", "itc", "negative", "negative", "negative"],
               "patient_004": ["macro", "micro", "negative", "negative", "negative"],
               "patient_005": ["macro", "micro", "micro", "macro", "negative"]}
    for patient, nodes in classes.items():
        rows += [f"{patient}_node_{i},0,0,0,0,{c}" for i, c in enumerate(nodes)]
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    done = CliRunner().invoke(cli, ["stage", "from-predictions", str(tmp_path / "p.csv"),
                                    "--out", str(tmp_path / "sub.csv")])
    assert done.exit_code == 0, done.output
    table = read_stage_csv(tmp_path / "sub.csv")
    assert table.patients == {"patient_001": "pN0", "patient_002": "pN0(i+)",
                            "patient_003": "pN1mi", "patient_004": "pN1",
                            "patient_005": "pN2"}
    (tmp_path / "bad.csv").write_text("slide_id,predicted\npatient_9_node_0,huge\n")
    bad = CliRunner().invoke(cli, ["stage", "from-predictions", str(tmp_path / "bad.csv"),
                                   "--out", str(tmp_path / "x.csv")])
    assert bad.exit_code == 2 and "huge" in bad.output
    assert not (tmp_path / "x.csv").exists()
