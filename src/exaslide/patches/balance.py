"""Balanced training sets: the same number of patches per group across a cohort.

``balanced_sample(index, by=("label",), per_group=N)`` draws, with a seed, ``N`` patches
from every group of the ``by`` columns (e.g. ``("label",)`` for class balance,
``("label", "slide_id")`` per class per slide, ``("label", "centre")`` per class per
centre). Groups with fewer patches give all they have; ``per_group=None`` takes the size of
the smallest group (exact balance). Only the ``by`` columns are read to choose rows; the
chosen rows are then taken from the files, so a 33 M-row index is never loaded whole; the
grouping is one sort of integer codes.

:func:`check_output` refuses an output that would overwrite one of the index's files or
land inside its folder (where the next :func:`~exaslide.patches.open_index` would read it
as one more slide).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from exaslide.patches.spec import PatchError


def check_output(index_dir: str | os.PathLike, out_file: str | os.PathLike) -> Path:
    """Return ``out_file`` when writing it leaves the index of ``index_dir`` (an
    extraction's folder or its ``index/``, as :func:`~exaslide.patches.open_index` reads
    it) untouched.

    Raises:
        PatchError: ``out_file`` is one of the index files (also through a link) or lies
            inside the index folder.
    """
    directory = Path(index_dir)
    folder = directory / "index" if (directory / "index").is_dir() else directory
    folder, target = folder.resolve(), Path(out_file).resolve()
    inside = target.is_relative_to(folder)
    if not inside and target.exists():
        inside = any(os.path.samefile(target, f) for f in folder.glob("*.parquet"))
    if inside:
        raise PatchError(f"--out {out_file}: inside the input index {folder}; writing there "
                         "would overwrite or add to the index being read. Write it elsewhere, "
                         f"e.g. {folder.parent / 'balanced.parquet'}")
    return Path(out_file)


def balanced_sample(dataset, by: tuple[str, ...] = ("label",), per_group: int | None = None,
                    seed: int = 0, filter=None):
    """Rows of an index dataset (``open_index(...)``) balanced over the ``by`` groups.

    Args:
        dataset: a ``pyarrow.dataset.Dataset`` in the index schema.
        by: grouping columns.
        per_group: patches per group (``None``: the smallest group's size).
        seed: random seed.
        filter: optional pyarrow expression applied first (e.g. ``field("split") ==
            "train"``).

    Returns:
        A ``pyarrow.Table`` in the index schema, grouped rows in index order.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = dataset.to_table(columns=list(by), filter=filter)
    if keys.num_rows == 0:
        return dataset.schema.empty_table()
    codes = np.zeros(keys.num_rows, dtype=np.int64)
    for name in by:  # dictionary codes: no Python string per row
        column = pc.fill_null(keys[name].cast(pa.string()), "").combine_chunks()
        indices = pc.dictionary_encode(column).indices.to_numpy(zero_copy_only=False)
        codes = codes * (int(indices.max()) + 1) + indices.astype(np.int64)
    order = np.argsort(codes, kind="stable")
    _, starts, counts = np.unique(codes[order], return_index=True, return_counts=True)
    quota = int(counts.min()) if per_group is None else int(per_group)
    rng = np.random.default_rng(seed)
    rows = np.sort(np.concatenate([order[s + rng.permutation(n)[:quota]]
                                   for s, n in zip(starts, counts, strict=True)]))
    return dataset.take(pa.array(rows), filter=filter)
