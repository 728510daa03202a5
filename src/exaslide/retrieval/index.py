"""Vector indexes over an embedding store: FAISS, cosine similarity, metadata per id.

An index is a folder::

    index.faiss     the FAISS index (vectors L2-normalised; inner product = cosine)
    meta.parquet    the store's table; row i describes id i
    index.json      {"kind", "params", "dim", "count", "store": <the store's info>,
                     "slides": {slide_id: path}}
    *.sha256        the SHA-256 of each file above (``sha256sum`` format), written with
                    it; :func:`load_index` refuses a file whose digest differs


Kinds (see ``docs/retrieval.md`` for when to use which):

- ``flat``: exact search (``IndexFlatIP``), ``4 * D`` bytes per vector.
- ``ivfpq``: inverted lists + product quantisation (``[OPQ] IVF nlist, PQ``): by
  default ``2 * bytes`` 4-bit fast-scan codes, else ``bytes`` 8-bit codes; ``bytes + 8``
  bytes per vector (codes + id); optional exact re-ranking of the top
  ``rerank * k`` candidates from a float16 copy (``+ 2 * D`` bytes per vector).
- ``hnsw``: graph search over the full vectors (``IndexHNSWFlat``),
  ``4 * D + ~8 * M`` bytes per vector.
- ``auto``: ``flat`` below 100,000 vectors, ``ivfpq`` above.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.errors import RetrievalError
from exaslide.integrity import atomic_write, verify, warn_unchecked
from exaslide.jsonio import write_json
from exaslide.retrieval.store import SAME_SPACE_KEYS

logger = logging.getLogger(__name__)

KINDS = ("auto", "flat", "ivfpq", "hnsw")
AUTO_FLAT_BELOW = 100_000
#: The files of an index folder, in the order they are written.
FILES = ("index.faiss", "meta.parquet", "index.json")
#: What to do about a corrupt index file (ends the error message).
REMEDY = "rebuild the index with 'exaslide index build'"


@dataclass
class Hit:
    """One search result: cosine similarity, the id (row of the index's table) and that
    row as a dict."""

    score: float
    id: int
    meta: dict[str, Any]


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, C-contiguous; zero rows stay zero)."""
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _pq_m(dim: int, max_bytes: int) -> int:
    """The largest number of PQ sub-quantisers <= ``max_bytes`` that divides ``dim``."""
    for m in range(min(max_bytes, dim), 0, -1):
        if dim % m == 0:
            return m
    return 1


def _factory(dim: int, count: int, kind: str, params: dict[str, Any]):
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(params["M"]), ip)
        index.hnsw.efConstruction = int(params["ef_construction"])
        return index
    m, nbits = params["m"], params["nbits"]
    code = f"PQ{m}x4fs" if params.get("fast_scan") else f"PQ{m}x{nbits}"
    spec = (f"OPQ{m}," if params["opq"] else "") + f"IVF{params['nlist']},{code}"
    index = faiss.index_factory(dim, spec, ip)
    if params["rerank"]:
        index = faiss.IndexRefine(index, faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_fp16, ip))
    return index


def resolve_params(kind: str, dim: int, count: int, *, bytes_per_vector: int = 64,
                   nlist: int | None = None, nprobe: int | None = None, M: int = 32,
                   ef_search: int = 128, ef_construction: int = 200, opq: bool = False,
                   rerank: int = 0, fast_scan: bool = True) -> tuple[str, dict[str, Any]]:
    """The concrete kind and its settings for ``count`` vectors of ``dim`` dimensions.

    Raises:
        RetrievalError: unknown kind or impossible settings.
    """
    if kind not in KINDS:
        raise RetrievalError(f"index kind must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        kind = "flat" if count < AUTO_FLAT_BELOW else "ivfpq"
    if kind == "flat":
        return kind, {}
    if kind == "hnsw":
        if M < 2 or ef_search < 1:
            raise RetrievalError(f"hnsw needs M >= 2 and ef_search >= 1, got {M}, {ef_search}")
        return kind, {"M": M, "ef_search": ef_search, "ef_construction": ef_construction}
    if bytes_per_vector < 1:
        raise RetrievalError(f"bytes per vector must be at least 1, got {bytes_per_vector}")
    if count < 256:
        raise RetrievalError(f"an ivfpq index needs at least 256 vectors to train its "
                             f"8-bit codebooks, got {count}; use --kind flat")
    if nlist is None:  # ~4 sqrt(N), at least 39 training points per list
        nlist = max(1, min(int(4 * math.sqrt(count)), count // 39))
    if nlist < 1 or nlist > count:
        raise RetrievalError(f"nlist must be between 1 and {count}, got {nlist}")
    if nprobe is None:
        nprobe = max(1, min(nlist, round(nlist / 16)))
    if fast_scan and dim % (2 * bytes_per_vector) == 0:  # 4-bit codes, SIMD distances
        m, nbits = 2 * bytes_per_vector, 4
    else:  # 8-bit codebooks want >= 39 * 256 training vectors; smaller sets get fewer bits
        fast_scan, m = False, _pq_m(dim, bytes_per_vector)
        nbits = int(max(4, min(8, math.floor(math.log2(count / 39)))))
    return kind, {"nlist": int(nlist), "nprobe": int(max(1, min(nprobe, nlist))),
                  "m": m, "nbits": nbits, "fast_scan": bool(fast_scan),
                  "opq": bool(opq) and (nbits == 8 or fast_scan),
                  "rerank": int(rerank)}


class VectorIndex:
    """A FAISS index with one metadata row per id; cosine similarity."""

    def __init__(self, index, table, info: dict[str, Any]):
        self.index = index
        self.table = table
        self.info = info
        self.apply_params()

    @property
    def kind(self) -> str:
        return self.info["kind"]

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def apply_params(self, **overrides) -> None:
        """Set the search-time settings (``nprobe``, ``ef_search``, ``rerank``) on the FAISS
        index, from ``info["params"]`` updated with ``overrides``."""
        import faiss

        params = self.info.setdefault("params", {})
        params.update({k: v for k, v in overrides.items() if v is not None})
        if self.kind == "ivfpq":
            faiss.extract_index_ivf(self.index).nprobe = int(params["nprobe"])
            if params.get("rerank"):
                faiss.downcast_index(self.index).k_factor = float(params["rerank"])
        elif self.kind == "hnsw":
            faiss.downcast_index(self.index).hnsw.efSearch = int(params["ef_search"])

    def add(self, vectors: np.ndarray, table) -> None:
        """Append vectors and their rows; their ids continue after the last one.

        Raises:
            RetrievalError: rows and vectors differ in number, or the dimension differs.
        """
        import pyarrow as pa

        x = normalise(vectors)
        if x.shape[1] != self.dim:
            raise RetrievalError(f"vectors have dimension {x.shape[1]}, the index {self.dim}")
        if table.num_rows != len(x):
            raise RetrievalError(f"{table.num_rows} rows but {len(x)} vectors")
        if not self.index.is_trained:
            raise RetrievalError("the FAISS index is not trained")
        merged = table if self.table is None else pa.concat_tables(  # may raise: first
            [self.table, table], promote_options="default")
        self.index.add(x)
        self.table = merged
        self.info["count"] = int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The ``k`` nearest ids of each query (cosine similarity, best first).

        Raises:
            RetrievalError: ``k < 1`` or queries of another dimension.
        """
        if int(k) < 1:
            raise RetrievalError(f"k must be at least 1, got {k}")
        q = normalise(queries)
        if q.shape[1] != self.dim:
            raise RetrievalError(f"queries have dimension {q.shape[1]} but the index holds "
                                 f"{self.dim}-dimensional vectors (another model?)")
        scores, ids = self.index.search(q, min(int(k), max(len(self), 1)))
        wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
        rows = dict(zip(wanted, self.table.take(wanted).to_pylist(), strict=True)) \
            if wanted else {}
        return [[Hit(float(s), int(i), rows[int(i)]) for s, i in zip(srow, irow, strict=True)
                 if i >= 0] for srow, irow in zip(scores, ids, strict=True)]

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``index.faiss``, ``meta.parquet`` and ``index.json`` (each atomically,
        with its ``.sha256`` checksum)."""
        import faiss
        import pyarrow.parquet as pq

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "index.faiss") as tmp:
            faiss.write_index(self.index, str(tmp))
        with atomic_write(out / "meta.parquet") as tmp:
            pq.write_table(self.table, tmp, compression="zstd")
        self.info["count"] = int(self.index.ntotal)
        write_json(out / "index.json", self.info, checksum=True)
        return out

    def bytes_per_vector(self) -> float:
        """Serialised FAISS index size divided by the number of vectors."""
        import faiss

        return len(faiss.serialize_index(self.index)) / max(len(self), 1)


def load_index(folder: str | os.PathLike) -> VectorIndex:
    """Open an index folder written by :meth:`VectorIndex.save`.

    Every file is checked against its ``.sha256`` checksum first; files without one
    (written by an earlier release) are read with a warning.

    Raises:
        RetrievalError: missing, corrupt (a digest that is not the recorded one) or
            unreadable files, or files that disagree.
    """
    import faiss
    import pyarrow.parquet as pq

    folder = Path(folder)
    unchecked = [folder / name for name in FILES
                 if not verify(folder / name, RetrievalError, REMEDY, warn_missing=False)
                 and (folder / name).is_file()]
    warn_unchecked(unchecked)
    try:
        info = json.loads((folder / "index.json").read_text())
        table = pq.read_table(folder / "meta.parquet")
        index = faiss.read_index(str(folder / "index.faiss"))
    except (OSError, ValueError, RuntimeError) as exc:
        raise RetrievalError(f"{folder}: not a readable vector index (expected index.json, "
                             f"meta.parquet and index.faiss; build one with 'exaslide "
                             f"index build'): {str(exc).splitlines()[0][:200]}") from exc
    if index.ntotal != table.num_rows or index.d != info.get("dim"):
        raise RetrievalError(f"{folder}: index.faiss holds {index.ntotal} vectors of "
                             f"dimension {index.d}, meta.parquet {table.num_rows} rows, "
                             f"index.json dim {info.get('dim')}; rebuild the index")
    return VectorIndex(index, table, info)


def _as_embeddings(source):
    from exaslide.retrieval.store import Embeddings, read_embeddings

    return source if isinstance(source, Embeddings) else read_embeddings(source)


def _slide_paths(table, store_info: dict, slides) -> dict[str, str]:
    """Slide paths for hit images: ``slides`` (a mapping) or the extraction status files
    of the store's ``source`` folder, when the table has slide ids but no path column."""
    names = set(table.column_names)
    if "slide_id" not in names or names & {"path", "slide_path"}:
        return {}
    ids = sorted({str(s) for s in table["slide_id"].to_pylist() if s is not None})
    found: dict[str, str] = {}
    source = store_info.get("source")
    if isinstance(source, str) and (Path(source) / "status").is_dir():
        from exaslide.data.sources import slide_paths_from_status

        found.update(slide_paths_from_status(Path(source), ids))
    found.update({str(k): str(v) for k, v in (slides or {}).items()})
    return found


def build_index(source, out_dir: str | os.PathLike | None = None, kind: str = "auto", *,
                slides: dict[str, str] | None = None, seed: int = 0,
                train_size: int = 200_000, **params) -> VectorIndex:
    """Build a cosine-similarity index of an embedding store.

    Args:
        source: a store folder or an :class:`~exaslide.retrieval.store.Embeddings`.
        out_dir: where to save the index (not saved when None).
        kind: ``auto``, ``flat``, ``ivfpq`` or ``hnsw``.
        slides: ``{slide_id: path}`` for hit images when the table has no path column
            (otherwise read from the extraction status files of the store's ``source``).
        seed: seed of the training sample (ivfpq).
        train_size: at most this many vectors train the coarse quantiser and codebooks.
        **params: ``bytes_per_vector`` (64), ``nlist``, ``nprobe``, ``opq``, ``rerank``,
            ``fast_scan`` (ivfpq; True: 4-bit fast-scan codes, False: 8-bit codes);
            ``M`` (32), ``ef_search`` (128), ``ef_construction`` (hnsw).

    Raises:
        RetrievalError: unreadable store, unknown kind or impossible settings.
    """
    store = _as_embeddings(source)
    x = normalise(store.vectors)
    if len(x) == 0:
        raise RetrievalError("no vectors to index")
    kind, resolved = resolve_params(kind, x.shape[1], len(x), **params)
    index = _factory(x.shape[1], len(x), kind, resolved)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = x if len(x) <= train_size else x[np.sort(
            rng.choice(len(x), train_size, replace=False))]
        index.train(sample)
    info = {"kind": kind, "params": resolved, "dim": int(x.shape[1]), "count": 0,
            "store": dict(store.info),
            "slides": _slide_paths(store.table, store.info, slides)}
    vindex = VectorIndex(index, None, info)
    vindex.add(x, store.table)
    if out_dir is not None:
        vindex.save(out_dir)
    return vindex


#: Store settings that must agree for two stores' vectors to be comparable.


def add_to_index(folder: str | os.PathLike, source) -> VectorIndex:
    """Append a store's vectors to a saved index and save it again.

    Rows whose ``key`` the index already holds are skipped (re-adding a store that grew
    after a resumed embedding run adds only its new rows).

    Raises:
        RetrievalError: the store's vectors live in another space than the index's: a
            different kind, dimension, model, weights, patch spec, normalisation or
            (figures) projection heads or text model.
    """
    vindex = load_index(folder)
    store = _as_embeddings(source)
    old = vindex.info.get("store", {})
    for key in SAME_SPACE_KEYS:
        if old.get(key) != store.info.get(key):
            raise RetrievalError(f"{folder}: the index holds embeddings with {key}="
                                 f"{old.get(key)!r}, the store {store.info.get(key)!r}: "
                                 "they are not comparable; build a separate index")
    vectors, table = store.vectors, store.table
    if "key" in table.column_names and vindex.table is not None \
            and "key" in vindex.table.column_names:
        known = set(vindex.table.column("key").to_pylist())
        fresh = np.array([k not in known for k in table.column("key").to_pylist()])
        vectors, table = vectors[fresh], table.filter(fresh)
    if len(vectors):
        vindex.add(vectors, table)
    vindex.info["slides"] = {**vindex.info.get("slides", {}),
                             **_slide_paths(store.table, store.info, None)}
    vindex.save(folder)
    return vindex
