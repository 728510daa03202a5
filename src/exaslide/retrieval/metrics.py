"""Retrieval quality by label: precision@k, mean average precision, and an evaluation of
held-out queries against an index."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from exaslide.errors import RetrievalError


def _check_k(k: int) -> int:
    if int(k) < 1:
        raise RetrievalError(f"k must be at least 1, got {k}")
    return int(k)


def precision_at_k(query_labels: Sequence, hit_labels: Sequence[Sequence], k: int) -> float:
    """Mean over queries of the share of the first ``k`` hits with the query's label (a
    query with fewer than ``k`` hits counts the missing ones as wrong)."""
    k = _check_k(k)
    if len(query_labels) != len(hit_labels):
        raise RetrievalError(f"{len(query_labels)} queries but {len(hit_labels)} hit lists")
    if not len(query_labels):
        return float("nan")
    return float(np.mean([sum(h == q for h in hits[:k]) / k
                          for q, hits in zip(query_labels, hit_labels, strict=True)]))


def average_precision(query_label, hits: Sequence, k: int) -> float:
    """AP@k: the mean of precision@i over the ranks i <= k holding a relevant hit
    (0 when none of the first k is relevant)."""
    found, total = 0, 0.0
    for rank, label in enumerate(hits[:k], start=1):
        if label == query_label:
            found += 1
            total += found / rank
    return total / found if found else 0.0


def mean_average_precision(query_labels: Sequence, hit_labels: Sequence[Sequence],
                           k: int) -> float:
    """Mean of :func:`average_precision` over the queries."""
    k = _check_k(k)
    if len(query_labels) != len(hit_labels):
        raise RetrievalError(f"{len(query_labels)} queries but {len(hit_labels)} hit lists")
    if not len(query_labels):
        return float("nan")
    return float(np.mean([average_precision(q, hits, k)
                          for q, hits in zip(query_labels, hit_labels, strict=True)]))


def _keep(hit, row: dict, split: str | None, exclude_same_slide: bool) -> bool:
    meta = hit.meta
    if split is not None and meta.get("split") == split:
        return False
    if row.get("key") is not None and meta.get("key") == row.get("key"):
        return False
    return not (exclude_same_slide and row.get("slide_id") is not None
                and meta.get("slide_id") == row.get("slide_id"))


def evaluate_retrieval(index, queries, k: int = 10, *, split: str | None = "test",
                       exclude_same_slide: bool = True) -> dict[str, Any]:
    """Precision@k and mAP@k of held-out queries against the indexed gallery, by label.

    Args:
        index: a :class:`~exaslide.retrieval.index.VectorIndex`.
        queries: a store folder or Embeddings; rows with ``split == split`` are the
            queries (all rows when ``split`` is None or the table has no split column).
        split: the held-out split; hits of that split are not counted as gallery.
        exclude_same_slide: skip hits from the query's own slide (and the query itself).

    Raises:
        RetrievalError: no labelled query, or k < 1.
    """
    from exaslide.retrieval.store import Embeddings, read_embeddings

    k = _check_k(k)
    store = queries if isinstance(queries, Embeddings) else read_embeddings(queries)
    rows = store.table.to_pylist()
    use_split = split if split is not None and "split" in store.table.column_names else None
    chosen = [i for i, r in enumerate(rows) if r.get("label") not in (None, "")
              and (use_split is None or r.get("split") == use_split)]
    if not chosen:
        raise RetrievalError(f"no labelled query rows (split={split!r}) in the query store")
    labels = [rows[i]["label"] for i in chosen]
    found: list[list] = [[] for _ in chosen]
    pending, fetch = list(range(len(chosen))), 4 * k + 32
    while pending:
        results = index.search(store.vectors[[chosen[p] for p in pending]], fetch)
        still = []
        for p, hits in zip(pending, results, strict=True):
            kept = [h.meta.get("label") for h in hits
                    if _keep(h, rows[chosen[p]], use_split, exclude_same_slide)]
            found[p] = kept[:k]
            if len(kept) < k and fetch < len(index):
                still.append(p)
        pending, fetch = still, fetch * 4
    per_label = {}
    for label in sorted(set(labels), key=str):
        idx = [i for i, q in enumerate(labels) if q == label]
        per_label[str(label)] = {
            "queries": len(idx),
            "precision_at_k": precision_at_k([label] * len(idx), [found[i] for i in idx], k),
            "map": mean_average_precision([label] * len(idx), [found[i] for i in idx], k)}
    return {"queries": len(chosen), "k": k, "split": use_split,
            "exclude_same_slide": exclude_same_slide,
            "precision_at_k": precision_at_k(labels, found, k),
            "map": mean_average_precision(labels, found, k), "per_label": per_label}
