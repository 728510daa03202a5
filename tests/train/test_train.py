"""Training end to end on a tiny synthetic extraction: outputs, resume after SIGKILL,
and a real 2-process torchrun (gloo) whose ranks end with identical weights."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from exaslide.errors import TrainingError
from exaslide.train import TrainConfig, train

DDP_SCRIPT = Path(__file__).with_name("ddp_train.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _config(extracted, out, **extra):
    values = {"data": str(extracted), "out": str(out), "model": "small-cnn",
              "patch_size": None, "epochs": 2, "batch_size": 16, "workers": 0,
              "max_steps": 4, "lr": 0.001, "seed": 1, "patience": None}
    values.update(extra)
    return values  # TrainConfig(**values), or YAML for the command line


def _metrics(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_training_writes_config_metrics_checkpoint_model_and_tensorboard(extracted,
                                                                          tmp_path):
    from exaslide.models import load_model

    result = train(TrainConfig(**_config(extracted, tmp_path / "run")), progress=False)
    out = tmp_path / "run"
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == "small-cnn"
    rows = _metrics(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(float(r["train_loss"]) > 0 and r["val_auc"] != "" for r in rows)
    assert (out / "checkpoints" / "last.pt").exists()
    assert any((out / "tensorboard").iterdir())
    model, meta = load_model(result.model_path)
    assert meta["classes"] == ["normal", "tumour"] and meta["patch"]["size"] == 64
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
    assert result.best_epoch in (0, 1) and len(result.weights_digest) == 64


def test_no_training_split_and_mismatched_resume_are_clear_errors(extracted, tmp_path):
    with pytest.raises(TrainingError, match="no patch has split 'nothing'"):
        train(TrainConfig(**_config(extracted, tmp_path / "a", train_split="nothing")),
              progress=False)
    train(TrainConfig(**_config(extracted, tmp_path / "b", epochs=1)), progress=False)
    with pytest.raises(TrainingError, match="checkpoint has model"):
        train(TrainConfig(**_config(extracted, tmp_path / "b", model="resnet18")),
              resume=True, progress=False)
    with pytest.raises(TrainingError, match="checkpoint has shuffle='full'"):
        train(TrainConfig(**_config(extracted, tmp_path / "b", epochs=1, shuffle="blocks")),
              resume=True, progress=False)


def _run_cli(config_path, *extra):
    return subprocess.Popen([sys.executable, "-m", "exaslide", "train", str(config_path),
                             *extra], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_resume_after_sigkill_matches_an_uninterrupted_run(extracted, tmp_path):
    values = _config(extracted, tmp_path / "whole", epochs=3, max_steps=6)
    whole_cfg = tmp_path / "whole.yaml"
    whole_cfg.write_text(yaml.safe_dump(values))
    killed_cfg = tmp_path / "killed.yaml"
    killed_cfg.write_text(yaml.safe_dump({**values, "out": str(tmp_path / "killed")}))
    whole = _run_cli(whole_cfg)
    killed = _run_cli(killed_cfg)
    metrics = tmp_path / "killed" / "metrics.csv"
    checkpoint = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists():  # written after the first epoch's metrics
        assert killed.poll() is None, killed.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert whole.wait(timeout=300) == 0, whole.communicate()[1][-2000:]
    assert len(_metrics(metrics)) < 3  # it really was killed before the end
    resumed = _run_cli(killed_cfg, "--resume")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-2000:]
    started = int(stdout.split("resumed at epoch ")[1].split()[0])
    assert started >= 1  # it continued from the checkpoint, not from scratch
    a, b = _metrics(tmp_path / "whole" / "metrics.csv"), _metrics(metrics)
    assert len(a) == len(b) == 3
    for row_a, row_b in zip(a, b, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_auc"):
            assert float(row_a[key]) == pytest.approx(float(row_b[key]), rel=1e-5, abs=1e-6)


def test_torchrun_two_ranks_on_cpu_end_with_identical_weights(extracted, tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_config(extracted, tmp_path / "ddp", epochs=1)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(DDP_SCRIPT), str(config), str(tmp_path)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    digests = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert digests[0]["digest"] == digests[1]["digest"]
    assert digests[0]["world_size"] == 2
    assert len(_metrics(tmp_path / "ddp" / "metrics.csv")) == 1


def test_resuming_a_run_that_stopped_early_trains_no_more(extracted, tmp_path):
    from exaslide.train.checkpoint import load_training_state, save_training_state

    values = _config(extracted, tmp_path / "run", epochs=6, max_steps=2, patience=None)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    train(TrainConfig(**values), progress=False)  # 6 epochs
    state = load_training_state(checkpoint)
    state["epoch"], state["history"] = 1, state["history"][:2]
    state["best"]["stale"] = 1  # as if epoch 1 had not improved
    save_training_state(checkpoint, {k: v for k, v in state.items() if k != "format"})
    again = train(TrainConfig(**{**values, "patience": 1}), resume=True, progress=False)
    assert again.resumed_from == 2 and again.stopped_early and len(again.history) == 2


def test_best_model_follows_validation_loss_when_auc_is_undefined():
    from exaslide.train.loop import _improved

    best = {"auc": None, "loss": None, "epoch": -1, "stale": 0}
    assert _improved(best, {"val_loss": 0.5, "val_auc": float("nan")})
    best.update(loss=0.5, epoch=0)
    assert _improved(best, {"val_loss": 0.4, "val_auc": float("nan")})
    assert not _improved(best, {"val_loss": 0.6, "val_auc": float("nan")})
    assert _improved(best, {"train_loss": 1.0})  # no validation: keep the latest


def test_a_bad_augmentation_fails_before_anything_is_written(extracted, tmp_path):
    from exaslide.errors import ExaslideError

    out = tmp_path / "run"
    config = TrainConfig(**_config(extracted, out, augment={
        "normalize": {"method": "reinhard", "reference": str(tmp_path / "missing.png")}}))
    with pytest.raises((ExaslideError, OSError), match=r"missing\.png"):
        train(config, progress=False)
    assert not out.exists()


class _Payload:
    """Stands for anything a pickle could smuggle into a checkpoint."""


def test_a_checkpoint_that_is_more_than_tensors_is_not_unpickled(tmp_path, monkeypatch):
    import numpy as np
    import torch

    from exaslide.integrity import atomic_write
    from exaslide.train.checkpoint import FORMAT, load_training_state, save_training_state

    path = tmp_path / "last.pt"
    save_training_state(path, {"epoch": 3, "rng": [{"numpy": np.float64(1.5)}]})
    assert load_training_state(path)["epoch"] == 3  # ours: tensors and plain values
    with atomic_write(path) as tmp:
        torch.save({"format": FORMAT, "payload": _Payload()}, tmp)
    with pytest.raises(TrainingError, match="loading it could run code"):
        load_training_state(path)
    monkeypatch.setenv("EXASLIDE_TRUST_MODELS", "1")
    assert isinstance(load_training_state(path)["payload"], _Payload)
