"""The reliability catalogue's harness: run a command as a user would, and prove that it
changed nothing outside its output folder.

Each catalogue test names one bad input or fault, the command, the exit code and the
one-line message it must give, and checks with :func:`snapshot` that no file outside
``--out`` appeared, vanished or changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import Result, exaslide, snapshot  # noqa: F401 (also for by-path loaders)


@pytest.fixture
def watch(tmp_path):
    """``check = watch()`` snapshots ``tmp_path`` now (after the test made its inputs);
    ``check(out)`` after the command asserts that nothing under ``tmp_path`` outside
    ``out`` was added, removed or changed (inputs untouched, no stray files)."""

    def start():
        before = snapshot(tmp_path)

        def check(out: Path | None = None) -> None:
            after = snapshot(tmp_path, exclude=out)
            outside = before
            if out is not None:
                inside = Path(out).resolve()
                outside = {k: v for k, v in before.items()
                           if not (tmp_path / k).resolve().is_relative_to(inside)}
            assert after == outside, {
                "added": sorted(set(after) - set(outside)),
                "removed": sorted(set(outside) - set(after)),
                "changed": sorted(k for k in after if k in outside and after[k] != outside[k])}

        return check

    return start
