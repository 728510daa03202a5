"""Catalogue: ``exaslide balance`` never writes over or into its own input index."""

from __future__ import annotations

import os

import pytest
from harness import exaslide


def _index(root):
    """``root/X/index/{a,b}.parquet``: two slides, 10 tumour and 10 normal patches each."""
    from exaslide.patches.index import make_table, write_slide_index

    index = root / "X" / "index"
    for slide_id in ("a", "b"):
        n = 20
        write_slide_index(make_table({
            "key": [f"{slide_id}_{i}" for i in range(n)], "slide_id": slide_id,
            "x": list(range(n)), "y": [0] * n, "level": 0, "size": 64, "footprint": 64.0,
            "label": ["tumour", "normal"] * (n // 2), "split": "train"}),
            index / f"{slide_id}.parquet")
    return root / "X"


@pytest.mark.parametrize(("source", "target"), [
    ("X", "X/index/balanced.parquet"),  # a new file in the index: read as a slide next time
    ("X", "X/index/a.parquet"),  # one of the input files
    ("X/index", "X/index/a.parquet"),
    ("X/index", "X/index/sub/balanced.parquet"),
    ("X", "link/balanced.parquet"),  # the index folder through a symbolic link
])
def test_output_inside_the_input_index_is_refused(tmp_path, watch, source, target):
    _index(tmp_path)
    os.symlink(tmp_path / "X" / "index", tmp_path / "link")
    check = watch()
    result = exaslide("balance", tmp_path / source, "--out", tmp_path / target,
                      "--per-group", 5)
    assert result.code == 2, (result.stdout, result.stderr)
    line = result.one_line_error()
    assert "--out" in line and "input index" in line, line
    check()  # the index is byte-identical, nothing else was written


def test_a_hard_link_to_an_input_file_is_refused(tmp_path, watch):
    _index(tmp_path)
    os.link(tmp_path / "X" / "index" / "b.parquet", tmp_path / "hard.parquet")
    check = watch()
    result = exaslide("balance", tmp_path / "X", "--out", tmp_path / "hard.parquet")
    assert result.code == 2 and "input index" in result.one_line_error()
    check()


def test_output_beside_the_index_is_written(tmp_path, watch):
    _index(tmp_path)
    check = watch()
    result = exaslide("balance", tmp_path / "X", "--out", tmp_path / "X" / "train.parquet",
                      "--per-group", 5)
    assert result.code == 0, result.stderr
    assert "10 patches in 2 groups" in result.stdout
    (tmp_path / "X" / "train.parquet").unlink()
    check()
