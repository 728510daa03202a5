"""Catalogue: ``exaslide synth`` is bounded (size, disk), confined to OUT_DIR (``--name``),
and a killed run (SIGTERM, SIGINT) leaves no temporary file behind."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time

import pytest
from harness import Result, exaslide

GIB = 1 << 30


def _limit_memory_to_4_gib():
    resource.setrlimit(resource.RLIMIT_AS, (4 * GIB, 4 * GIB))


def test_a_10m_by_10m_slide_is_refused_at_once_without_allocating(tmp_path, watch):
    out = tmp_path / "O"
    check = watch()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "exaslide", "synth", str(out), "--width",
                           "10000000", "--height", "10000000"], capture_output=True,
                          text=True, timeout=120, preexec_fn=_limit_memory_to_4_gib)
    result = Result(done.returncode, done.stdout, done.stderr)
    assert result.code == 2, result.stderr
    line = result.one_line_error()
    assert "10000000" in line and "250000" in line, line
    assert time.monotonic() - started < 30
    assert not out.exists()
    check()


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "a\\b", "x" * 300])
def test_name_must_be_a_plain_file_name(tmp_path, watch, name):
    out = tmp_path / "deep" / "er" / "O"
    check = watch()
    result = exaslide("synth", out, "--width", 256, "--height", 256, "--name", name)
    assert result.code == 2, result.stderr
    assert "--name" in result.one_line_error()
    assert not (tmp_path / "deep").exists()
    check()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_killed_synth_leaves_no_temporary(tmp_path, signum):
    out = tmp_path / "O"
    process = subprocess.Popen([sys.executable, "-m", "exaslide", "synth", str(out),
                                "--width", "40000", "--height", "40000", "--name", "big"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(".big.*.tmp*")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no temporary appeared"
            time.sleep(0.02)
        time.sleep(0.3)  # let it write a little into the temporary
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not (out / "big.tif").exists()
    assert process.returncode == 128 + signum
    assert "Traceback" not in stderr, stderr
    assert "interrupted" in stderr
