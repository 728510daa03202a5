"""`exaslide export geojson` as a separate process, the way a user runs it: from an exaslide
output folder (--from) to a file exaslide reads back, and bad input (hostile XML, a slide id
that is a path, a truncated heatmap, forged geometry) is one line with exit code 2 that
writes nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from exaslide.annotations import TUMOUR, read_annotations


@pytest.fixture
def output_folder(tmp_path, synth_slide, heatmap_folder, detections_csv):
    """An exaslide output folder: a cohort manifest, heatmaps and FROC detections."""
    from exaslide.manifest import write_manifest

    root = tmp_path / "out"
    (root / "cohort").mkdir(parents=True)
    write_manifest(root / "cohort" / "manifest.csv", [
        {"slide_id": "slide", "path": str(synth_slide.path),
         "annotation": str(synth_slide.annotation_path), "label": "tumour", "split": "test"}])
    shutil.copytree(heatmap_folder, root / "heatmaps")
    (root / "evaluation").mkdir()
    shutil.copy(detections_csv, root / "evaluation" / "detections.csv")
    return root


def test_export_from_an_output_folder_round_trips(tmp_path, output_folder, cli):
    out = tmp_path / "qupath" / "slide.geojson"
    done = cli.run("export", "geojson", "slide", "--from", output_folder, "--out", out,
                    check_rc=0)
    assert str(out) in done.stdout
    collection = json.loads(out.read_text(encoding="utf-8"))
    assert collection["type"] == "FeatureCollection"
    kinds = {f["properties"]["objectType"] for f in collection["features"]}
    assert kinds == {"annotation", "tile", "detection"}
    back = read_annotations(out)
    # the slide's three tumours make two polygons (two overlap); its three exclusions are
    # their holes, and Ignore* annotations too
    assert "2 tumour, 3 Ignore*" in done.stdout
    assert back.labels() == {"tumour": 2, "exclusion": 3, "heatmap": 96, "tp": 1, "fp": 1,
                             "itc": 1, "detection": 1}  # none of them reads as tumour
    assert sum(len(a.geometry.interiors) for a in back if a.label == TUMOUR) == 3


def test_export_bad_input_is_one_line_and_writes_nothing(tmp_path, output_folder,
                                                        synth_slide, cli):
    out = tmp_path / "x.geojson"
    hostile = tmp_path / "laughs.xml"
    hostile.write_text('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
                       '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>\n'
                       '<ASAP_Annotations><Annotations><Annotation Name="&lol2;" '
                       'PartOfGroup="_0" Type="Polygon"/></Annotations></ASAP_Annotations>')
    error = cli.one_line_error(cli.run("export", "geojson", synth_slide.path, "--annotations",
                                    hostile, "--out", out))
    assert "laughs.xml" in error
    assert "must not contain a path separator" in cli.one_line_error(cli.run(
        "export", "geojson", "../../etc/passwd", "--from", output_folder, "--out", out))
    assert "no slide 'other'" in cli.one_line_error(cli.run(
        "export", "geojson", "other", "--from", output_folder, "--out", out))
    truncated = output_folder / "heatmaps" / "slide.heatmap.npy"
    truncated.write_bytes(truncated.read_bytes()[:100])
    assert "slide.heatmap.npy" in cli.one_line_error(cli.run(
        "export", "geojson", "slide", "--from", output_folder, "--out", out))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["laughs.xml", "out"]


def test_export_refuses_a_heatmap_with_absurd_geometry(tmp_path, synth_slide, cli):
    folder = tmp_path / "heatmaps"  # forged: write_heatmap itself refuses such geometry
    folder.mkdir()
    np.save(folder / "slide.heatmap.npy", np.full((2, 2), 0.5, np.float32))
    (folder / "slide.heatmap.json").write_text(json.dumps(
        {"level0_size": [10**12, 10**12], "origin": [0, 0], "cell": -5,
         "classes": ["normal", "tumour"]}))
    done = cli.run("export", "geojson", "--heatmap", folder / "slide.heatmap.npy",
                    "--out", tmp_path / "h.geojson")
    assert "cell" in cli.one_line_error(done)
    assert not (tmp_path / "h.geojson").exists()
