"""Where a dataset's patches come from: an extraction's output folder, an index, a table.

:func:`load_patches` turns any of these into a :class:`PatchTable`: the index columns a
dataset needs as NumPy arrays (small integer codes for slides and labels, no Python object
per row, so forked ``DataLoader`` workers share the pages instead of copying them) plus the
keys as one Arrow array, and the path (or URL) of every slide.

Slide paths are found, in order, in ``slides=`` (a mapping ``slide_id -> path``), in a
manifest (``manifest=``, the cohort CSV), or in the extraction's status files
(``out/status/<slide_id>.json``, which record the path each slide was read from).

An extraction folder may be local or an fsspec URL (``s3://bucket/run/``, ``gs://``,
``az://``...): the index is then read through fsspec with filters pushed down
(:func:`~exaslide.patches.index.open_index`) and the status files fetched with it; the
slide paths they record (local paths or URLs) are used as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exaslide.errors import DatasetError
from exaslide.storage.urls import is_remote

#: Class codes 0 and 1 when a dataset is not given ``classes``.
PREFERRED_CLASSES = ("normal", "tumour")


@dataclass
class PatchTable:
    """The columns of an index that datasets use, one entry per patch."""

    keys: object  #: pyarrow StringArray
    slide: np.ndarray  #: int32 codes into ``slide_ids``
    slide_ids: list[str]
    paths: list[str]  #: slide path or URL, per slide code
    x: np.ndarray
    y: np.ndarray
    level: np.ndarray
    mpp: np.ndarray  #: float32, NaN when the patch is read at a level
    size: np.ndarray
    label: np.ndarray  #: int16 codes into ``classes``; -1 for patches without a label
    classes: list[str]

    def __len__(self) -> int:
        return len(self.x)


class PatchTableDataset:
    """What the map-style patch datasets share: a :class:`PatchTable` in ``patches`` and
    a :class:`~exaslide.slides.pool.HandlePool` of open slides in ``pool`` (the
    datasets are also ``torch.utils.data.Dataset``; this mixin imports no torch)."""

    patches: PatchTable

    @property
    def classes(self) -> list[str]:
        """Label names, in class-code order."""
        return self.patches.classes

    @property
    def labels(self) -> np.ndarray:
        """Class code of every patch (for :class:`~exaslide.data.sampler.PatchSampler`)."""
        return self.patches.label

    def __len__(self) -> int:
        return len(self.patches)

    def close(self) -> None:
        """Close this process's open slides."""
        self.pool.close()


def resolve_classes(labels: Sequence[str], classes: Sequence[str] | None) -> list[str]:
    """``classes`` if given (every label must be in it), else ``normal``, ``tumour`` and
    then any other label present, sorted: codes do not change with a row filter."""
    present = sorted({str(v) for v in labels if v is not None})
    if classes is None:
        return [*PREFERRED_CLASSES, *(c for c in present if c not in PREFERRED_CLASSES)]
    unknown = [c for c in present if c not in classes]
    if unknown:
        raise DatasetError(f"labels {unknown} are not in classes {list(classes)}")
    return list(classes)


def read_index_table(source, filter=None):
    """An Arrow table in the index schema from an extraction output folder, an index
    folder, a Parquet file, a ``pyarrow.dataset.Dataset`` or a ``pyarrow.Table``; the
    folder or file may be an fsspec URL (``s3://bucket/run/``).

    Raises:
        DatasetError: no index in the folder, or no such file or folder.
        StorageError: a remote folder or file that cannot be read (one line).
    """
    import pyarrow as pa
    import pyarrow.dataset as ds

    from exaslide.patches.index import open_index, schema

    if isinstance(source, pa.Table):
        table = source
        if filter is not None:
            table = table.filter(filter)
        return table
    if isinstance(source, ds.Dataset):
        return source.to_table(filter=filter)
    if is_remote(source):
        return _read_remote_index(str(source), filter)
    path = Path(os.fspath(source))
    if path.is_dir():
        dataset = open_index(path)
        if not dataset.files:
            raise DatasetError(f"{path}: no patch index found (expected index/*.parquet; "
                               "run `exaslide extract` first)")
        return dataset.to_table(filter=filter)
    if path.is_file():
        return ds.dataset(str(path), schema=schema(), format="parquet").to_table(filter=filter)
    raise DatasetError(f"{path}: no such index file or folder")


def _read_remote_index(url: str, filter):
    """The index table of a remote folder or Parquet file (filters pushed down)."""
    import pyarrow.dataset as ds

    from exaslide.patches.index import open_index, schema
    from exaslide.storage.errors import storage_error

    if url.rstrip("/").endswith(".parquet"):
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        from exaslide.storage.urls import filesystem

        fs, path = filesystem(url)
        try:
            dataset = ds.dataset(path, schema=schema(), format="parquet",
                                 filesystem=PyFileSystem(FSSpecHandler(fs)))
            return dataset.to_table(filter=filter)
        except (OSError, ValueError) as exc:
            raise storage_error(exc, url, "read the index file") from exc
    dataset = open_index(url)
    if not dataset.files:
        raise DatasetError(f"{url}: no patch index found (expected index/*.parquet; "
                           "run `exaslide extract` first)")
    try:
        return dataset.to_table(filter=filter)
    except OSError as exc:
        raise storage_error(exc, url, "read the index") from exc


def slide_paths_from_status(out_dir: str | os.PathLike, slide_ids: Sequence[str]
                            ) -> dict[str, str]:
    """Slide paths (or URLs) recorded in an extraction's status files
    (``status/<id>.json``) of a local folder or a folder URL (``s3://bucket/run/``, read
    through fsspec); slides without a readable status are left out."""
    if is_remote(out_dir):
        return _remote_status_paths(str(out_dir), slide_ids)
    out_dir = Path(out_dir)
    found = {}
    for slide_id in slide_ids:
        try:
            status = json.loads((out_dir / "status" / f"{slide_id}.json").read_text())
            found[slide_id] = status["inputs"]["slide"]["path"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _remote_status_paths(url: str, slide_ids: Sequence[str]) -> dict[str, str]:
    """:func:`slide_paths_from_status` for a folder URL: the status files fetched in one
    batch of concurrent requests (``fs.cat``; missing ones left out)."""
    from exaslide.storage.errors import storage_error
    from exaslide.storage.urls import filesystem

    if not slide_ids:
        return {}
    fs, root = filesystem(url)
    root = root.rstrip("/")
    wanted = {f"{root}/status/{slide_id}.json": slide_id for slide_id in slide_ids}
    try:
        contents = fs.cat(list(wanted), on_error="omit")
    except Exception as exc:  # each store raises its own errors
        raise storage_error(exc, url, "read the status files") from exc
    found = {}
    for path, data in contents.items():
        slide_id = wanted.get(path) or wanted.get(fs._strip_protocol(path))
        if slide_id is None or isinstance(data, Exception):
            continue
        try:
            found[slide_id] = json.loads(data)["inputs"]["slide"]["path"]
        except (ValueError, KeyError, TypeError):
            continue
    return found


def load_patches(source, *, slides: Mapping[str, str] | None = None, manifest=None,
                 classes: Sequence[str] | None = None, filter=None) -> PatchTable:
    """Read the patches of ``source`` and find their slides (see the module docstring).

    Raises:
        DatasetError: no index, an empty selection, or slides whose path is unknown.
    """
    table = read_index_table(source, filter)
    if table.num_rows == 0:
        raise DatasetError(f"{source}: the index selects no patches")
    column = table.column("slide_id").combine_chunks().dictionary_encode()
    slide_ids = [str(s) for s in column.dictionary.to_pylist()]
    paths = _slide_paths(source, slide_ids, slides, manifest)
    label_column = table.column("label").to_pylist()
    classes = resolve_classes(label_column, classes)
    lookup = {name: i for i, name in enumerate(classes)}
    labels = np.array([lookup.get(v, -1) if v is not None else -1 for v in label_column],
                      dtype=np.int16)
    mpp = table.column("mpp").to_numpy(zero_copy_only=False)
    return PatchTable(
        keys=table.column("key").combine_chunks(),
        slide=column.indices.to_numpy(zero_copy_only=False).astype(np.int32),
        slide_ids=slide_ids,
        paths=[paths[s] for s in slide_ids],
        x=table.column("x").to_numpy().astype(np.int64),
        y=table.column("y").to_numpy().astype(np.int64),
        level=table.column("level").to_numpy(zero_copy_only=False).astype(np.int16),
        mpp=np.asarray(mpp, dtype=np.float32),
        size=table.column("size").to_numpy().astype(np.int32),
        label=labels,
        classes=classes,
    )


def _extraction_folder(source: str | os.PathLike) -> str | Path:
    """The extraction folder of an output folder or its ``index/`` folder (local or
    URL); a single index file has none (its slides need ``slides=`` or a manifest)."""
    if is_remote(source):
        text = str(source).rstrip("/")
        return text.rsplit("/", 1)[0] if text.endswith("/index") else text
    out = Path(os.fspath(source))
    return out.parent if out.name == "index" else out


def _slide_paths(source, slide_ids, slides, manifest) -> dict[str, str]:
    paths: dict[str, str] = {}
    if slides is not None:
        paths.update({k: os.fspath(v) for k, v in slides.items()})
    if manifest is not None:
        from exaslide.manifest import read_manifest

        entries = manifest if isinstance(manifest, list) else read_manifest(manifest)
        for entry in entries:
            paths.setdefault(entry.slide_id, os.fspath(entry.path))
    missing = [s for s in slide_ids if s not in paths]
    if missing and isinstance(source, (str, os.PathLike)):
        paths.update(slide_paths_from_status(_extraction_folder(source), missing))
    missing = [s for s in slide_ids if s not in paths]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        raise DatasetError(f"{source}: no slide path for {shown}; pass slides={{id: path}} "
                           "or manifest=CSV")
    return paths
