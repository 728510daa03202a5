"""MIL training end to end on tiny synthetic bags: outputs, heatmaps that evaluation
reads, missing and broken bags, cross-validation by patient, resume, DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from exaslide.mil import MILConfig, train_mil
from exaslide.mil.errors import MILError
from exaslide.retrieval.store import write_part

sys.path.insert(0, str(Path(__file__).parent))
import mil_fixtures as fx

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("mil")
    store, manifest = fx.make_cohort(root)
    return root, store, manifest


@pytest.fixture(scope="module")
def trained(cohort):
    root, store, manifest = cohort
    return train_mil(MILConfig(**fx.config(root, store, manifest)))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_abmil_learns_the_cohort_and_writes_every_output(trained, cohort):
    from exaslide.heatmaps import read_heatmap
    from exaslide.mil.weights import load_mil_model

    _root, store, _manifest = cohort
    out, metrics = trained.out, trained.metrics
    assert metrics["slide_auc"] >= 0.9 and metrics["n"] == 6
    assert {"balanced_accuracy", "macro_f1", "confusion_matrix", "history",
            "missing_features", "skipped"} <= set(metrics)
    assert json.loads((out / "metrics.json").read_text())["slide_auc"] == metrics["slide_auc"]
    rows = _rows(out / "predictions.csv")
    assert list(rows[0])[:4] == ["slide_id", "p_normal", "p_tumour", "predicted"]
    assert {r["split"] for r in rows} == {"test"} and len(rows) == 6
    assert (out / "model.pt.sha256").exists() and (out / "checkpoints" / "last.pt").exists()
    _model, meta = load_mil_model(out / "model.pt")
    assert meta["model"] == "abmil" and meta["classes"] == ["normal", "tumour"]
    assert meta["dims"]["in_dim"] == fx.DIM and meta["config"]["epochs"] == 6
    heatmap = read_heatmap(out / "heatmaps", "s07")
    assert heatmap.cell == fx.FOOTPRINT and heatmap.meta["score"] == "attention"
    n = store.joinpath("parts", "s07.npy")
    assert np.isfinite(heatmap.probabilities).sum() == len(np.load(n))
    p_tumour = float(next(r for r in rows if r["slide_id"] == "s07")["p_tumour"])
    assert np.nanmax(heatmap.probabilities) == pytest.approx(p_tumour, rel=1e-4)


def test_mil_heatmaps_go_through_exaslide_evaluate(trained, cohort, tmp_path):
    from exaslide.evaluate.run import EvaluateOptions, evaluate_run

    _, _, manifest = cohort
    result = evaluate_run(trained.out / "heatmaps", manifest, tmp_path,
                          options=EvaluateOptions(split="test"))
    assert result["slide"]["roc_auc"] >= 0.9 and result["slide"]["n"] == 6


def test_missing_empty_and_corrupt_bags_are_reported_and_the_run_goes_on(tmp_path):
    from exaslide.manifest import read_manifest, write_manifest

    store, manifest = fx.make_cohort(tmp_path, n_slides=16)
    rows = [{"slide_id": e.slide_id, "path": str(e.path), "annotation": "", "label": e.label,
             "split": e.split, **e.extra} for e in read_manifest(manifest)]
    rows.append({**rows[0], "slide_id": "ghost"})
    rows.append({**rows[0], "slide_id": "empty"})
    write_manifest(manifest, rows)
    empty = pa.table({"key": pa.array([], pa.string()), "slide_id": pa.array([], pa.string()),
                      "x": pa.array([], pa.int64()), "y": pa.array([], pa.int64())})
    write_part(store, "empty", empty, np.zeros((0, fx.DIM), np.float32))
    npy = store / "parts" / "s02.npy"
    data = bytearray(npy.read_bytes())
    data[-7] ^= 0xFF
    npy.write_bytes(bytes(data))
    result = train_mil(MILConfig(**fx.config(tmp_path, store, manifest, epochs=2)))
    metrics = result.metrics
    assert metrics["missing_features"] == ["ghost"]
    skipped = {s["slide_id"]: s["error"] for s in metrics["skipped"]}
    assert set(skipped) == {"empty", "s02"}
    assert "empty bag (0 patches" in skipped["empty"]
    assert "corrupt file" in skipped["s02"] and "\n" not in skipped["s02"]
    assert any(line.startswith("ghost: not in the feature store") for line in result.warnings)
    assert metrics["n"] > 0 and (tmp_path / "run" / "model.pt").exists()


def test_cross_validation_groups_patients_and_tests_every_slide_once(cohort, tmp_path):
    root, store, manifest = cohort
    result = train_mil(MILConfig(**fx.config(root, store, manifest, out=str(tmp_path / "cv"),
                                             cv_folds=3, epochs=2)))
    metrics = result.metrics
    assert len(metrics["folds"]) == 3 and metrics["n"] == 24
    rows = _rows(tmp_path / "cv" / "predictions.csv")
    assert sorted(r["slide_id"] for r in rows) == [f"s{i:02d}" for i in range(24)]
    patient_fold = {}
    for row in rows:  # two slides per patient: s00/s01 -> p00 ...
        patient = int(row["slide_id"][1:]) // 2
        assert patient_fold.setdefault(patient, row["fold"]) == row["fold"]
    assert all((tmp_path / "cv" / "folds" / f"fold{i}" / "model.pt").exists() for i in range(3))
    assert metrics["cv"]["folds"] == 3 and "slide_auc_mean" in metrics["cv"]


def test_resume_continues_exactly_and_refuses_other_settings(cohort, tmp_path):
    root, store, manifest = cohort
    whole = train_mil(MILConfig(**fx.config(root, store, manifest, out=str(tmp_path / "a"),
                                            epochs=4, patience=None)))
    part = fx.config(root, store, manifest, out=str(tmp_path / "b"), epochs=2, patience=None)
    train_mil(MILConfig(**part))
    (tmp_path / "b" / "fold.json").unlink()  # as if killed after epoch 2 of 4
    again = train_mil(MILConfig(**{**part, "epochs": 4}), resume=True)
    a, b = whole.metrics["history"], again.metrics["history"]
    assert len(a) == len(b) == 4
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a["train_loss"] == pytest.approx(row_b["train_loss"], rel=1e-6)
        assert row_a["val_loss"] == pytest.approx(row_b["val_loss"], rel=1e-6)
    (tmp_path / "b" / "fold.json").unlink()
    with pytest.raises(MILError, match=r"the run there has lr=0.005, this one 0.01"):
        train_mil(MILConfig(**{**part, "epochs": 4, "lr": 0.01}), resume=True)


def test_two_runs_are_never_mixed_in_one_folder(cohort, tmp_path):
    root, store, manifest = cohort
    run = fx.config(root, store, manifest, out=str(tmp_path / "r"), epochs=1, patience=None)
    train_mil(MILConfig(**run))
    with pytest.raises(MILError, match="holds an earlier MIL run; continue it with --resume"):
        train_mil(MILConfig(**run))  # a fresh run would leave the old one's files
    with pytest.raises(MILError, match="the run there has model='abmil'"):
        train_mil(MILConfig(**{**run, "model": "clam_sb"}), resume=True)  # fold.json kept


def test_camelyon17_classes_with_clam_sb_instance_heatmaps(cohort, tmp_path):
    from exaslide.heatmaps import read_heatmap

    root, store, manifest = cohort
    result = train_mil(MILConfig(**fx.config(
        root, store, manifest, out=str(tmp_path / "c17"), task="camelyon17",
        model="clam_sb", subtyping=True, heatmap_score="instance", epochs=2)))
    assert result.metrics["classes"] == ["negative", "itc", "micro", "macro"]
    assert len(result.metrics["confusion_matrix"]) == 4 and "auc_ovr" in result.metrics
    header = list(_rows(tmp_path / "c17" / "predictions.csv")[0])
    assert header[1:5] == ["p_negative", "p_itc", "p_micro", "p_macro"]
    assert read_heatmap(tmp_path / "c17" / "heatmaps", "s07").meta["score"] == "instance"


def test_reference_weights_for_other_features_name_the_store_and_both_dims(cohort, tmp_path):
    from exaslide.mil.registry import create_mil_model

    root, store, manifest = cohort
    weights = tmp_path / "clam_1024.pt"
    torch.save(create_mil_model("clam_sb", 1024, 2).state_dict(), weights)
    with pytest.raises(MILError) as info:
        train_mil(MILConfig(**fx.config(root, store, manifest, out=str(tmp_path / "w"),
                                        init_weights=str(weights), hidden=None)))
    message = str(info.value)
    assert str(store) in message and f"features have {fx.DIM} dimensions" in message
    assert "expects 1024" in message and "\n" not in message


def test_torchrun_two_ranks_on_cpu_end_with_identical_weights(cohort, tmp_path):
    root, store, manifest = cohort
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(fx.config(root, store, manifest, out=str(tmp_path / "d"),
                                               epochs=2, model="clam_sb")))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(HERE / "mil_ddp.py"), str(config), str(tmp_path)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    digests = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert digests[0]["digest"] == digests[1]["digest"] and digests[0]["world_size"] == 2
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert metrics["n"] == 6 and len(metrics["history"]) == 2


def test_bags_are_memory_mapped_and_foreign_stores_refused(cohort, tmp_path):
    from exaslide.mil.bags import FeatureStore
    from exaslide.retrieval.store import write_info

    _, store, _ = cohort
    features = FeatureStore(store)
    bag = features.features("s03")
    assert isinstance(bag, np.memmap) and bag.dtype == np.float16 and bag.shape[1] == fx.DIM
    assert features.bag("s03", rows=np.array([4, 1])).shape == (2, fx.DIM)
    with pytest.raises(MILError, match="not an embedding store"):
        FeatureStore(tmp_path)
    write_info(tmp_path / "slides", {"kind": "slides", "dim": 4, "model": "m"})
    with pytest.raises(MILError, match="holds 'slides' embeddings; MIL needs patch features"):
        FeatureStore(tmp_path / "slides")


def test_cross_validation_needs_as_many_patients_as_folds(cohort, tmp_path):
    root, store, manifest = cohort
    with pytest.raises(MILError, match="cv_folds=13 needs at least 13 patients"):
        train_mil(MILConfig(**fx.config(root, store, manifest, cv_folds=13,
                                        out=str(tmp_path / "x"))))


def test_every_rank_takes_the_same_number_of_bags():
    from exaslide.mil.loop import rank_share

    for n in (1, 2, 5, 8):
        shares = [rank_share(n, r, 4, np.random.default_rng(0)) for r in range(4)]
        assert {len(s) for s in shares} == {-(-n // 4)}
        assert set(np.concatenate(shares)) == set(range(n))
