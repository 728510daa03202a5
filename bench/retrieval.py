"""Vector-index benchmark: build time, bytes per vector, one-core queries/s and recall@10
against exact search, for flat, IVF-PQ (plain, OPQ, re-ranked) and HNSW.

    python bench/retrieval.py --quick            # 20k vectors, < 60 s
    python bench/retrieval.py --n 200000         # a few minutes on 2 cores
    python bench/retrieval.py                    # 1 M x 512 (the issue's scale; long)
    python bench/retrieval.py --embeddings STORE # real embeddings (held-out queries)

Data: ``random`` (i.i.d. Gaussian, the worst case for PQ), ``clustered`` (1,000
Gaussian clusters, isotropic spread in all dimensions) and ``lowrank`` (1,000 clusters
whose spread lies in a 32-d subspace, closer to real embeddings). Queries are drawn from the same
distribution but are not in the database. Targets (issue): recall@10 >= 0.95 at
>= 1,000 queries/s on one core with <= 64 B/vector.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def make_data(kind: str, n: int, dim: int, queries: int, seed: int):
    rng = np.random.default_rng(seed)
    if kind == "random":
        return (rng.standard_normal((n, dim), dtype=np.float32),
                rng.standard_normal((queries, dim), dtype=np.float32))
    centres = rng.standard_normal((1000, dim), dtype=np.float32)
    # lowrank: the spread within clusters lies in a 32-d subspace (CNN features have a low
    # intrinsic dimension); clustered: isotropic spread in all D dimensions (harder)
    basis = rng.standard_normal((32, dim), dtype=np.float32) * (0.35 / 32 ** 0.5) \
        if kind == "lowrank" else None
    out = []
    for rows in (n, queries):
        if basis is None:
            x = rng.standard_normal((rows, dim), dtype=np.float32)
            x *= 0.35
        else:
            x = rng.standard_normal((rows, 32), dtype=np.float32) @ basis
        x += centres[rng.integers(0, len(centres), rows)]
        out.append(x)
    return out[0], out[1]


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in
               zip(found, truth, strict=True))
    return hits / (len(truth) * k)


def configs(n: int, quick: bool, hnsw_max: int, pq8: bool, opq: bool):
    yield "flat", "flat", {}
    for nprobe in ((8, 32) if quick else (8, 16, 32, 64)):
        yield f"ivfpq 64B fs nprobe={nprobe}", "ivfpq", {"nprobe": nprobe}
    if pq8:
        yield "ivfpq 64B pq8 nprobe=32", "ivfpq", {"nprobe": 32, "fast_scan": False}
    if opq:
        yield "opq+ivfpq 64B fs nprobe=32", "ivfpq", {"nprobe": 32, "opq": True}
    for factor in ((4,) if quick else (4, 10)):
        yield (f"ivfpq 64B fs+fp16 rr x{factor} np=32", "ivfpq",
               {"nprobe": 32, "rerank": factor})
    if n <= hnsw_max:
        for ef in ((64,) if quick else (64, 128)):
            yield f"hnsw M=32 ef={ef}", "hnsw", {"ef_search": ef}


def run(name: str, x: np.ndarray, q: np.ndarray, args) -> list[tuple]:
    import faiss
    import pyarrow as pa

    from exaslide.retrieval.index import build_index, normalise
    from exaslide.retrieval.store import Embeddings

    store = Embeddings(x, pa.table({"key": np.arange(len(x))}), {"kind": "patches",
                                                                   "dim": x.shape[1]})
    qn = normalise(q)
    faiss.omp_set_num_threads(args.threads)
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(normalise(x))
    _, truth = exact.search(qn, 10)
    del exact
    rows, built = [], {}
    for label, kind, params in configs(len(x), args.quick, args.hnsw_max, args.pq8,
                                          args.opq):
        faiss.omp_set_num_threads(args.threads)
        key = (kind, params.get("opq"), bool(params.get("rerank")), params.get("fast_scan"))
        started = time.perf_counter()
        if key in built:  # same structure, other search setting
            index = built[key]
            index.apply_params(**params)
            build_s = float("nan")
        else:
            index = build_index(store, None, kind, train_size=args.train, **params)
            build_s = time.perf_counter() - started
            built = {key: index}
        faiss.omp_set_num_threads(1)
        index.index.search(qn[:50], 10)  # warm up
        started = time.perf_counter()
        _, found = index.index.search(qn, 10)
        qps = len(qn) / (time.perf_counter() - started)
        rows.append((name, len(x), label, build_s, index.bytes_per_vector(), qps,
                     recall_at(found, truth)))
        print(_fmt(rows[-1]), flush=True)
    return rows


HEADER = (f"{'data':<10} {'N':>9} {'index':<34} {'build s':>8} {'B/vec':>8} "
          f"{'q/s 1core':>10} {'R@10':>6}")


def _fmt(row) -> str:
    name, n, label, build_s, bpv, qps, rec = row
    build = "  (same)" if build_s != build_s else f"{build_s:8.1f}"
    return f"{name:<10} {n:>9} {label:<34} {build} {bpv:8.1f} {qps:10.0f} {rec:6.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--data", choices=("random", "clustered", "lowrank", "all"),
                        default="all")
    parser.add_argument("--quick", action="store_true", help="20k vectors, fewer settings")
    parser.add_argument("--embeddings", help="an embedding store: index all but --queries "
                                             "held-out rows")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for building (0: all); queries always use one")
    parser.add_argument("--train", type=int, default=100_000,
                        help="training sample of the IVF/PQ quantisers")
    parser.add_argument("--hnsw-max", type=int, default=300_000,
                        help="skip HNSW above this N (its build is slow on few cores)")
    parser.add_argument("--pq8", action="store_true",
                        help="also 8-bit PQ (64 x 8 bits; its training is slow)")
    parser.add_argument("--opq", action="store_true",
                        help="also OPQ + IVF-PQ (its rotation training is slow)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import faiss

    if args.threads <= 0:
        args.threads = faiss.omp_get_max_threads()
    if args.quick:
        args.n, args.train = min(args.n, 20_000), min(args.train, 10_000)
    print(HEADER, flush=True)
    if args.embeddings:
        from exaslide.retrieval.store import read_embeddings

        vectors = read_embeddings(args.embeddings).vectors
        order = np.random.default_rng(args.seed).permutation(len(vectors))
        held = order[:args.queries]
        run("store", vectors[np.sort(order[args.queries:])], vectors[held], args)
        return
    names = ("random", "clustered", "lowrank") if args.data == "all" else (args.data,)
    for name in names:
        x, q = make_data(name, args.n, args.dim, args.queries, args.seed)
        run(name, x, q, args)


if __name__ == "__main__":
    main()
