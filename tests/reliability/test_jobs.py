"""The job engine under faults, on real processes: two runs into one folder, a Dask worker
and the scheduler killed mid-run (separate `dask scheduler` / `dask worker` processes, as
on a cluster), a full disk, orphaned temporaries, bad scheduler addresses, slides that
give nothing. Each rerun must equal a clean run byte for byte."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import cluster, exaslide, wait_for

from exaslide.synth import SynthSpec, make_cohort

PNG = ["--patch-size", 128, "--materialize", "png", "--shard-size", 100]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Four small synthetic slides and their manifest."""
    return make_cohort(tmp_path_factory.mktemp("cohort"), 4, tumour_fraction=0.5, seed=21,
                       base=SynthSpec(width=3072, height=2304, tumours=2))


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory) -> dict[str, str]:
    """The files of a clean inline run, by digest."""
    out = tmp_path_factory.mktemp("reference") / "out"
    done = exaslide("extract", cohort, "--out", out, "--scheduler", "inline", *PNG)
    assert done.code == 0, done.stderr
    return outputs(out)


def outputs(out: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the index and shards (what a user reads)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()
            and p.parts[len(out.parts)] in ("index", "shards")}


def leftovers(out: Path) -> list[str]:
    """Hidden files other than the lock, and partial folders: what must not survive."""
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*")
                  if p.name not in (".exaslide.lock",))


def done_slides(out: Path) -> int:
    count = 0
    for path in (out / "status").glob("[!.]*.json"):
        with contextlib.suppress(OSError, ValueError):
            count += json.loads(path.read_text()).get("status") == "done"
    return count


def test_a_second_run_into_the_same_folder_exits_2_naming_the_holder(cohort, tmp_path):
    from exaslide.jobs import OutputLock

    out = tmp_path / "out"
    with OutputLock(out):
        done = exaslide("extract", cohort, "--out", out, "--scheduler", "inline")
    assert done.code == 2
    line = done.one_line_error()
    assert "another exaslide run is writing here" in line and f"pid {os.getpid()}" in line
    assert not (out / "status").exists()  # it touched nothing


def test_two_concurrent_runs_one_waits_out_the_other_output_intact(cohort, tmp_path,
                                                                    reference):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "exaslide", "extract", str(cohort), "--out", str(out),
               "--scheduler", "inline", *map(str, PNG)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "another exaslide run is writing here" in loser and "Traceback" not in loser
    assert outputs(out) == reference and leftovers(out) == []


def test_a_rerun_removes_orphaned_temporaries_of_the_slides_it_redoes(cohort, tmp_path,
                                                                      reference):
    out = tmp_path / "out"
    orphan = out / ".partial" / "synth_001" / ".synth_001-0000-00000.1f2e3d4c.tmp.tar"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a SIGKILLed worker")
    (out / "status").mkdir()
    stale = out / "status" / ".synth_002.0badf00d.tmp.json"
    stale.write_text("{half")
    done = exaslide("extract", cohort, "--out", out, "--scheduler", "inline", *PNG)
    assert done.code == 0, done.stderr
    assert outputs(out) == reference and leftovers(out) == []


def test_bad_scheduler_addresses_are_one_line_errors(cohort, tmp_path):
    for address, words in (("notaurl", "is not a Dask scheduler address"),
                           ("tcp://127.0.0.1:9", "cannot reach the Dask scheduler")):
        done = exaslide("extract", cohort, "--out", tmp_path / "out", "--scheduler", address,
                        timeout=120)
        assert done.code == 2 and words in done.one_line_error()
    assert not (tmp_path / "out" / "status").exists()


def test_slides_that_give_nothing_say_why(cohort, tmp_path):
    done = exaslide("extract", cohort, "--out", tmp_path / "a", "--scheduler", "inline",
                    "--region", "nonsense")
    assert done.code == 0 and "4 done" in done.stdout
    assert done.stderr.count("exaslide: warning:") == 4
    assert "0 patches: no annotation with label(s) nonsense" in done.stderr
    huge = exaslide("extract", cohort, "--out", tmp_path / "b", "--scheduler", "inline",
                    "--patch-size", 4096, "--level", 2)
    assert huge.code == 0 and "0 patches: no patch position" in huge.stderr


def test_one_failing_slide_does_not_stop_the_batch(cohort, tmp_path, watch):
    manifest = tmp_path / "m.csv"
    lines = cohort.read_text().splitlines()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + bytes(100))
    rows = [lines[0], *(_absolute(line, cohort.parent) for line in lines[1:3]),
            f"broken,{broken},,normal,train"]
    manifest.write_text("\n".join(rows) + "\n")
    check = watch()
    done = exaslide("extract", manifest, "--out", tmp_path / "out", "--scheduler", "inline")
    assert done.code == 1
    assert "exaslide: error: broken:" in done.stderr and "Traceback" not in done.stderr
    assert "3 slides: 2 done, 0 already done, 1 failed" in done.stdout
    check(tmp_path / "out")


def _absolute(line: str, base: Path) -> str:
    cells = line.split(",")
    cells[1] = str(base / cells[1])
    if cells[2]:
        cells[2] = str(base / cells[2])
    return ",".join(cells)


def start_extract(cohort: Path, out: Path, address: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "exaslide", "extract", str(cohort),
                             "--out", str(out), "--scheduler", address, *map(str, PNG)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_worker_killed_mid_run_the_run_finishes_identically(cohort, tmp_path, reference):
    out = tmp_path / "out"
    with cluster(tmp_path) as (address, _scheduler, workers):
        run = start_extract(cohort, out, address)
        wait_for(lambda: (out / ".partial").exists() and any((out / ".partial").rglob("*")),
                 what="a worker writing shards")
        os.killpg(workers[0].pid, signal.SIGKILL)  # the node is gone, nanny and all
        code = run.wait(timeout=300)
        assert code == 0, run.stderr.read()
    assert outputs(out) == reference
    assert leftovers(out) == []  # the killed worker's temporary shard went too


def test_a_lost_scheduler_is_one_line_and_a_rerun_completes(cohort, tmp_path, reference):
    out = tmp_path / "out"
    with cluster(tmp_path) as (address, scheduler, _workers):
        run = start_extract(cohort, out, address)
        wait_for(lambda: done_slides(out) >= 1, what="a finished slide")
        os.killpg(scheduler.pid, signal.SIGKILL)
        code = run.wait(timeout=180)
        stderr = run.stderr.read()
    assert code == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("exaslide: error")]
    assert len(errors) == 1 and "lost the Dask scheduler" in errors[0], stderr
    again = exaslide("extract", cohort, "--out", out, "--scheduler", "inline", *PNG)
    assert again.code == 0, again.stderr
    assert outputs(out) == reference and leftovers(out) == []


# -- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs (root can mount one), or skip where mounting is not permitted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_names_the_path_and_a_rerun_after_freeing_space_is_identical(
        cohort, small_disk, reference):
    filler = small_disk / "filler.bin"
    # leave about 2 MB: less than one slide's shards
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        fh.write(bytes(22 << 20))
    out = small_disk / "out"
    done = exaslide("extract", cohort, "--out", out, "--scheduler", "inline", *PNG)
    assert done.code == 1, done.stderr  # slides failed, the batch went on
    assert "no space left on device" in done.stderr and "Traceback" not in done.stderr
    assert str(small_disk) in done.stderr  # the message names where
    filler.unlink()
    again = exaslide("extract", cohort, "--out", out, "--scheduler", "inline", *PNG)
    assert again.code == 0, again.stderr
    assert outputs(out) == reference and leftovers(out) == []


def test_a_second_training_run_into_one_folder_exits_2(tmp_path):
    from exaslide.jobs import OutputLock

    config = tmp_path / "train.yaml"
    config.write_text(f"data: {tmp_path / 'patches'}\nout: {tmp_path / 'run'}\nepochs: 1\n")
    with OutputLock(tmp_path / "run"):
        done = exaslide("train", config)
    assert done.code == 2 and "another exaslide run is writing here" in done.one_line_error()
