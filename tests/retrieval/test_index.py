"""Vector indexes: exact flat search, ivfpq/hnsw recall, save/load, incremental add,
metadata per id, precision@k / mAP, clear errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from exaslide.errors import RetrievalError
from exaslide.retrieval.index import build_index, load_index, resolve_params
from exaslide.retrieval.metrics import (
    average_precision,
    evaluate_retrieval,
    mean_average_precision,
    precision_at_k,
)
from exaslide.retrieval.store import Embeddings, write_info, write_part


def clustered(n, dim=32, clusters=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    label = rng.integers(0, clusters, n)
    x = centres[label] + 0.3 * rng.normal(size=(n, dim))
    return x.astype(np.float32), label


def store(n=600, dim=32, seed=0, start=0):
    x, label = clustered(n, dim, seed=seed)
    table = pa.table({"key": [f"k{i}" for i in range(start, start + n)],
                      "slide_id": [f"s{i % 7}" for i in range(n)],
                      "label": [f"c{v}" for v in label],
                      "split": ["test" if i % 5 == 0 else "train" for i in range(n)]})
    return Embeddings(x, table, {"kind": "patches", "dim": dim, "model": "m",
                                 "model_path": None})


def exact(x, q, k):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    return np.argsort(-(qn @ xn.T), axis=1, kind="stable")[:, :k], qn @ xn.T


def test_flat_is_exact_and_rows_map_to_ids(tmp_path):
    emb = store(300)
    index = build_index(emb, tmp_path / "idx", "flat")
    q = np.random.default_rng(1).normal(size=(5, 32)).astype(np.float32)
    want, sims = exact(emb.vectors, q, 8)
    for row, hits in enumerate(index.search(q, 8)):
        assert [h.id for h in hits] == want[row].tolist()
        assert [h.score for h in hits] == pytest.approx(sims[row, want[row]].tolist(),
                                                        abs=1e-5)
        assert all(h.meta["key"] == f"k{h.id}" for h in hits)


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_recall_on_clustered_vectors(kind):
    emb = store(3000, seed=2)
    params = {"nprobe": 16, "bytes_per_vector": 32, "rerank": 4} if kind == "ivfpq" else {}
    index = build_index(emb, None, kind, **params)
    q, _ = clustered(100, seed=3)
    want, _ = exact(emb.vectors, q, 10)
    got = [[h.id for h in hits] for hits in index.search(q, 10)]
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
    assert recall >= 0.9, recall


def test_auto_kind_and_ivfpq_budget():
    assert resolve_params("auto", 512, 1000)[0] == "flat"
    kind, params = resolve_params("auto", 512, 1_000_000)
    assert kind == "ivfpq" and params["m"] == 128 and params["nbits"] == 4
    assert resolve_params("ivfpq", 512, 10**6, fast_scan=False)[1]["m"] == 64
    assert params["nlist"] == 4000
    assert resolve_params("ivfpq", 384, 10_000, bytes_per_vector=50)[1]["m"] == 48
    assert resolve_params("ivfpq", 384, 10_000, bytes_per_vector=48)[1]["m"] == 96


def test_save_load_round_trip_and_incremental_add(tmp_path):
    first = store(400, seed=4)
    built = build_index(first, tmp_path / "idx", "hnsw", ef_search=64)
    loaded = load_index(tmp_path / "idx")
    assert loaded.kind == "hnsw" and len(loaded) == 400 and loaded.info["count"] == 400
    assert loaded.info["params"]["ef_search"] == 64
    q = first.vectors[:3]
    assert [[h.id for h in r] for r in loaded.search(q, 5)] == \
        [[h.id for h in r] for r in built.search(q, 5)]
    second = store(50, seed=5, start=400)
    loaded.add(second.vectors, second.table)
    loaded.save(tmp_path / "idx")
    again = load_index(tmp_path / "idx")
    assert len(again) == 450
    top = again.search(second.vectors[7:8], 1)[0][0]
    assert top.id == 407 and top.meta["key"] == "k407"


def test_add_from_a_store_folder(tmp_path):
    from exaslide.retrieval.index import add_to_index

    emb = store(100)
    build_index(emb, tmp_path / "idx", "flat")
    folder = tmp_path / "more"
    more = store(10, seed=1, start=100)
    write_info(folder, emb.info)
    write_part(folder, "a", more.table, more.vectors)
    write_part(folder, "b", emb.table.slice(0, 5), emb.vectors[:5])  # keys it already has
    assert len(add_to_index(tmp_path / "idx", folder)) == 110
    index = add_to_index(tmp_path / "idx", folder)  # again: nothing new
    assert len(index) == 110 and len(set(index.table.column("key").to_pylist())) == 110
    write_info(tmp_path / "other", {**emb.info, "model": "other"})
    write_part(tmp_path / "other", "a", more.table.slice(0, 1), more.vectors[:1])
    with pytest.raises(RetrievalError, match="model='m'"):
        add_to_index(tmp_path / "idx", tmp_path / "other")


def test_stores_from_other_projection_heads_are_refused(tmp_path):
    from exaslide.retrieval.index import add_to_index

    emb = store(50)
    figures = Embeddings(emb.vectors, emb.table, {**emb.info, "kind": "figures",
                                                  "projection_path": "/a/heads.pt"})
    build_index(figures, tmp_path / "idx", "flat")
    other = tmp_path / "other"
    write_info(other, {**figures.info, "projection_path": "/b/heads.pt"})
    fresh = store(5, seed=2, start=500)
    write_part(other, "a", fresh.table, fresh.vectors)
    with pytest.raises(RetrievalError, match="projection_path"):
        add_to_index(tmp_path / "idx", other)


def test_errors(tmp_path):
    with pytest.raises(RetrievalError, match="not a readable vector index"):
        load_index(tmp_path / "missing")
    index = build_index(store(50), None, "flat")
    with pytest.raises(RetrievalError, match="dimension 8 but the index holds 32"):
        index.search(np.ones((1, 8)), 3)
    with pytest.raises(RetrievalError, match="k must be at least 1"):
        index.search(np.ones((1, 32)), 0)
    with pytest.raises(RetrievalError, match="at least 256 vectors"):
        build_index(store(50), None, "ivfpq")
    with pytest.raises(RetrievalError, match="index kind"):
        build_index(store(50), None, "lsh")


def test_precision_and_map_by_hand():
    hits = [["a", "b", "a", "a"], ["b", "b", "a", "c"]]
    assert precision_at_k(["a", "b"], hits, 2) == pytest.approx((0.5 + 1.0) / 2)
    assert precision_at_k(["a", "b"], [["a"], []], 2) == pytest.approx(0.25)
    # a: relevant at ranks 1, 3, 4 -> (1 + 2/3 + 3/4) / 3; b: ranks 1, 2 -> 1
    assert average_precision("a", hits[0], 4) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert average_precision("c", hits[0], 4) == 0.0
    assert mean_average_precision(["a", "b"], hits, 4) == pytest.approx(
        ((1 + 2 / 3 + 3 / 4) / 3 + 1.0) / 2)
    with pytest.raises(RetrievalError, match="k must be at least 1"):
        precision_at_k(["a"], [["a"]], 0)


def test_evaluate_retrieval_held_out_split():
    emb = store(600, seed=6)
    gallery = emb.table.column("split").to_pylist()
    keep = [i for i, s in enumerate(gallery) if s != "test"]
    index = build_index(Embeddings(emb.vectors[keep], emb.table.take(keep), emb.info),
                        None, "flat")
    result = evaluate_retrieval(index, emb, k=5)
    assert result["queries"] == 120 and result["precision_at_k"] > 0.9
    assert 0.9 < result["map"] <= 1.0 and set(result["per_label"]) <= {
        f"c{i}" for i in range(20)}
    # the same slide excluded: no hit shares the query's slide
    full = build_index(emb, None, "flat")
    assert evaluate_retrieval(full, emb, k=5, split=None)["queries"] == 600
