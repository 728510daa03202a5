"""The patch index: one Parquet file per slide, read together as one dataset.

Schema (see ``docs/patches.md``): ``key, slide_id, x, y, level, mpp, size, footprint,
label, tissue_fraction, tumour_fraction, split, centre, shard, member``.

- ``x, y``: the level-0 top-left corner; ``level``: the level read (the best level for
  ``mpp`` patches); ``mpp``: set for ``mpp`` patches, null otherwise.
- ``size``: the patch side in output pixels; ``footprint``: its side in level-0 pixels.
- ``centre``: the manifest's ``centre`` column (null when absent).
- ``shard``: the tar shard holding the pixels and ``member`` the image's name in it
  (``<key>.png`` or ``<key>.jpg``; the metadata is ``<key>.json``); null when not
  materialised.

``open_index(DIR)`` returns a ``pyarrow.dataset.Dataset`` over ``DIR/*.parquet``: filters
and column selections are pushed down to the files, so a 33 M-row index is never loaded
whole (``dataset.to_table(columns=["x", "y"], filter=pc.field("label") == "tumour")``).
``DIR`` may be an fsspec URL (``s3://bucket/run/``, ``gs://``, ``az://``...): the folder is
listed and the files read through fsspec (``pyarrow.fs.PyFileSystem(FSSpecHandler(fs))``),
with the same push-down (only the footers and the row groups a filter keeps are fetched).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exaslide.atomic import atomic_path

ROW_GROUP_SIZE = 65_536


def schema():
    """The Arrow schema of every index file."""
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()),
        ("slide_id", pa.string()),
        ("x", pa.int64()),
        ("y", pa.int64()),
        ("level", pa.int16()),
        ("mpp", pa.float32()),
        ("size", pa.int32()),
        ("footprint", pa.float32()),
        ("label", pa.string()),
        ("tissue_fraction", pa.float32()),
        ("tumour_fraction", pa.float32()),
        ("split", pa.string()),
        ("centre", pa.string()),
        ("shard", pa.string()),
        ("member", pa.string()),
    ])


def make_table(columns: dict[str, object]):
    """A table in the index schema from per-column arrays or scalars (broadcast)."""
    import pyarrow as pa

    n = len(columns["x"])
    arrays = []
    for field in schema():
        value = columns.get(field.name)
        if value is None or np.isscalar(value):
            value = [value] * n
        arrays.append(pa.array(value, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema())


def write_slide_index(table, path: str | Path) -> Path:
    """Write one slide's table atomically (zstd, 64 k-row groups)."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_SIZE)
    return Path(path)


def open_index(directory: str | Path, *, storage_options: dict | None = None):
    """The dataset-level view over every slide's Parquet file in ``directory`` (an
    extraction's output folder or its ``index/`` folder, local or an fsspec URL).

    Args:
        storage_options: passed to fsspec for a URL (credentials, endpoint...).

    Raises:
        StorageError: a remote folder that cannot be listed (missing bucket, access
            denied...; one line naming the URL). A local folder without index files
            gives an empty dataset (callers report it).
    """
    import pyarrow.dataset as ds

    from exaslide.storage.urls import is_remote

    if is_remote(directory):
        return _open_remote_index(str(directory), storage_options or {})
    directory = Path(directory)
    if (directory / "index").is_dir():
        directory = directory / "index"
    files = sorted(str(p) for p in directory.glob("[!.]*.parquet"))  # not temporaries
    return ds.dataset(files, schema=schema(), format="parquet")


def remote_index_files(url: str, storage_options: dict | None = None):
    """``(fs, paths)``: the fsspec file system of ``url`` (an extraction's output folder
    or its ``index/`` folder) and its index files (sorted, temporaries left out).

    Raises:
        StorageError: the folder cannot be listed (one line naming the URL).
    """
    from exaslide.storage.errors import storage_error
    from exaslide.storage.urls import filesystem

    fs, root = filesystem(url, **(storage_options or {}))
    root = root.rstrip("/")
    try:
        entries = fs.ls(root, detail=True)
        if any(e["type"] == "directory" and e["name"].rstrip("/").rsplit("/", 1)[-1]
               == "index" for e in entries):
            entries = fs.ls(f"{root}/index", detail=True)
    except Exception as exc:  # each store raises its own errors
        raise storage_error(exc, url, "list the index folder") from exc
    files = sorted(e["name"] for e in entries if e["type"] == "file"
                   and _is_index_name(e["name"].rsplit("/", 1)[-1]))
    return fs, files


def _is_index_name(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith(".")


def _open_remote_index(url: str, storage_options: dict):
    import pyarrow.dataset as ds
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, files = remote_index_files(url, storage_options)
    return ds.dataset(files, schema=schema(), format="parquet",
                      filesystem=PyFileSystem(FSSpecHandler(fs)))
