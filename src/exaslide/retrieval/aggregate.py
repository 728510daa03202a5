"""Slide embeddings from a patch store: the mean vector, or a Yottixel-like mosaic.

:func:`slide_embeddings` reads a patch store (kind ``"patches"``, one part per slide) and
writes a store of kind ``"slides"``, one part per slide (resumable like the patch store):

- ``"mean"``: one row per slide, the mean of its L2-normalised patch vectors (not
  normalised again; the index does that).
- ``"mosaic"``: the slide's patch vectors (L2-normalised) are clustered by k-means
  (``faiss.Kmeans``, seeded) into ``mosaic_size`` clusters and the patch nearest each
  centroid represents it; the slide is the set of its representatives, one row each
  (``key``, ``x``, ``y``, ``level``, ``size`` of the patch, ``cluster``). A slide with at
  most ``mosaic_size`` patches keeps them all. Compare mosaics with
  :func:`mosaic_distance` (Yottixel's "median of minimum" distances) and rank slides
  with :func:`search_slides`.

Every row carries the slide's ``slide_id``, ``label`` (``"tumour"`` when any of its
patches is labelled tumour, else ``"normal"``; null when no patch has a label),
``split`` (its patches' most frequent split) and ``patches`` (patches embedded).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exaslide.errors import RetrievalError

logger = logging.getLogger(__name__)

METHODS = ("mean", "mosaic")
#: k-means iterations of a mosaic.
KMEANS_ITERATIONS = 20


@dataclass
class SlideOutcome:
    """What happened to one slide of :func:`slide_embeddings`."""

    slide_id: str
    status: str  #: "done", "skipped" or "failed"
    error: str = ""
    rows: int = 0


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def slide_label(labels) -> str | None:
    """``"tumour"`` if any patch is tumour, else ``"normal"``; None without labels."""
    labels = [v for v in labels if v is not None]
    if not labels:
        return None
    return "tumour" if "tumour" in labels else "normal"


def mosaic(vectors: np.ndarray, size: int = 16, seed: int = 0) -> tuple[np.ndarray,
                                                                         np.ndarray]:
    """``(rows, clusters)``: the patch rows nearest each k-means centroid of the
    L2-normalised ``vectors`` (``size`` clusters), sorted by row, and each one's cluster.
    All rows when there are at most ``size``."""
    import faiss

    x = _normalise(vectors)
    if len(x) <= size:
        return np.arange(len(x)), np.arange(len(x))
    kmeans = faiss.Kmeans(x.shape[1], size, niter=KMEANS_ITERATIONS, seed=int(seed),
                          verbose=False, min_points_per_centroid=1)
    kmeans.train(x)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, nearest = index.search(kmeans.centroids, 1)
    chosen: dict[int, int] = {}
    for cluster, row in enumerate(nearest[:, 0].tolist()):
        if row >= 0:
            chosen.setdefault(int(row), cluster)  # two centroids may share a patch
    rows = np.array(sorted(chosen), dtype=np.int64)
    return rows, np.array([chosen[r] for r in rows], dtype=np.int64)


def _slide_rows(table, vectors: np.ndarray, method: str, mosaic_size: int, seed: int):
    import pyarrow as pa

    slide_id = table.column("slide_id")[0].as_py()
    label = slide_label(table.column("label").to_pylist()) \
        if "label" in table.column_names else None
    splits = [s for s in table.column("split").to_pylist() if s is not None] \
        if "split" in table.column_names else []
    split = Counter(splits).most_common(1)[0][0] if splits else None
    n = table.num_rows
    if method == "mean":
        out = _normalise(vectors).mean(axis=0, keepdims=True)
        columns = {"key": [slide_id], "slide_id": [slide_id]}
    else:
        rows, clusters = mosaic(vectors, mosaic_size, seed)
        out = vectors[rows]
        picked = table.take(pa.array(rows))
        columns = {c: picked.column(c) for c in ("key", "slide_id", "x", "y", "level", "size")
                   if c in picked.column_names}
        columns["cluster"] = pa.array(clusters, type=pa.int32())
    m = len(out)
    columns.update(label=pa.array([label] * m, type=pa.string()),
                   split=pa.array([split] * m, type=pa.string()),
                   patches=pa.array([n] * m, type=pa.int64()))
    return pa.table(columns), out


def slide_embeddings(store_folder: str | os.PathLike, out_dir: str | os.PathLike, *,
                     method: str = "mean", mosaic_size: int = 16, seed: int = 0,
                     on_result=None) -> Path:
    """Write the slide store ``out_dir`` from the patch store ``store_folder`` (see
    module doc) as the ``embed-slides`` stage of the job engine: slides done with the same
    settings and unchanged source parts are skipped; a failing slide is logged, passed
    to ``on_result`` (with every other :class:`SlideOutcome`) and the others still run.

    Raises:
        RetrievalError: not a patch store, an unknown method, or ``out_dir`` holds slide
            embeddings of another model or method.
    """
    from exaslide.jobs import SlideEntry, Stage, run_stage
    from exaslide.retrieval.store import read_info, write_info

    if method not in METHODS:
        raise RetrievalError(f"method must be one of {METHODS}, got {method!r}")
    if mosaic_size < 1:
        raise RetrievalError(f"mosaic_size must be at least 1, got {mosaic_size}")
    source, out = Path(store_folder), Path(out_dir)
    info = read_info(source)  # checked against its checksum
    if info.get("kind") != "patches":
        raise RetrievalError(f"{source}: holds {info.get('kind')!r} embeddings; slide "
                             "embeddings are made from a patch store")
    settings = {"method": method, "mosaic_size": mosaic_size if method == "mosaic" else None,
                "seed": seed if method == "mosaic" else None}
    old = out / "embeddings.json"
    if old.exists():
        previous = read_info(out)
        if any(previous.get(k) != v for k, v in settings.items()):
            raise RetrievalError(f"{out}: holds slide embeddings made with "
                                 f"{ {k: previous.get(k) for k in settings} }, not {settings}; "
                                 "use another folder")
    write_info(out, {**{k: info.get(k) for k in ("dim", "model", "model_path", "patch",
                                                  "mean", "std")},
                     "kind": "slides", **settings, "source": str(source)})
    parts = sorted(p.stem for p in (source / "parts").glob("[!.]*.parquet"))
    options = AggregateOptions(method, settings["mosaic_size"], settings["seed"],
                               str(source.resolve()))
    stage = Stage("embed-slides", options, process=_process,
                  inputs=lambda entry: [entry.path, entry.annotation])

    def on_event(kind: str, value) -> None:
        if kind == "slide" and on_result is not None:
            on_result(SlideOutcome(value.slide_id, value.status, value.error,
                                   int(value.result.get("rows", 0))))

    entries = [SlideEntry(part, source / "parts" / f"{part}.parquet",
                          source / "parts" / f"{part}.npy") for part in parts]
    run_stage(stage, entries, out, scheduler="inline", on_event=on_event)
    return out


@dataclass(frozen=True)
class AggregateOptions:
    """What decides a slide's embedding rows (stored in its status)."""

    method: str
    mosaic_size: int | None
    seed: int | None
    source: str


def _process(entry, options: AggregateOptions, ctx) -> dict:
    """The ``embed-slides`` stage: one slide's rows from its patch-store part."""
    from exaslide.retrieval.embed import adopt_parts
    from exaslide.retrieval.store import read_part, write_part

    table, vectors = read_part(Path(options.source), entry.slide_id)
    if table.num_rows == 0:
        raise RetrievalError(f"{entry.slide_id}: no patches")
    rows, out_vectors = _slide_rows(table, vectors, options.method,
                                    options.mosaic_size or 16, options.seed or 0)
    write_part(ctx.partial, entry.slide_id, rows, out_vectors)
    adopt_parts(ctx)
    return {"rows": rows.num_rows}


def mosaic_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between two mosaics (``(m, D)`` and ``(n, D)`` vectors): the median of
    the minimum cosine distances of every vector of one mosaic to the other mosaic, taken
    in both directions (Yottixel's "median of minimum", made symmetric). 0 for identical
    mosaics."""
    a, b = _normalise(np.atleast_2d(a)), _normalise(np.atleast_2d(b))
    if not len(a) or not len(b):
        raise RetrievalError("mosaic_distance: a mosaic is empty")
    distance = 1.0 - a @ b.T
    minimums = np.concatenate([distance.min(axis=1), distance.min(axis=0)])
    return float(max(0.0, np.median(minimums)))


def search_slides(store, query_slide_id: str, k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` slides nearest ``query_slide_id`` by :func:`mosaic_distance` (a mean
    store's single vectors give the cosine distance), nearest first, the query excluded.

    Args:
        store: a slide store folder, or its :class:`~exaslide.retrieval.store.Embeddings`.

    Raises:
        RetrievalError: the query slide is not in the store.
    """
    from exaslide.retrieval.store import Embeddings, read_embeddings

    emb = store if isinstance(store, Embeddings) else read_embeddings(store)
    ids = np.asarray(emb.table.column("slide_id").to_pylist(), dtype=object)
    if query_slide_id not in set(ids):
        raise RetrievalError(f"slide {query_slide_id!r} is not in the store "
                             f"({len(set(ids))} slides)")
    query = emb.vectors[ids == query_slide_id]
    ranked = [(str(s), mosaic_distance(query, emb.vectors[ids == s]))
              for s in dict.fromkeys(ids) if s != query_slide_id]
    ranked.sort(key=lambda item: (item[1], item[0]))
    return ranked[:k]
