"""The embedding store: vectors with the keys and metadata of what they embed.

A store is a folder::

    embeddings.json        {"kind": "patches"|"slides"|"figures"|"captions", "dim": D,
                            "model": name, "model_path": path|null, "source": ...}
    parts/<part>.parquet   one row per vector: at least ``key``; for patches the index
                           columns (slide_id, x, y, level, size, label, split); for
                           figures ``figure_id``, ``path``, ``caption``
    parts/<part>.npy       float16 (rows, D), row i embeds row i of the Parquet file

Parts (one per slide, or per chunk of figures) are written atomically, the ``.npy``
first and the ``.parquet`` last, so a part whose Parquet file exists is complete (what
:func:`read_embeddings` reads). Patch and slide stores are written by the job engine
(:mod:`exaslide.jobs`), whose ``status/<slide_id>.json`` decides what a rerun skips;
figure stores skip the parts already there.
:func:`read_embeddings` concatenates the parts in name order.

Every file has a ``<name>.sha256`` sidecar (``sha256sum`` format, see
:mod:`exaslide.integrity`) written with it; readers refuse a file whose digest differs
(corrupt or truncated: re-embed) and warn once about files without one (stores written
by an earlier release).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.errors import RetrievalError
from exaslide.integrity import atomic_write, verify, warn_unchecked
from exaslide.jsonio import write_json

KINDS = ("patches", "slides", "figures", "captions")
#: What makes two stores (or a store and an index) one embedding space.
SAME_SPACE_KEYS = ("kind", "dim", "model", "model_path", "weights", "patch", "mean", "std",
                   "projection_path", "text_model")
#: What to do about a corrupt ``embeddings.json`` (ends the error message).
REMEDY = "re-embed into a new folder"


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
    """Write (or check) ``embeddings.json``: a store holds one embedding space (kind,
    dimension, model and its weights, patch spec, normalisation, projection heads, text
    model: the keys an index checks too), so a rerun with other settings cannot leave
    the description of the old ones.

    ``folder`` may be an object-store URL (``s3://...``): the file and its ``.sha256``
    sidecar are then read and written there.

    Raises:
        RetrievalError: the folder already holds embeddings of another space.
    """
    if info.get("kind") not in KINDS:
        raise RetrievalError(f"embedding kind must be one of {KINDS}, got {info.get('kind')!r}")
    from exaslide.storage.urls import is_remote

    if is_remote(str(folder)):
        _write_remote_info(str(folder), info)
        return
    folder = Path(folder)
    path = folder / "embeddings.json"
    if path.exists():
        old = read_info(folder)
        for key in SAME_SPACE_KEYS:
            if old.get(key) != info.get(key):
                raise RetrievalError(f"{folder}: holds embeddings with {key}={old.get(key)!r}, "
                                     f"not {info.get(key)!r}; use another folder")
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, info, checksum=True)


def _write_remote_info(url: str, info: dict[str, Any]) -> None:
    """:func:`write_info` into an object-store folder (the sidecar after the file)."""
    import hashlib

    from exaslide.integrity import SUFFIX, sidecar_text
    from exaslide.jsonio import dumps
    from exaslide.storage.errors import redact_url, storage_error
    from exaslide.storage.urls import filesystem

    fs, root = filesystem(url)
    path = f"{root.rstrip('/')}/embeddings.json"
    try:
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            data = None
        if data is not None:
            sidecar = fs.cat_file(path + SUFFIX).decode().split()
            if hashlib.sha256(data).hexdigest() not in sidecar:
                raise RetrievalError(f"{redact_url(url)}/embeddings.json: does not match its "
                                     f"checksum (corrupt or truncated); {REMEDY}")
            old = json.loads(data)
            for key in SAME_SPACE_KEYS:
                if old.get(key) != info.get(key):
                    raise RetrievalError(f"{redact_url(url)}: holds embeddings with {key}="
                                         f"{old.get(key)!r}, not {info.get(key)!r}; use "
                                         "another folder")
            return
        text = dumps(info).encode()
        fs.pipe_file(path, text)
        fs.pipe_file(path + SUFFIX, sidecar_text("embeddings.json",
                                                 [hashlib.sha256(text).hexdigest()]).encode())
    except (RetrievalError, ValueError):
        raise
    except Exception as exc:
        raise storage_error(exc, f"{url}/embeddings.json", "write") from exc


def has_parts(folder: str) -> bool:
    """True when the store ``folder`` (a path or URL) already holds a finished part."""
    from exaslide.storage.urls import filesystem, is_remote

    if not is_remote(folder):
        return any((Path(folder) / "parts").glob("[!.]*.parquet"))
    fs, root = filesystem(folder)
    try:
        return bool(fs.glob(f"{root.rstrip('/')}/parts/[!.]*.parquet"))
    except FileNotFoundError:
        return False


def read_info(folder: str | os.PathLike, unchecked: list[Path] | None = None) -> dict:
    """The store's ``embeddings.json``, checked against its checksum.

    Args:
        unchecked: where to append the file when it has no checksum (the caller warns);
            None to warn here.

    Raises:
        RetrievalError: no readable ``embeddings.json``, or a corrupt one.
    """
    path = Path(folder) / "embeddings.json"
    _check(path, unchecked)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RetrievalError(f"{folder}: not an embedding store (no readable "
                             "embeddings.json)") from exc
    if not isinstance(info, dict):
        raise RetrievalError(f"{path}: expected a JSON object")
    return info


def _check(path: Path, unchecked: list[Path] | None, remedy: str = REMEDY) -> None:
    if not verify(path, RetrievalError, remedy, warn_missing=unchecked is None) \
            and unchecked is not None and path.is_file():
        unchecked.append(path)


def _part_remedy(parquet: Path) -> str:
    return (f"re-embed: delete {parquet.name} (the part's completion mark) and run the same "
            "command again, which redoes only missing parts, or embed into a new folder")


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
    with atomic_write(parts / f"{part}.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(vectors, dtype=np.float16))
    with atomic_write(parts / f"{part}.parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_part(folder: str | os.PathLike, part: str,
              unchecked: list[Path] | None = None) -> tuple[Any, np.ndarray]:
    """``(table, float32 vectors)`` of one complete part, checked against their
    checksums.

    Args:
        unchecked: where to append files without a checksum (the caller warns once);
            None to warn here.

    Raises:
        RetrievalError: a corrupt or unreadable file, or rows and vectors that differ in
            number.
    """
    import pyarrow.parquet as pq

    folder = Path(folder)
    npy, parquet = (folder / "parts" / f"{part}{ext}" for ext in (".npy", ".parquet"))
    for path in (npy, parquet):
        _check(path, unchecked, _part_remedy(parquet))
    try:
        table = pq.read_table(parquet)
        vectors = np.load(npy, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError, EOFError) as exc:
        raise RetrievalError(f"{folder}: part {part} is not readable "
                             f"({str(exc).splitlines()[0][:200]}); "
                             f"{_part_remedy(parquet)}") from exc
    if len(vectors) != table.num_rows:
        raise RetrievalError(f"{folder}: part {part} has {table.num_rows} rows but "
                             f"{len(vectors)} vectors")
    return table, vectors


def read_embeddings(folder: str | os.PathLike) -> Embeddings:
    """Every complete part of a store, concatenated in part-name order.

    Raises:
        RetrievalError: not a store, no complete part, or a corrupt file (its digest is
            not the one recorded when it was written).
    """
    import pyarrow as pa

    folder = Path(folder)
    unchecked: list[Path] = []
    info = read_info(folder, unchecked)
    names = sorted(p.stem for p in (folder / "parts").glob("[!.]*.parquet"))
    if not names:
        raise RetrievalError(f"{folder}: the store holds no embeddings yet")
    tables, vectors = [], []
    for name in names:
        table, part_vectors = read_part(folder, name, unchecked)
        tables.append(table)
        vectors.append(part_vectors)
    warn_unchecked(unchecked)
    table = pa.concat_tables(tables, promote_options="default")
    return Embeddings(np.concatenate(vectors), table, info)
