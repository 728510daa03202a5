"""The embedding store: atomic parts, resume marker, concatenation, clear errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from exaslide.errors import RetrievalError
from exaslide.retrieval.store import part_done, read_embeddings, write_info, write_part

INFO = {"kind": "patches", "dim": 4, "model": "small-cnn", "model_path": None}


def test_parts_round_trip_in_name_order(tmp_path):
    write_info(tmp_path, INFO)
    write_part(tmp_path, "b", pa.table({"key": ["b0"]}), np.ones((1, 4)))
    assert not part_done(tmp_path, "a")
    write_part(tmp_path, "a", pa.table({"key": ["a0", "a1"]}), np.zeros((2, 4)))
    assert part_done(tmp_path, "a")
    store = read_embeddings(tmp_path)
    assert store.table["key"].to_pylist() == ["a0", "a1", "b0"]
    assert store.vectors.dtype == np.float32 and store.vectors.shape == (3, 4)
    assert store.vectors[2].tolist() == [1, 1, 1, 1] and store.info["dim"] == 4


def test_mismatches_and_missing_stores_are_errors(tmp_path):
    write_info(tmp_path, INFO)
    with pytest.raises(RetrievalError, match="holds embeddings with dim=4"):
        write_info(tmp_path, {**INFO, "dim": 8})
    with pytest.raises(RetrievalError, match="2 rows but 1 vectors"):
        write_part(tmp_path, "x", pa.table({"key": ["a", "b"]}), np.zeros((1, 4)))
    with pytest.raises(RetrievalError, match="unsafe part name"):
        write_part(tmp_path, "../x", pa.table({"key": ["a"]}), np.zeros((1, 4)))
    with pytest.raises(RetrievalError, match="holds no embeddings yet"):
        read_embeddings(tmp_path)
    with pytest.raises(RetrievalError, match="not an embedding store"):
        read_embeddings(tmp_path / "nothing")


def test_store_without_checksums_warns_once_and_redone_part_is_checked(tmp_path, caplog):
    """A store written before checksums existed loads with one warning for all its
    files; a part deleted and written again gets checksums."""
    from exaslide.retrieval.store import read_part

    write_info(tmp_path, INFO)
    for part in ("a", "b"):
        write_part(tmp_path, part, pa.table({"key": [part]}), np.ones((1, 4)))
    for sidecar in tmp_path.rglob("*.sha256"):
        sidecar.unlink()
    with caplog.at_level("WARNING", logger="exaslide.integrity"):
        assert len(read_embeddings(tmp_path)) == 2
    warnings = [r for r in caplog.records if "no checksum" in r.getMessage()]
    assert len(warnings) == 1 and "and 4 more" in warnings[0].getMessage()
    (tmp_path / "parts" / "a.parquet").unlink()
    write_part(tmp_path, "a", pa.table({"key": ["a"]}), np.zeros((1, 4)))
    assert (tmp_path / "parts" / "a.npy.sha256").exists()
    table, vectors = read_part(tmp_path, "a")
    assert table["key"].to_pylist() == ["a"] and vectors.tolist() == [[0, 0, 0, 0]]
