"""Slide embeddings: mean and mosaic stores, mosaic distance, slide search."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from exaslide.errors import RetrievalError
from exaslide.retrieval.aggregate import (
    mosaic_distance,
    search_slides,
    slide_embeddings,
    slide_label,
)
from exaslide.retrieval.store import read_embeddings, write_info, write_part

DIM = 8


def _patch_store(folder, slides=None):
    """Slides a, b (alike: around the same centres) and c (elsewhere), 40 patches each."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, DIM))
    write_info(folder, {"kind": "patches", "dim": DIM, "model": "m", "model_path": None})
    for slide, shift, tumour in (slides or (("a", 0, True), ("b", 0, False), ("c", 5, False))):
        n = 40
        vectors = centres[np.arange(n) % 4] + shift + 0.05 * rng.normal(size=(n, DIM))
        labels = ["tumour" if tumour and i < 3 else "normal" for i in range(n)]
        table = pa.table({"key": [f"{slide}_{i}" for i in range(n)], "slide_id": [slide] * n,
                          "x": list(range(n)), "y": [0] * n, "level": [0] * n,
                          "size": [64] * n, "label": labels, "split": ["val"] * n})
        write_part(folder, slide, table, vectors)
    return folder


def test_mean_store_has_one_row_per_slide(tmp_path):
    store = _patch_store(tmp_path / "p")
    out = slide_embeddings(store, tmp_path / "s", method="mean")
    emb = read_embeddings(out)
    assert emb.table["slide_id"].to_pylist() == ["a", "b", "c"]
    assert emb.vectors.shape == (3, DIM) and emb.info["kind"] == "slides"
    assert emb.table["label"].to_pylist() == ["tumour", "normal", "normal"]
    assert emb.table["patches"].to_pylist() == [40, 40, 40]
    patches = read_embeddings(store).vectors[:40]
    unit = patches / np.linalg.norm(patches, axis=1, keepdims=True)
    np.testing.assert_allclose(emb.vectors[0], unit.mean(0), atol=2e-3)


def test_mosaic_store_is_deterministic_under_a_seed(tmp_path):
    store = _patch_store(tmp_path / "p")
    one = read_embeddings(slide_embeddings(store, tmp_path / "s1", method="mosaic",
                                           mosaic_size=4, seed=3))
    two = read_embeddings(slide_embeddings(store, tmp_path / "s2", method="mosaic",
                                           mosaic_size=4, seed=3))
    assert one.table.equals(two.table) and np.array_equal(one.vectors, two.vectors)
    counts = {s: one.table["slide_id"].to_pylist().count(s) for s in "abc"}
    assert all(1 <= c <= 4 for c in counts.values())
    assert set(one.table.column_names) >= {"key", "slide_id", "x", "y", "cluster", "label"}
    # every representative is one of the slide's patches, with its own vector
    patches = read_embeddings(store)
    row = {k: i for i, k in enumerate(patches.table["key"].to_pylist())}
    picked = [row[k] for k in one.table["key"].to_pylist()]
    np.testing.assert_array_equal(one.vectors, patches.vectors[picked])


def test_small_slides_keep_all_patches_and_settings_are_checked(tmp_path):
    store = _patch_store(tmp_path / "p")
    out = slide_embeddings(store, tmp_path / "s", method="mosaic", mosaic_size=64)
    assert len(read_embeddings(out)) == 120
    with pytest.raises(RetrievalError, match="made with"):
        slide_embeddings(store, out, method="mean")
    with pytest.raises(RetrievalError, match="method must be"):
        slide_embeddings(store, tmp_path / "x", method="max")
    with pytest.raises(RetrievalError, match="slide embeddings are made from a patch"):
        slide_embeddings(out, tmp_path / "y")


def test_resume_skips_slides_already_done(tmp_path):
    store = _patch_store(tmp_path / "p")
    out = slide_embeddings(store, tmp_path / "s", method="mosaic", mosaic_size=4)
    (out / "parts" / "b.parquet").unlink()
    outcomes = []
    slide_embeddings(store, out, method="mosaic", mosaic_size=4, on_result=outcomes.append)
    assert sorted((o.slide_id, o.status) for o in outcomes) == \
        [("a", "skipped"), ("b", "done"), ("c", "skipped")]  # a deleted output is redone


def test_mosaic_distance_is_zero_for_identical_and_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, DIM)), rng.normal(size=(7, DIM))
    assert mosaic_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert mosaic_distance(a, b) == pytest.approx(mosaic_distance(b, a))
    assert mosaic_distance(a, b) > 0
    assert mosaic_distance(a, 3 * a[::-1]) == pytest.approx(0.0, abs=1e-6)


def test_search_slides_ranks_the_alike_slide_first(tmp_path):
    store = _patch_store(tmp_path / "p")
    for method in ("mosaic", "mean"):
        out = slide_embeddings(store, tmp_path / method, method=method, mosaic_size=4)
        ranked = search_slides(out, "a", k=5)
        assert [s for s, _ in ranked] == ["b", "c"]
        assert ranked[0][1] < ranked[1][1]
    with pytest.raises(RetrievalError, match="not in the store"):
        search_slides(out, "zzz")


def test_slide_label():
    assert slide_label(["normal", "tumour", None]) == "tumour"
    assert slide_label(["normal"]) == "normal"
    assert slide_label([None]) is None
