"""The embedding store: vectors with the keys and metadata of what they embed.

A store is a folder::

    embeddings.json        {"kind": "patches"|"slides"|"figures"|"captions", "dim": D,
                            "model": name, "model_path": path|null, "source": ...}
    parts/<part>.parquet   one row per vector: at least ``key``; for patches the index
                           columns (slide_id, x, y, level, size, label, split); for
                           figures ``figure_id``, ``path``, ``caption``
    parts/<part>.npy       float16 (rows, D), row i embeds row i of the Parquet file

Parts (one per slide, or per chunk of figures) are written atomically, the ``.npy``
first and the ``.parquet`` last, so a part whose Parquet file exists is complete: an
interrupted embedding run resumes by skipping the parts already there.
:func:`read_embeddings` concatenates the parts in name order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.atomic import atomic_path, write_text
from exaslide.errors import RetrievalError

KINDS = ("patches", "slides", "figures", "captions")


@dataclass
class Embeddings:
    """Vectors (float32, ``(N, D)``), their metadata table (``N`` rows) and the store's
    description."""

    vectors: np.ndarray
    table: Any  #: pyarrow.Table
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.vectors)


def write_info(folder: str | os.PathLike, info: dict[str, Any]) -> None:
    """Write (or check) ``embeddings.json``: a store holds one kind, model and dimension.

    Raises:
        RetrievalError: the folder already holds embeddings of another kind, model or size.
    """
    folder = Path(folder)
    if info.get("kind") not in KINDS:
        raise RetrievalError(f"embedding kind must be one of {KINDS}, got {info.get('kind')!r}")
    path = folder / "embeddings.json"
    if path.exists():
        old = json.loads(path.read_text())
        for key in ("kind", "dim", "model", "model_path", "weights"):
            if old.get(key) != info.get(key):
                raise RetrievalError(f"{folder}: holds embeddings with {key}={old.get(key)!r}, "
                                     f"not {info.get(key)!r}; use another folder")
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(info, indent=2, default=str) + "\n")


def part_done(folder: str | os.PathLike, part: str) -> bool:
    """True when ``part`` was written completely."""
    return (Path(folder) / "parts" / f"{part}.parquet").exists()


def write_part(folder: str | os.PathLike, part: str, table, vectors: np.ndarray) -> None:
    """Write one part atomically (vectors first, table last).

    Raises:
        RetrievalError: rows and vectors differ in number, or the part name is unsafe.
    """
    import pyarrow.parquet as pq

    if not part or "/" in part or "\\" in part or part.startswith("."):
        raise RetrievalError(f"unsafe part name {part!r}")
    if table.num_rows != len(vectors):
        raise RetrievalError(f"part {part}: {table.num_rows} rows but {len(vectors)} vectors")
    parts = Path(folder) / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    with atomic_path(parts / f"{part}.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(vectors, dtype=np.float16))
    with atomic_path(parts / f"{part}.parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_embeddings(folder: str | os.PathLike) -> Embeddings:
    """Every complete part of a store, concatenated in part-name order.

    Raises:
        RetrievalError: not a store, or no complete part.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    try:
        info = json.loads((folder / "embeddings.json").read_text())
    except (OSError, ValueError) as exc:
        raise RetrievalError(f"{folder}: not an embedding store (no readable "
                             "embeddings.json)") from exc
    names = sorted(p.stem for p in (folder / "parts").glob("[!.]*.parquet"))
    if not names:
        raise RetrievalError(f"{folder}: the store holds no embeddings yet")
    tables, vectors = [], []
    for name in names:
        tables.append(pq.read_table(folder / "parts" / f"{name}.parquet"))
        vectors.append(np.load(folder / "parts" / f"{name}.npy").astype(np.float32))
        if len(vectors[-1]) != tables[-1].num_rows:
            raise RetrievalError(f"{folder}: part {name} has {tables[-1].num_rows} rows "
                                 f"but {len(vectors[-1])} vectors")
    table = pa.concat_tables(tables, promote_options="default")
    return Embeddings(np.concatenate(vectors), table, info)
