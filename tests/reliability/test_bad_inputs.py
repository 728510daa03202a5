"""The catalogue of bad inputs that predate this suite, through the real CLI: hostile and
broken annotation files, corrupt, truncated and unopenable slides, paths that escape, a
wrong-typed config. Each: the exit code, one clean error line naming the file, and
nothing changed outside the output folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import exaslide

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<ASAP_Annotations><Annotations><Annotation Name="&lol3;" Type="Polygon"
PartOfGroup="Tumor"><Coordinates><Coordinate Order="0" X="1" Y="1"/></Coordinates>
</Annotation></Annotations></ASAP_Annotations>"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ASAP_Annotations><Annotations><Annotation Name="&xxe;" Type="Polygon"
PartOfGroup="Tumor"><Coordinates/></Annotation></Annotations></ASAP_Annotations>"""

ANNOTATIONS = {
    "billion_laughs.xml": (BILLION_LAUGHS, "billion_laughs.xml"),
    "xxe.xml": (XXE, "xxe.xml"),
    "truncated.xml": ("<ASAP_Annotations><Annotations><Annotation Name=", "truncated.xml"),
    "not_json.geojson": ("{\"type\": \"FeatureCollection\", \"features\": [", "not_json"),
    "binary.xml": ("\x00\x01\x02\x03garbage", "binary.xml"),
}


@pytest.mark.parametrize("name", sorted(ANNOTATIONS))
def test_hostile_or_broken_annotations_exit_2_and_write_nothing(name, synth_slide, tmp_path,
                                                                 watch):
    text, named = ANNOTATIONS[name]
    path = tmp_path / name
    path.write_text(text, encoding="latin-1")
    check = watch()
    done = exaslide("mask", synth_slide.path, "--annotations", path, "--level", 2,
                    "--out", tmp_path / "out")
    assert done.code == 2
    line = done.one_line_error()
    assert named in line
    assert "root:" not in done.stderr + done.stdout  # the XXE did not read /etc/passwd
    check(tmp_path / "out")
    assert not list((tmp_path / "out").glob("*_mask.png")) if (tmp_path / "out").exists() \
        else True


def corrupt_slides(tmp_path, synth_slide):
    """Slides that must be refused: garbage, an empty file, a truncated TIFF, a directory."""
    data = Path(synth_slide.path).read_bytes()
    slides = {"garbage.svs": b"this is not a slide at all" * 10, "empty.tif": b"",
              "truncated.tif": data[: len(data) // 3], "header_only.tif": data[:8]}
    for name, content in slides.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "folder.svs").mkdir()
    return [*slides, "folder.svs"]


@pytest.mark.parametrize("command", ["info", "mask"])
def test_corrupt_slides_exit_2_with_one_line(command, synth_slide, tmp_path, watch):
    names = corrupt_slides(tmp_path, synth_slide)
    check = watch()
    for name in names:
        args = [tmp_path / name] + (["--level", 0, "--out", tmp_path / "out"]
                                    if command == "mask" else [])
        done = exaslide(command, *args)
        assert done.code == 2, (name, done.stderr)
        assert name in done.one_line_error()
    check(tmp_path / "out")


def test_real_broken_slides_are_refused(shared_data, tmp_path):
    fixtures = shared_data / "slides" / "openslide-python-fixtures"
    for name in ("unopenable.tiff", "unreadable.svs"):
        done = exaslide("mask", fixtures / name, "--level", 0, "--out", tmp_path / "out")
        assert done.code == 2, done.stderr
        assert name in done.one_line_error()


def test_a_corrupt_slide_in_a_batch_fails_alone(synth_slide, tmp_path, watch):
    corrupt_slides(tmp_path, synth_slide)
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,path,annotation,label,split\n"
                        f"good,{synth_slide.path},{synth_slide.annotation_path},tumour,\n"
                        "trunc,truncated.tif,,normal,\nempty,empty.tif,,normal,\n")
    check = watch()
    done = exaslide("mask", "--manifest", manifest, "--level", 2, "--out", tmp_path / "out")
    assert done.code == 1 and "Traceback" not in done.stderr
    assert "3 slides: 1 done, 0 already done, 2 failed" in done.stdout
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("exaslide: error:")]
    assert len(errors) == 2 and "truncated.tif" in errors[0] and "empty.tif" in errors[1]
    assert (tmp_path / "out" / "good_mask.png").is_file()
    assert not list((tmp_path / "out").glob("trunc_*"))
    check(tmp_path / "out")


def test_absurd_read_requests_are_refused(synth_slide, tmp_path):
    for args in (["--patch-size", 10**7], ["--patch-size", -5], ["--stride", 0],
                 ["--min-tissue", "nan"]):
        done = exaslide("extract", synth_slide.path, "--out", tmp_path / "o", *args)
        assert done.code == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_an_output_folder_that_is_a_file_is_one_line(synth_slide, tmp_path, watch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    check = watch()
    done = exaslide("mask", synth_slide.path, "--level", 2, "--out", blocker)
    assert done.code == 2 and "file.txt" in done.one_line_error()
    check()
    assert blocker.read_text() == "keep me"


def test_wrong_typed_config_file_is_one_line(synth_slide, tmp_path, watch):
    config, broken = tmp_path / "c.yaml", tmp_path / "broken.yaml"
    config.write_text("mask:\n  level: two\n")
    broken.write_text("mask: [1, 2\n")
    check = watch()
    done = exaslide("--config", config, "mask", synth_slide.path, "--out", tmp_path / "out")
    assert done.code == 2 and "level" in done.stderr and "Traceback" not in done.stderr
    done = exaslide("--config", broken, "mask", synth_slide.path, "--out", tmp_path / "out")
    assert done.code == 2 and "not valid YAML" in done.stderr
    check()
