"""``exaslide extract``: the CLI contract, and SIGKILL + restart = uninterrupted run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from exaslide.patches import open_index
from exaslide.synth import SynthSpec, make_cohort


def extract(*args, check_rc=0, **kwargs):
    done = subprocess.run([sys.executable, "-m", "exaslide", "extract", *map(str, args)],
                          capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == check_rc, done.stderr
    return done


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return make_cohort(out, 4, tumour_fraction=0.5, seed=12,
                       base=SynthSpec(width=4096, height=3072, tumours=2))


def test_contract_index_shards_status_summary(cohort, tmp_path):
    done = extract(cohort, "--out", tmp_path, "--sampler", "random", "--per-class", 30,
                   "--patch-size", 128, "--level", 0, "--materialize", "jpeg", "--workers", 2,
                   "--seed", 3)
    assert "4 slides: 4 done" in done.stdout and "patches/s" in done.stdout
    table = open_index(tmp_path).to_table()
    assert {"slide_id", "x", "y", "level", "size", "label"} <= set(table.column_names)
    assert sorted(p.stem for p in (tmp_path / "status").iterdir()) == \
        [f"synth_00{i}" for i in range(4)]
    with tarfile.open(next((tmp_path / "shards").iterdir())) as tar:
        names = tar.getnames()
    assert names[0].endswith(".jpg") and names[1].endswith(".json")
    help_text = extract("--help").stdout
    for option in ("--out", "--sampler", "--patch-size", "--level", "--mpp", "--per-class",
                   "--min-tissue", "--materialize", "--workers", "--scheduler", "--seed"):
        assert option in help_text


def test_usage_errors(cohort, tmp_path):
    bad = extract(cohort, "--out", tmp_path, "--level", 0, "--mpp", 0.5, check_rc=2)
    assert "--level or --mpp" in bad.stderr
    missing = extract(tmp_path / "nope.csv", "--out", tmp_path, check_rc=2)
    assert "nope.csv" in missing.stderr and "Traceback" not in missing.stderr


def _snapshot(out):
    shards = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted((out / "shards").iterdir())}
    index = {p.name: pq.read_table(p) for p in sorted((out / "index").iterdir())}
    return shards, index


def _finished(out) -> int:
    """Slides whose status says done (a status may be 'committing' for a moment)."""
    count = 0
    for path in (out / "status").glob("[!.]*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            count += json.loads(path.read_text())["status"] == "done"
    return count


def test_sigkill_then_restart_equals_an_uninterrupted_run(cohort, tmp_path):
    args = ["--patch-size", 128, "--materialize", "png", "--shard-size", 200, "--workers", 2]
    extract(cohort, "--out", tmp_path / "reference", *args)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "exaslide", "extract", str(cohort), "--out",
                             str(out), *map(str, args)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not _finished(out):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, the scheduler and every worker
    proc.wait()
    statuses = [json.loads(p.read_text()) for p in (out / "status").glob("[!.]*.json")]
    finished = sum(s["status"] == "done" for s in statuses)
    assert 1 <= finished < 4, "the kill must land mid-run"
    again = extract(cohort, "--out", out, *args)
    assert f"{finished} already done" in again.stdout
    reference, restarted = _snapshot(tmp_path / "reference"), _snapshot(out)
    assert restarted[0] == reference[0]  # same shards, byte for byte
    assert restarted[1].keys() == reference[1].keys()
    for name, table in reference[1].items():
        assert restarted[1][name].equals(table)
    assert [p.name for p in out.rglob(".*") if p.is_file()] == [".exaslide.lock"]


def test_balance_command(cohort, tmp_path):
    extract(cohort, "--out", tmp_path, "--patch-size", 128, "--sampler", "random",
            "--per-class", 15, "--scheduler", "inline")
    done = subprocess.run([sys.executable, "-m", "exaslide", "balance", str(tmp_path),
                           "--out", str(tmp_path / "train.parquet"), "--by", "label",
                           "--per-group", "12"], capture_output=True, text=True, check=True)
    assert "24 patches in 2 groups" in done.stdout
    labels = pq.read_table(tmp_path / "train.parquet")["label"].to_pylist()
    assert labels.count("tumour") == labels.count("normal") == 12


def test_region_restricts_the_grid(cohort, tmp_path):
    extract(cohort, "--out", tmp_path, "--patch-size", 64, "--region", "tumour",
            "--min-tissue", 0, "--scheduler", "inline")
    import shapely

    from exaslide.annotations import read_annotations

    table = open_index(tmp_path).to_table()
    assert table.num_rows > 20
    for slide_id in set(table["slide_id"].to_pylist()):
        rows = table.filter(pc.field("slide_id") == slide_id)
        tumours = read_annotations(cohort.parent / f"{slide_id}.xml").union("tumour")
        x, y = rows["x"].to_numpy() + 32, rows["y"].to_numpy() + 32
        assert shapely.contains_xy(tumours, x, y).all()  # centres inside the tumours
    labels = table["label"].to_pylist()
    assert labels.count("tumour") / len(labels) > 0.8  # the rest: exclusion islands
    assert set(table["slide_id"].to_pylist()) < {f"synth_00{i}" for i in range(4)}  # no XML: none
    bad = extract(cohort, "--out", tmp_path / "x", "--sampler", "random", "--region",
                  "tumour", check_rc=2)
    assert "grid sampler only" in bad.stderr
