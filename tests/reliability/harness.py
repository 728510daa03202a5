"""The reliability catalogue's harness (imported by name: ``from harness import
exaslide``; a ``conftest`` import would pick another folder's conftest)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Result:
    """A finished command: exit code, standard output and standard error."""

    code: int
    stdout: str
    stderr: str

    def one_line_error(self) -> str:
        """The single ``exaslide: error: ...`` line (asserts there is exactly one error
        line and no traceback)."""
        assert "Traceback" not in self.stderr, self.stderr
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith("exaslide: ")]
        assert lines, f"no error line in: {self.stderr!r}"
        assert all("internal error" not in ln for ln in lines), self.stderr
        return lines[-1]


def exaslide(*args, env: dict | None = None, timeout: float = 300, cwd=None) -> Result:
    """Run ``python -m exaslide ARGS`` in a new process and return its :class:`Result`."""
    environ = dict(os.environ, **(env or {}))
    done = subprocess.run([sys.executable, "-m", "exaslide", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=environ,
                          cwd=cwd)
    return Result(done.returncode, done.stdout, done.stderr)


def snapshot(root: Path, exclude: Path | None = None) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (outside ``exclude``),
    symlinks by target. Compare two snapshots to prove nothing else changed."""
    result = {}
    root = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None:
            dirnames[:] = [d for d in dirnames if (here / d).resolve() != skip]
        for name in filenames:
            path = here / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                result[rel] = "link:" + os.readlink(path)
            else:
                result[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        for name in dirnames:
            result[str((here / name).relative_to(root)) + "/"] = "dir"
    return result


def wait_for(predicate, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- a real cluster: scheduler and workers as separate processes ---------------------------


@contextlib.contextmanager
def cluster(tmp_path: Path, workers: int = 2, worker_env: dict | None = None):
    """``dask scheduler`` and ``dask worker`` processes (each in its own process group;
    ``worker_env``: extra environment variables of the workers); yields ``(address,
    scheduler process, worker processes)``."""
    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip("the dask command is not installed beside this Python")
    info = tmp_path / "scheduler.json"
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
             "start_new_session": True, "env": env}
    scheduler = subprocess.Popen([str(dask), "scheduler", "--scheduler-file", str(info),
                                  "--port", "0", "--no-dashboard"], **quiet)
    procs = [scheduler]
    try:
        wait_for(info.exists, 60, "the scheduler file")
        address = json.loads(info.read_text())["address"]
        for _ in range(workers):
            procs.append(subprocess.Popen([str(dask), "worker", address, "--nthreads", "1",
                                           "--no-dashboard", "--local-directory",
                                           str(tmp_path / "dask-space")],
                                          **{**quiet, "env": {**env, **(worker_env or {})}}))
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address, scheduler, procs[1:]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
