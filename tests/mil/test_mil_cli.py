"""``exaslide mil train|predict`` through the real CLI group (click's runner): outputs,
exit codes and one-line errors."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner

from exaslide.cli.main import cli
from exaslide.cli.mil import command
from exaslide.retrieval.store import write_part

sys.path.insert(0, str(Path(__file__).parent))
import mil_fixtures as fx

if "mil" not in cli.commands:  # until the lead registers it in exaslide.cli.main
    cli.add_command(command)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(root, store, trained out folder) of `exaslide mil train`."""
    root = tmp_path_factory.mktemp("milcli")
    store, manifest = fx.make_cohort(root)
    config = root / "mil.yaml"
    config.write_text(yaml.safe_dump(fx.config(root, store, manifest)))
    done = invoke("mil", "train", config, "--set", "epochs=3", "--set", "model=clam_sb")
    assert done.exit_code == 0, done.output
    assert "clam_sb: 6 test slides: slide AUC" in done.stdout
    return root, store, root / "run"


def _one_error_line(done, *parts):
    lines = [line for line in done.stderr.splitlines() if line.startswith("exaslide: error")]
    assert len(lines) == 1, done.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def test_train_check_prints_the_resolved_config(tmp_path):
    config = tmp_path / "mil.yaml"
    config.write_text("features: f\nmanifest: m.csv\n")
    done = invoke("mil", "train", config, "--check", "--set", "model=transmil")
    assert done.exit_code == 0 and "model: transmil" in done.stdout
    assert not (tmp_path / "runs").exists()


def test_a_bad_config_is_one_line_and_exit_2(tmp_path):
    config = tmp_path / "mil.yaml"
    config.write_text("features: f\nmanifest: m.csv\nmodle: abmil\n")
    done = invoke("mil", "train", config)
    assert done.exit_code == 2
    _one_error_line(done, "mil.yaml: unknown option 'modle' (did you mean 'model'?)")


def test_predict_writes_every_slide_of_the_store(run, tmp_path):
    _root, store, out = run
    done = invoke("mil", "predict", out / "model.pt", store, "--out", tmp_path / "p")
    assert done.exit_code == 0, done.output
    assert "24 slides: 24 predicted, 0 failed; 24 heatmaps" in done.stdout
    with open(tmp_path / "p" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24 and list(rows[0]) == ["slide_id", "p_normal", "p_tumour",
                                                 "predicted"]
    assert len(list((tmp_path / "p" / "heatmaps").glob("*.heatmap.json"))) == 24


def test_predict_reports_an_empty_bag_and_goes_on(run, tmp_path):
    _root, store, out = run
    empty = pa.table({"key": pa.array([], pa.string()), "slide_id": pa.array([], pa.string()),
                      "x": pa.array([], pa.int64()), "y": pa.array([], pa.int64())})
    copy = tmp_path / "features"
    copy.mkdir()
    for path in store.rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(store)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    write_part(copy, "zzz_empty", empty, np.zeros((0, fx.DIM), np.float32))
    done = invoke("mil", "predict", out / "model.pt", copy, "--out", tmp_path / "p",
                  "--no-heatmaps")
    assert done.exit_code == 1
    _one_error_line(done, "zzz_empty:", "empty bag (0 patches")
    assert "25 slides: 24 predicted, 1 failed" in done.stdout


def test_predict_with_features_of_another_dimension_is_one_line(run, tmp_path):
    _, _, out = run
    store, _ = fx.make_cohort(tmp_path, n_slides=2, dim=8)
    done = invoke("mil", "predict", out / "model.pt", store, "--out", tmp_path / "p")
    assert done.exit_code == 2
    _one_error_line(done, str(store), "features have 8 dimensions", "expects 16")


def test_predict_with_a_patch_model_file_is_one_line(run, tmp_path):
    from exaslide.models import create_model, save_model

    _, store, _ = run
    path = save_model(tmp_path / "cnn.pt", create_model("small-cnn", num_classes=2),
                      {"classes": ["normal", "tumour"]})
    done = invoke("mil", "predict", path, store, "--out", tmp_path / "p")
    assert done.exit_code == 2
    _one_error_line(done, "cnn.pt: a patch model file", "not a MIL model")
