"""The cohort manifest: columns, relative paths, extra columns and clear errors."""

from __future__ import annotations

import pytest

from exaslide.errors import ManifestError
from exaslide.manifest import read_manifest, write_manifest


def test_round_trip_relative_paths_and_extra_columns(tmp_path):
    rows = [{"slide_id": "a", "path": "slides/a.tif", "annotation": "a.xml", "label": "tumour",
             "split": "train", "centre": 1},
            {"slide_id": "b", "path": "/abs/b.svs", "annotation": "", "label": "normal",
             "split": "test", "centre": 2}]
    path = write_manifest(tmp_path / "m.csv", rows)
    a, b = read_manifest(path)
    assert a.path == tmp_path / "slides" / "a.tif" and a.annotation == tmp_path / "a.xml"
    assert str(b.path) == "/abs/b.svs" and b.annotation is None
    assert a.extra == {"centre": "1"} and b.label == "normal" and b.split == "test"


@pytest.mark.parametrize(("text", "message"), [
    ("slide_id,path\na,a.tif\n", "missing column"),
    ("slide_id,path,annotation,label,split\na,a.tif,,,\na,b.tif,,,\n", r"m.csv:3: duplicate"),
    ("slide_id,path,annotation,label,split\n,a.tif,,,\n", r"m.csv:2: slide_id and path"),
    ("slide_id,path,annotation,label,split\n../x,a.tif,,,\n", "path separator"),
])
def test_malformed_manifests(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / "m.csv")


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(tmp_path / "nope.csv")
