"""Noun groups (`embed patches|slides|figures`, `evaluate heatmaps|stage|retrieval`), the
old names kept for one release with a note, and `--config` sections for subcommands."""

from __future__ import annotations

from click.testing import CliRunner

from exaslide.cli.main import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_groups_list_their_subcommands():
    assert {"patches", "slides", "figures"} <= set(cli.commands["embed"].commands)
    assert {"heatmaps", "stage", "retrieval"} <= set(cli.commands["evaluate"].commands)
    shown = invoke("--help").output
    assert "embed-slides" not in shown and "evaluate-retrieval" not in shown  # hidden


def test_old_names_still_work_with_a_note(tmp_path):
    old = invoke("embed-slides", tmp_path, "--out", tmp_path / "o")
    assert "`exaslide embed-slides` is now `exaslide embed slides`" in old.output
    assert old.exit_code == 2 and "not an embedding store" in old.output  # it really ran
    legacy = invoke("embed", "small-cnn", tmp_path / "missing", "--out", tmp_path / "o")
    assert "is now `exaslide embed patches ARGS`" in legacy.output
    assert legacy.exit_code == 2 and "missing" in legacy.output
    retrieval = invoke("evaluate-retrieval", "--help")
    assert retrieval.exit_code == 0 and "--queries" in retrieval.output


def test_config_sections_reach_group_subcommands(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("embed:\n  slides:\n    method: mosaic\n    mosaic_size: 0\n")
    done = invoke("--config", config, "embed", "slides", tmp_path, "--out", tmp_path / "o")
    assert done.exit_code == 2 and "--mosaic-size" in done.output  # the config's 0 arrived
    config.write_text("embed:\n  slides:\n    nonsense: 1\n")
    done = invoke("--config", config, "embed", "slides", tmp_path, "--out", tmp_path / "o")
    assert done.exit_code == 2 and "embed slides has no option 'nonsense'" in done.output
    config.write_text("embed:\n  nothing: {a: 1}\n")
    done = invoke("--config", config, "info", tmp_path)
    assert done.exit_code == 2 and "embed has no option 'nothing'" in done.output


def test_the_cli_starts_without_importing_torch_or_dask():
    import subprocess
    import sys

    code = ("import sys, exaslide.cli.main; "
            "print(sorted(m for m in ('torch', 'distributed', 'faiss') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
