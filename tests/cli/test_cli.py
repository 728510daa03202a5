"""The CLI contract: commands, JSON keys, output files, errors and exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def run(*args, check_rc=0):
    done = subprocess.run([sys.executable, "-m", "exaslide", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == check_rc, done.stderr
    return done


def test_info_json_keys(synth_slide):
    info = json.loads(run("info", synth_slide.path, "--json").stdout)
    for key in ("dimensions", "level_count", "level_dimensions", "level_downsamples", "mpp",
                "vendor", "backend", "associated_images"):
        assert key in info
    assert info["dimensions"] == [3072, 2304] and info["level_count"] == 3
    forced = json.loads(run("info", synth_slide.path, "--json", "--backend", "tifffile").stdout)
    assert forced["backend"] == "tifffile"
    assert "level 1: 768 x 576" in run("info", synth_slide.path).stdout


def test_mask_single_slide(synth_slide, tmp_path):
    out = tmp_path / "out"
    done = run("mask", synth_slide.path, "--annotations", synth_slide.annotation_path,
               "--level", 1, "--out", out)
    assert "figure:" in done.stdout
    mask = np.asarray(Image.open(out / "slide_mask.png"))
    assert mask.shape == (576, 768) and set(np.unique(mask)) == {0, 1, 2}
    for suffix in ("_overlay.png", "_figure.png", "_summary.json", "_mask.tif"):
        assert (out / f"slide{suffix}").exists()
    summary = json.loads((out / "slide_summary.json").read_text())
    assert summary["areas_um2"]["tumour"] == pytest.approx(
        summary["annotation_tumour_area_um2"], rel=0.01)


def test_errors_are_one_line_with_exit_code_2(tmp_path, synth_slide):
    done = run("info", tmp_path / "missing.svs", check_rc=2)
    assert done.stderr.strip().count("\n") == 0
    assert "missing.svs: no such file" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "bad.xml").write_text("<ASAP_Annotations><Annotations>")
    done = run("mask", synth_slide.path, "--annotations", tmp_path / "bad.xml", "--level", 2,
               "--out", tmp_path / "o", check_rc=2)
    assert "bad.xml" in done.stderr and "Traceback" not in done.stderr
    debug = run("--debug", "info", tmp_path / "missing.svs", check_rc=2)
    assert "Traceback" in debug.stderr
    run("mask", synth_slide.path, "--out", tmp_path / "o", check_rc=2)  # no --level/--mpp


def test_cohort_one_bad_slide_others_finish_and_resume(tmp_path):
    run("synth", tmp_path / "cohort", "--cohort", 3, "--width", 1024, "--height", 768,
        "--seed", 2)
    manifest = tmp_path / "cohort" / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    (tmp_path / "cohort" / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 100)
    rows.append(dict(rows[0], slide_id="broken", path="broken.tif", annotation=""))
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "masks"
    done = run("mask", "--manifest", manifest, "--mpp", 8, "--out", out, check_rc=1)
    assert "broken" in done.stderr and "3 done" in done.stdout and "1 failed" in done.stdout
    for row in rows[:3]:
        assert (out / f"{row['slide_id']}_mask.png").exists()
    status = json.loads((out / "mask_status.json").read_text())
    assert [s["status"] for s in status] == ["done", "done", "done", "failed"]
    again = run("mask", "--manifest", manifest, "--mpp", 8, "--out", out, check_rc=1)
    assert "3 already done" in again.stdout
    # a replaced input or a deleted output is redone; the others are still skipped
    first = tmp_path / "cohort" / rows[0]["path"]
    first.write_bytes(first.read_bytes())
    (out / f"{rows[1]['slide_id']}_overlay.png").unlink()
    third = run("mask", "--manifest", manifest, "--mpp", 8, "--out", out, check_rc=1)
    assert "2 done, 1 already done, 1 failed" in third.stdout


def test_synth_single_slide(tmp_path):
    done = run("synth", tmp_path, "--width", 1024, "--height", 768, "--tumours", 2,
               "--seed", 4)
    assert (tmp_path / "synth_4.tif").exists() and (tmp_path / "synth_4.xml").exists()
    assert "2 levels" in done.stdout
    bad = run("synth", tmp_path, "--width", 10, check_rc=2)
    assert "at least 256x256" in bad.stderr
    for args in (("--cohort", 0), ("--cohort", 2, "--tumour-fraction", 2)):
        assert "Traceback" not in run("synth", tmp_path, *args, check_rc=2).stderr


def test_slide_stem():
    from exaslide.cli.mask import slide_stem

    assert slide_stem("/x/a.v1.svs") == "a.v1" and slide_stem("b.ome.tif") == "b"
    assert slide_stem("CMU-1-Small-Region.svs") == "CMU-1-Small-Region"


def test_killed_cohort_run_leaves_no_partial_file_and_resumes(tmp_path):
    """SIGKILL in the middle of a cohort, then re-run: finished slides are kept, the rest
    are done, and no half-written or temporary file remains."""
    import signal
    import time

    run("synth", tmp_path / "c", "--cohort", 4, "--width", 4096, "--height", 3072,
        "--seed", 9)
    out = tmp_path / "masks"
    proc = subprocess.Popen([sys.executable, "-m", "exaslide", "mask", "--manifest",
                             str(tmp_path / "c" / "manifest.csv"), "--level", "1", "--out",
                             str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    # a slide is finished when its status file says done (written after all its
    # outputs; "committing", written before they are moved into place, and a kill
    # between its summary and its status leave it to be redone); not its temporary
    # sibling, ".<slide>.<random>.tmp.json", which is written first
    def statuses():
        import json

        done = []
        for path in out.glob("status/[!.]*.json"):
            try:
                if json.loads(path.read_text()).get("status") == "done":
                    done.append(path)
            except (OSError, ValueError):
                pass
        return done

    while not statuses() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in statuses())
    assert 1 <= len(finished) < 4, "the kill must land mid-run"
    for png in out.glob("*.png"):  # every final file is complete
        Image.open(png).load()
    again = run("mask", "--manifest", tmp_path / "c" / "manifest.csv", "--level", 1,
                "--out", out)
    assert f"{len(finished)} already done" in again.stdout
    assert f"{4 - len(finished)} done" in again.stdout
    assert len(list(out.glob("*_summary.json"))) == 4
    assert [p.name for p in out.glob(".*")] == [".exaslide.lock"]  # no temporaries


def test_internal_errors_are_one_line_with_exit_code_1():
    from click.testing import CliRunner

    from exaslide.cli.main import cli

    @cli.command("boom")
    def boom():
        raise RuntimeError("kaput")

    try:
        result = CliRunner().invoke(cli, ["boom"])
        assert result.exit_code == 1
        assert result.output.strip() == ("exaslide: internal error: RuntimeError: kaput (run "
                                         "with --debug for the traceback and please report it)")
        debug = CliRunner().invoke(cli, ["--debug", "boom"])
        assert isinstance(debug.exception, RuntimeError)
    finally:
        cli.commands.pop("boom")


def test_demo_refuses_too_few_slides(tmp_path):
    done = run("demo", "--out", tmp_path, "--slides", 4, check_rc=2)
    assert "at least 6 slides" in done.stderr  # the full demo: tests/demo/test_demo.py


def test_yaml_config_sets_defaults_and_the_command_line_wins(synth_slide, tmp_path):
    config = tmp_path / "exaslide.yaml"
    config.write_text("mask:\n  level: 2\n  no-tiff: true\n  min_tissue_area: 5000\n")
    run("--config", config, "mask", synth_slide.path, "--out", tmp_path / "a")
    summary = json.loads((tmp_path / "a" / "slide_summary.json").read_text())
    assert summary["mask"]["level"] == 2 and not (tmp_path / "a" / "slide_mask.tif").exists()
    assert summary["options"]["tissue"]["min_area_um2"] == 5000  # saved with the outputs
    run("--config", config, "mask", synth_slide.path, "--out", tmp_path / "b", "--level", 1)
    assert json.loads((tmp_path / "b" / "slide_summary.json").read_text())["mask"]["level"] == 1
    config.write_text("mask:\n  levle: 2\n")
    assert "has no option 'levle'" in run("--config", config, "info", synth_slide.path,
                                          check_rc=2).stderr
    config.write_text("mask: [1, 2\n")
    assert "not valid YAML" in run("--config", config, "info", synth_slide.path,
                                   check_rc=2).stderr
