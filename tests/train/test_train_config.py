"""TrainConfig: YAML, overrides, dotted --set, validation errors."""

from __future__ import annotations

import pytest

from exaslide.errors import TrainingError
from exaslide.train import load_config


def test_yaml_then_overrides_then_sets(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: out\nepochs: 3\nlr: 0.01\naugment: {hed: {sigma: 0.1}}\n")
    config = load_config(path, {"epochs": 5, "lr": None},
                         ["augment.hed.sigma=0.02", "batch_size=8", "pretrained=null"])
    assert config.epochs == 5 and config.lr == 0.01 and config.batch_size == 8
    assert config.augment == {"hed": {"sigma": 0.02}} and config.pretrained is None
    assert load_config(None, {}, ["augment.color_jitter.hue=0.05"]).augment == \
        {"flip_rot90": True, "hed": True, "color_jitter": {"hue": 0.05}}


@pytest.mark.parametrize("text, message", [
    ("epochs: 0\n", "epochs"),
    ("optimizer: lbfgs\n", "optimizer"),
    ("epoch: 3\n", "unknown option"),
    ("- a\n", "expected a mapping"),
    ("lr: [\n", "not valid YAML"),
])
def test_bad_configs_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(TrainingError, match=message):
        load_config(path)
    with pytest.raises(TrainingError, match="KEY=VALUE"):
        load_config(None, {}, ["novalue"])
