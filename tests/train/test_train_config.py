"""TrainConfig: YAML, overrides, dotted --set, validation errors."""

from __future__ import annotations

import pytest

from exaslide.errors import TrainingError
from exaslide.train import TrainConfig, load_config


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


def test_values_are_typed_and_the_resolved_yaml_round_trips(tmp_path):
    from exaslide.train.config import save_config

    path = tmp_path / "c.yaml"  # YAML 1.1 reads 1e-3 and 5e-2 as strings
    path.write_text("lr: 1e-3\nepochs: '3'\nclasses: [0, 1]\ndevice: ' CUDA:1 '\n"
                    "augment: {hed: {sigma: 5e-2}, color_jitter: {hue: [-0.1, 0.1]}}\n")
    config = load_config(path)
    assert (config.lr, config.epochs, config.classes) == (0.001, 3, ["0", "1"])
    assert config.device == "cuda:1"  # checked for its form only; availability at train
    assert config.augment == {"hed": {"sigma": 0.05}, "color_jitter": {"hue": [-0.1, 0.1]}}
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config


def test_errors_are_one_line_naming_where_the_value_came_from(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2.5\nmean: 1\n")
    with pytest.raises(TrainingError) as info:
        load_config(path, {"lr": "abc"}, ["classes=tumour"])
    message = str(info.value)
    assert "\n" not in message
    for part in (f"{path}: epochs: expected an integer, got 2.5",
                 f"{path}: mean: expected a list of 3 numbers, got 1",
                 "--lr: lr: expected a number, got 'abc'",
                 "--set: classes: expected a list of at least 2 distinct class names, got "
                 "'tumour'"):
        assert part in message, message
    with pytest.raises(TrainingError, match=r"'lr' has no nested options"):
        load_config(None, {}, ["lr.x=1"])
    with pytest.raises(TrainingError, match=r"not valid YAML: .* line 1") as info:
        load_config(None, {}, ["lr=["])
    assert "\n" not in str(info.value)


def test_direct_construction_and_assignment_are_checked():
    with pytest.raises(TrainingError, match="training config: epochs: expected an integer"):
        TrainConfig(epochs=2.5)
    with pytest.raises(TrainingError, match=r"unknown option 'augment.hed.sgima' \(did you "
                                            r"mean 'augment.hed.sigma'\?\)"):
        TrainConfig(augment={"hed": {"sgima": 0.1}})
    config = TrainConfig()
    config.batch_size = "8"
    assert config.batch_size == 8
    with pytest.raises(TrainingError, match="batch_size: expected a value >= 1, got 0"):
        config.batch_size = 0
    config.classes.append("normal")  # changed in place: train() validates a copy
    with pytest.raises(TrainingError, match="distinct class names"):
        config.validate()


@pytest.mark.parametrize("augment, message", [
    ({"hed": "yes please"}, "augment.hed: expected true, false or a mapping of options"),
    ({"color_jitter": {"hue": "x"}}, "expected a number or a [low, high] pair"),
    ({"normalize": {"method": "macenko"}}, "exactly one of 'reference'"),
    ({"normalize": {"reference": "a.png"}}, "augment.normalize.method: missing"),
    ({"normalize": {"method": "reinhard", "reference": "a.png", "alpha": 1}},
     "only ['min_std'] with method 'reinhard'"),
])
def test_augment_section_has_a_known_shape(augment, message):
    with pytest.raises(TrainingError) as info:
        TrainConfig(augment=augment)
    assert message in str(info.value)


def test_shuffle_and_window_default_to_a_full_shuffle_and_are_checked(tmp_path):
    config = TrainConfig()
    assert (config.shuffle, config.window) == ("full", 1024)
    path = tmp_path / "c.yaml"
    path.write_text("shuffle: blocks\nwindow: '256'\n")
    assert (load_config(path).shuffle, load_config(path).window) == ("blocks", 256)
    for values, message in [
        ({"shuffle": 3}, "shuffle: expected one of 'full', 'blocks', got 3"),
        ({"shuffle": "block"}, "shuffle: expected one of 'full', 'blocks', got 'block'"),
        ({"window": "big"}, "window: expected an integer, got 'big'"),
        ({"window": True}, "window: expected an integer, got true"),
        ({"window": 2.5}, "window: expected an integer, got 2.5"),
        ({"window": 0}, "window: expected a value >= 1, got 0"),
        ({"source": "shards", "shuffle": "blocks"},
         "shuffle: expected 'full' with source 'shards'"),
    ]:
        with pytest.raises(TrainingError) as info:
            TrainConfig(**values)
        assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(TrainingError, match="--set: shuffle: expected 'full' with source"):
        load_config(None, {}, ["source=shards", "shuffle=blocks"])
    config.shuffle = "blocks"
    config.source = "shards"  # assigned one by one: train() validates the whole again
    with pytest.raises(TrainingError, match="with source 'shards'"):
        config.validate()
