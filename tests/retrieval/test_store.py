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
