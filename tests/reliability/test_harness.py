"""The harness itself must be able to fail: a stray file outside --out is caught."""

from __future__ import annotations

import pytest


def test_watch_catches_a_stray_file_and_a_changed_input(tmp_path, watch):
    (tmp_path / "input.txt").write_text("data")
    check = watch()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "fine.txt").write_text("inside")
    check(tmp_path / "out")
    (tmp_path / "stray.txt").write_text("outside")
    with pytest.raises(AssertionError, match=r"stray\.txt"):
        check(tmp_path / "out")
    (tmp_path / "stray.txt").unlink()
    (tmp_path / "input.txt").write_text("changed")
    with pytest.raises(AssertionError, match=r"input\.txt"):
        check(tmp_path / "out")
