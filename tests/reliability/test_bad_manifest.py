"""Catalogue: bad cohort manifests are refused up front, before any slide is touched.

Each bad manifest has one good row (line 2) and one bad row (line 3). ``exaslide extract``
and ``exaslide mask --manifest`` must exit 2 with one line naming the manifest, the line,
the column and the rule, and write nothing (not even the output folder).
"""

from __future__ import annotations

import pytest
from harness import exaslide

HEADER = b"slide_id,path,annotation,label,split\n"
GOOD = b"good,good.tif,,normal,train\n"

# (case, bad row bytes, column of the bad field, words of the rule)
CASES = [
    ("latin-1", "café,café.tif,,,\n".encode("latin-1"), None, "UTF-8"),
    ("300-char id", b"a" * 300 + b",x.tif,,,\n", "column 1 (slide_id)", "200 bytes"),
    ("NUL in id", b'"a\x00b",x.tif,,,\n', "column 1 (slide_id)", "control character"),
    ("newline in id", b'"a\nb",x.tif,,,\n', "column 1 (slide_id)", "control character"),
    ("NUL in path", b'bad,"x\x00.tif",,,\n', "column 2 (path)", "NUL"),
    ("newline in path", b'bad,"x\n.tif",,,\n', "column 2 (path)", "line break"),
    ("dot-dot id", b"..,x.tif,,,\n", "column 1 (slide_id)", "'.'"),
    ("slash id", b"a/b,x.tif,,,\n", "column 1 (slide_id)", "separator"),
    ("leading space id", b'" a",x.tif,,,\n', "column 1 (slide_id)", "space"),
    ("duplicate id", b"good,other.tif,,,\n", "column 1 (slide_id)", "duplicate"),
    ("empty path", b"other,,,,\n", "column 2 (path)", "empty"),
]


def _commands(manifest, out):
    return {
        "extract": ("extract", manifest, "--out", out, "--scheduler", "inline"),
        "mask": ("mask", "--manifest", manifest, "--level", 2, "--out", out),
    }


@pytest.mark.parametrize("command", ["extract", "mask"])
@pytest.mark.parametrize(("case", "row", "column", "rule"), CASES, ids=[c[0] for c in CASES])
def test_bad_manifest_is_refused_up_front(tmp_path, watch, command, case, row, column, rule):
    manifest = tmp_path / "bad.csv"
    manifest.write_bytes(HEADER + GOOD + row)
    out = tmp_path / "O"
    check = watch()
    result = exaslide(*_commands(manifest, out)[command])
    assert result.code == 2, result.stderr
    line = result.one_line_error()
    assert str(manifest) in line and "line 3" in line and rule in line, line
    if column is not None:
        assert column in line, line
    assert not out.exists()
    check()


def test_a_utf8_manifest_with_a_bom_and_accents_is_read(tmp_path):
    from exaslide.manifest import read_manifest

    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + HEADER + "café,café.tif,,,\n".encode())
    (entry,) = read_manifest(manifest)
    assert entry.slide_id == "café" and entry.path == tmp_path / "café.tif"


@pytest.mark.parametrize("name", [".hidden.tif", "a" * 240 + ".tif"])
def test_a_slide_file_whose_name_cannot_be_an_id_is_refused(tmp_path, watch, synth_slide,
                                                            name):
    """``exaslide mask SLIDE`` names its outputs after the file: the same id rule."""
    slide = tmp_path / name
    slide.write_bytes(synth_slide.path.read_bytes())
    out = tmp_path / "O"
    check = watch()
    result = exaslide("mask", slide, "--level", 2, "--out", out)
    assert result.code == 2, result.stderr
    line = result.one_line_error()
    assert "rename the file" in line, line
    assert not out.exists()
    check()
