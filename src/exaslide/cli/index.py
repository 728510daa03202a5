"""``exaslide index build|add``: vector indexes over embedding stores."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.group("index")
def command() -> None:
    """Build or extend a vector index of an embedding store (see docs/retrieval.md)."""


@command.command("build")
@click.argument("embeddings", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Index folder: index.faiss, meta.parquet, index.json.")
@click.option("--kind", type=click.Choice(["auto", "flat", "ivfpq", "hnsw"]), default="auto",
              show_default=True, help="auto: flat below 100,000 vectors, ivfpq above.")
@click.option("--bytes", "bytes_per_vector", type=int, default=64, show_default=True,
              help="ivfpq: PQ code bytes per vector.")
@click.option("--nlist", type=int, default=None, help="ivfpq: inverted lists [4 sqrt(N)].")
@click.option("--nprobe", type=int, default=None,
              help="ivfpq: lists searched per query [nlist / 16].")
@click.option("--opq", is_flag=True, help="ivfpq: learn an OPQ rotation first.")
@click.option("--rerank", type=int, default=0, show_default=True,
              help="ivfpq: re-rank rerank x k candidates exactly from a float16 copy "
                   "(+2 D bytes per vector; 0: off).")
@click.option("--pq8", is_flag=True,
              help="ivfpq: 8-bit PQ codes (bytes sub-quantisers) instead of 4-bit fast-scan "
                   "codes (2 x bytes); slower to train and search.")
@click.option("--ef-search", type=int, default=128, show_default=True,
              help="hnsw: candidate list length at search time.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the training sample.")
def build(embeddings, out_dir, kind, bytes_per_vector, nlist, nprobe, opq, rerank, pq8,
          ef_search, seed) -> None:
    """Index the vectors of EMBEDDINGS (a store written by the embed step)."""
    from exaslide.retrieval.index import build_index

    started = time.perf_counter()
    params = {"bytes_per_vector": bytes_per_vector, "nlist": nlist, "nprobe": nprobe,
              "opq": opq, "rerank": rerank, "fast_scan": not pq8}
    if kind not in ("auto", "ivfpq"):
        params = {"ef_search": ef_search} if kind == "hnsw" else {}
    from exaslide.jobs import OutputLock

    with OutputLock(out_dir):  # two builds into one folder would mix their files
        index = build_index(embeddings, out_dir, kind, seed=seed, **params)
    click.echo(f"{len(index)} vectors of dimension {index.dim} in a {index.kind} index "
               f"({index.bytes_per_vector():.0f} B/vector) in "
               f"{time.perf_counter() - started:.1f} s: {out_dir}")


@command.command("add")
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False))
@click.argument("embeddings", type=click.Path(file_okay=False))
def add(index_dir, embeddings) -> None:
    """Append the vectors of EMBEDDINGS to INDEX (ids continue after the last one)."""
    from exaslide.jobs import OutputLock
    from exaslide.retrieval.index import add_to_index

    if not Path(index_dir).is_dir():
        raise click.BadParameter(f"{index_dir}: no such index folder", param_hint="INDEX")
    with OutputLock(index_dir):
        index = add_to_index(index_dir, embeddings)
    click.echo(f"{len(index)} vectors in {index_dir}")
