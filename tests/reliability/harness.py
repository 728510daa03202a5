"""The reliability catalogue's harness (imported by name: ``from harness import
exaslide``; a ``conftest`` import would pick another folder's conftest)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


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
