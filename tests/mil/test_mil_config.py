"""The MIL config: typed values, one-line errors naming where a value came from."""

from __future__ import annotations

import pytest

from exaslide.mil.config import MILConfig, load_mil_config
from exaslide.mil.errors import MILError

BASE = ["features=f", "manifest=m.csv"]


def test_yaml_and_sets_resolve_with_task_defaults(tmp_path):
    path = tmp_path / "mil.yaml"
    path.write_text("features: f\nmanifest: m.csv\nlr: 1e-3\ntask: camelyon17\n")
    config = load_mil_config(path, ["model=clam_sb", "hidden=[64, 32]", "epochs=3"])
    assert config.lr == pytest.approx(1e-3) and config.model == "clam_sb"
    assert config.hidden == [64, 32] and config.epochs == 3
    assert config.resolved_label_column == "slide_class"
    assert config.resolved_classes == ["negative", "itc", "micro", "macro"]


@pytest.mark.parametrize(("sets", "message"), [
    (["epoch=3"], "--set: unknown option 'epoch' (did you mean 'epochs'?)"),
    (["lr=-1"], "--set: lr: expected a value > 0, got -1"),
    (["model=abmi"], "--set: model: expected one of 'meanpool', 'abmil', 'clam_sb', "
                     "'transmil', got 'abmi'"),
    (["epochs=2.5"], "--set: epochs: expected an integer, got 2.5"),
    (["cv_folds=2"], "--set: cv_folds: expected a value >= 3, got 2"),
    (["classes=[a, A]"], "--set: classes: expected a list of at least 2 distinct class names"),
    (["hidden=[1, 2, 3]"], "--set: hidden: model abmil takes [L, D], got [1, 2, 3]"),
    (["heatmap_score=instance"], "--set: heatmap_score: 'instance' needs model clam_sb or "
                                 "meanpool"),
    (["x"], "--set 'x': expected KEY=VALUE"),
    (["augment.hed=1"], "expected KEY=VALUE with a top-level KEY"),
])
def test_bad_values_are_one_line_naming_the_key(sets, message):
    with pytest.raises(MILError) as info:
        load_mil_config(None, BASE + sets)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_file_key_names_the_file_and_assignment_is_checked(tmp_path):
    path = tmp_path / "mil.yaml"
    path.write_text("features: f\nmanifest: m.csv\npatience: zero\n")
    with pytest.raises(MILError, match=r"mil.yaml: patience: expected an integer, got 'zero'"):
        load_mil_config(path)
    with pytest.raises(MILError, match="MIL config: manifest: missing"):
        MILConfig(features="f")
    config = MILConfig(features="f", manifest="m")
    with pytest.raises(MILError, match="epochs: expected a value >= 1, got 0"):
        config.epochs = 0
