"""Catalogue: training configuration values are typed and checked before anything runs.

YAML 1.1 reads ``1e-3`` as a string, ``--set`` values arrive as text, and a value of the
wrong shape used to surface as an internal ``TypeError`` deep in training (or, for
``classes=tumour``, as six one-letter classes). Every value from the YAML file, a named
option or ``--set`` now goes through one typed validation: numbers are coerced from text,
a wrong value exits 2 with one line naming the key, the value and what was expected, and
nothing is written (not even the output folder).
"""

from __future__ import annotations

import pytest
import yaml
from harness import exaslide

ENV = {"OMP_NUM_THREADS": "1"}

# (case, KEY=VALUE, words the one error line must hold)
BAD = [
    ("fractional epochs", "epochs=2.5", ["epochs", "expected an integer", "got 2.5"]),
    ("one mean", "mean=1", ["mean", "3 numbers", "got 1"]),
    ("one class", "classes=tumour", ["classes", "at least 2", "'tumour'"]),
    ("negative batch size", "batch_size=-1", ["batch_size", ">= 1", "got -1"]),
    ("text learning rate", "lr=abc", ["lr", "expected a number", "got 'abc'"]),
    ("unknown key", "lrr=0.1", ["unknown option 'lrr'", "did you mean 'lr'"]),
    ("unknown augment key", "augment.hed.sgima=0.1",
     ["unknown option 'augment.hed.sgima'", "did you mean 'augment.hed.sigma'"]),
    ("text augment value", "augment.hed.sigma=lots",
     ["augment.hed.sigma", "expected a number", "got 'lots'"]),
    ("unknown device", "device=gpu0", ["device", "gpu0", "auto, cpu, cuda, cuda:N, mps"]),
    ("unknown optimizer", "optimizer=lbfgs", ["optimizer", "'adamw'", "'sgd'", "'lbfgs'"]),
]


def _nested(key: str, value):
    """``a.b=1`` as ``{"a": {"b": 1}}``."""
    *parents, last = key.split(".")
    data = {last: value}
    for part in reversed(parents):
        data = {part: data}
    return data


def _write_config(tmp_path, out, **extra) -> object:
    path = tmp_path / "train.yaml"
    data = {"data": str(tmp_path / "data"), "out": str(out), **extra}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("where", ["--set", "yaml"])
@pytest.mark.parametrize("case, setting, words", BAD, ids=[c[0] for c in BAD])
def test_bad_value_is_one_line_and_writes_nothing(tmp_path, watch, where, case, setting,
                                                  words):
    out = tmp_path / "run"
    key, _, value = setting.partition("=")
    if where == "yaml":
        config = _write_config(tmp_path, out, **_nested(key, yaml.safe_load(value)))
        args = ("train", config)
    else:
        args = ("train", _write_config(tmp_path, out), "--set", setting)
    check = watch()
    result = exaslide(*args, env=ENV)
    assert result.code == 2, result.stderr
    line = result.one_line_error()
    for word in words:
        assert word in line, line
    if where == "yaml":
        assert "train.yaml" in line, line  # the file the bad value came from
    assert not out.exists()
    check(out)


def test_named_options_are_validated_the_same_way(tmp_path, watch):
    out = tmp_path / "run"
    config = _write_config(tmp_path, out)
    check = watch()
    result = exaslide("train", config, "--epochs", "2.5", env=ENV)
    assert result.code == 2, result.stderr
    line = result.one_line_error()
    assert "--epochs" in line and "expected an integer, got 2.5" in line, line
    assert not out.exists()
    check(out)


def test_check_prints_the_resolved_config_and_writes_nothing(tmp_path, watch):
    out = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {tmp_path / 'data'}\nout: {out}\nepochs: '10'\n"
                      "augment: {hed: {sigma: 5e-2}}\n")
    check = watch()
    result = exaslide("train", config, "--set", "lr=1e-3", "--set", "classes=[a, b, c]",
                      "--check", env=ENV)
    assert result.code == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["lr"] == 0.001 and resolved["epochs"] == 10
    assert resolved["classes"] == ["a", "b", "c"]
    assert resolved["augment"] == {"hed": {"sigma": 0.05}}
    assert not out.exists()
    check(out)


def test_lr_1e3_in_yaml_trains(extracted, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {extracted}\nout: {out}\nlr: 1e-3\nepochs: 1\nmax_steps: 1\n"
                      "batch_size: 8\nworkers: 0\npatch_size: null\npatience: null\n"
                      "tensorboard: false\ndevice: cpu\nval_split: none\nval_fraction: 0\n")
    result = exaslide("train", config, "--set", "weight_decay=1e-5", env=ENV)
    assert result.code == 0, result.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 0.001 and saved["weight_decay"] == 1e-5
    assert (out / "model.pt").is_file()
