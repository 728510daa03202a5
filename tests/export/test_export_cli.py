"""`exaslide export geojson` through click (a group that prints errors as exaslide does)."""

from __future__ import annotations

import json

from click.testing import CliRunner
from qupath_layout import check_layout

from exaslide.cli import export
from exaslide.cli.main import ExaslideGroup


def _run(*args):
    group = ExaslideGroup("exaslide")
    group.add_command(export.command)
    return CliRunner().invoke(group, ["export", "geojson", *map(str, args)])


def test_exports_and_refuses_bad_input(tmp_path, synth_slide, heatmap_folder,
                                       detections_csv):
    out = tmp_path / "out" / "slide.geojson"
    args = [synth_slide.path, "--annotations", synth_slide.annotation_path, "--heatmap",
            heatmap_folder, "--detections", detections_csv, "--tissue"]
    result = _run(*args, "--out", out)
    assert result.exit_code == 0, result.output
    assert "2 tumour, 3 Ignore*" in result.output and "96 tiles, 4 detections" in result.output
    check_layout(json.loads(out.read_text(encoding="utf-8")))
    assert [p.name for p in out.parent.iterdir()] == ["slide.geojson"]
    again = _run(*args, "--out", out)
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.output
    assert _run(*args, "--out", out, "--overwrite").exit_code == 0
    npy_json = heatmap_folder / "slide.heatmap.json"
    refused = _run(*args, "--out", npy_json, "--overwrite")
    assert refused.exit_code == 2 and "this is an input" in refused.output
    missing = _run(synth_slide.path, "--annotations", tmp_path / "no.xml", "--out",
                   tmp_path / "m.geojson")
    assert missing.exit_code == 2 and "no.xml" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    wrong = _run("--heatmap", heatmap_folder / "slide.heatmap.npy", "--out",
                 tmp_path / "w.geojson", "--from", tmp_path, "other")
    assert wrong.exit_code == 2
    assert _run(synth_slide.path, "--out", tmp_path / "x.tif").exit_code == 2
    assert not (tmp_path / "m.geojson").exists() and not (tmp_path / "w.geojson").exists()
