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
    ("slide_id,path,annotation,label,split\na,a.tif,,,\na,b.tif,,,\n",
     r"m.csv: line 3, column 1 \(slide_id\): duplicate slide_id 'a' \(first on line 2\)"),
    ("slide_id,path,annotation,label,split\n,a.tif,,,\n",
     r"m.csv: line 2, column 1 \(slide_id\): \(empty\) must not be empty"),
    ("slide_id,path,annotation,label,split\na,,,,\n", r"line 2, column 2 \(path\)"),
    ("slide_id,path,annotation,label,split\n../x,a.tif,,,\n", "path separator"),
    # a quoted field spanning lines: the next record's line is still right
    ('notes,slide_id,path,annotation,label,split\n"two\nlines",a,a.tif,,,\nx,.b,b.tif,,,\n',
     r"line 4, column 2 \(slide_id\): '\.b' must not start with '\.'"),
    ("slide_id,path,annotation,label,split\na,a.tif,,,tr\x00ain\n",
     r"line 2, column 5 \(split\): 'tr\\x00ain' must not contain a NUL"),
    ("slide_id,path,annotation,label,split\na,a,b,c,d,e\n", "6 fields but the header has 5"),
    ('slide_id,path,annotation,label,split\na,a.tif,"x\n.xml",,\n', "line break"),
])
def test_malformed_manifests(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / "m.csv")


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(tmp_path / "nope.csv")


def test_non_utf8_manifest_names_line_and_byte(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"slide_id,path,annotation,label,split\n"
                                     b"a,a.tif,,,\nb,b\xe9.tif,,,\n")
    with pytest.raises(ManifestError, match=r"m.csv: line 3, byte 4 \(offset 51\): not UTF-8"
                                            r" text \(byte 0xe9\); save the manifest as UTF-8"):
        read_manifest(tmp_path / "m.csv")


def test_blank_lines_and_spaces_around_cells(tmp_path):
    (tmp_path / "m.csv").write_text("slide_id, path ,annotation,label,split\n\n"
                                    "a, a.tif , ,tumour ,\n\nb,b.tif,,,\n")
    a, b = read_manifest(tmp_path / "m.csv")
    assert a.path == tmp_path / "a.tif" and a.annotation is None and a.label == "tumour"
    assert b.slide_id == "b"


def test_write_manifest_refuses_an_id_that_cannot_name_files(tmp_path):
    from exaslide.naming import SlideIdError

    with pytest.raises(SlideIdError, match="200 bytes"):
        write_manifest(tmp_path / "m.csv", [{"slide_id": "x" * 201, "path": "x.tif"}])
    assert not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize(("slide_id", "rule"), [
    ("", "empty"), ("a" * 201, "201 bytes"), ("é" * 101, "202 bytes"), ("a/b", "separator"),
    ("a\\b", "separator"), ("a\x00b", "control"), ("a\nb", "control"), ("a\tb", "control"),
    (".", "'.'"), ("..", "'.'"), (".hidden", "'.'"), (" a", "space"), ("a ", "space"),
    ("a\udc80", "Unicode"),
])
def test_check_slide_id_refuses(slide_id, rule):
    from exaslide.naming import SlideIdError, check_slide_id, is_valid_slide_id

    with pytest.raises(SlideIdError, match=rule):
        check_slide_id(slide_id)
    assert not is_valid_slide_id(slide_id)


def test_check_slide_id_accepts():
    from exaslide.naming import check_slide_id

    for slide_id in ("tumor_001", "a.b", "a" * 200, "é" * 100, "patient 7 (left)", "a..b"):
        assert check_slide_id(slide_id) == slide_id


def test_slide_stem_goes_through_the_same_rule():
    from exaslide.naming import SlideIdError, slide_stem

    assert slide_stem("/x/a.v1.svs") == "a.v1"
    for bad in ("/x/.hidden.tif", "/x/" + "a" * 250 + ".tif", "/x/a\nb.svs"):
        with pytest.raises(SlideIdError, match="rename the file"):
            slide_stem(bad)


def test_a_slide_given_as_manifest_is_named_not_read(tmp_path, synth_slide, monkeypatch):
    """A slide passed where a manifest goes is refused by its magic bytes, and a file
    too large for a manifest before it is read into memory."""
    import exaslide.manifest as manifest

    with pytest.raises(ManifestError, match=r"is a TIFF \(slide\) file, not a manifest"):
        read_manifest(synth_slide.path)
    big = tmp_path / "big.csv"
    big.write_text("slide_id,path,annotation,label,split\n" + "a,b.tif,,,\n" * 100)
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 500)
    with pytest.raises(ManifestError, match="too large for a manifest"):
        read_manifest(big)
