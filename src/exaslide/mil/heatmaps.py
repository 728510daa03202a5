"""Per-patch MIL scores as whole-slide heatmaps, in the format of ``exaslide infer``
(:mod:`exaslide.heatmaps`), so ``exaslide evaluate heatmaps`` and the viewer take them.

The grid is infer's: cells of ``round(footprint)`` level-0 pixels from the slide's
top-left corner, ``footprint`` being the patch side at level 0. A patch's score goes to
the cell holding its centre (the highest score when several patches share a cell); every
other cell is NaN. Scores (:meth:`exaslide.mil.models.MILModel.patch_scores`):

- attention models: the patch's attention relative to the most attended patch of the
  slide, times the slide's tumour probability (``1 - p(first class)``): the map's
  maximum is the MIL slide score, and a slide called normal stays dark;
- instance scores (mean-pool, CLAM-SB with ``heatmap_score: instance``): the patch's own
  tumour probability.

The footprint comes from the extraction index the store was embedded from (its
``footprint`` column), else from the slide; the slide's level-0 size and resolution from
the slide file (the manifest's path, or the extraction's status file). Without the slide,
the map spans the patches and has no resolution (``mpp: null``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.mil.bags import FeatureStore
from exaslide.mil.errors import MILError


def _source_folder(store: FeatureStore) -> Path | str | None:
    """The extraction folder the store was embedded from (a URL stays a ``str``)."""
    from exaslide.storage.urls import is_remote

    source = store.info.get("source")
    if not source:
        return None
    if is_remote(str(source)):
        text = str(source).rstrip("/")
        return text.rsplit("/", 1)[0] if text.endswith("/index") else text
    path = Path(str(source))
    return path.parent if path.name == "index" else path


def slide_path_from_store(store: FeatureStore, slide_id: str) -> str | None:
    """The slide file recorded by the extraction the store was embedded from."""
    from exaslide.data.sources import slide_paths_from_status

    source = _source_folder(store)
    if source is None:
        return None
    return slide_paths_from_status(source, [slide_id]).get(slide_id)


def _index_footprint(store: FeatureStore, slide_id: str) -> float | None:
    """The patch footprint in the slide's index file (local, or read through fsspec)."""
    import pyarrow.parquet as pq

    source = _source_folder(store)
    if source is None:
        return None
    try:
        if isinstance(source, str):  # a URL
            from exaslide.storage.urls import filesystem

            fs, root = filesystem(source)
            with fs.open(f"{root.rstrip('/')}/index/{slide_id}.parquet", "rb") as fh:
                column = pq.read_table(fh, columns=["footprint"]).column("footprint")
        else:
            column = pq.read_table(source / "index" / f"{slide_id}.parquet",
                                   columns=["footprint"]).column("footprint")
        value = column[0].as_py() if len(column) else None
    except (OSError, ValueError, KeyError):
        return None
    return float(value) if value else None


def slide_geometry(store: FeatureStore, slide_id: str, slide_path: str | None,
                   table) -> dict[str, Any]:
    """``level0_size``, ``mpp``, ``footprint`` and ``slide`` of one slide's heatmap.

    Raises:
        MILError: the patch footprint cannot be found (no extraction index, no slide).
    """
    from exaslide.errors import SlideError
    from exaslide.slides import open_slide

    footprint = _index_footprint(store, slide_id)
    size, mpp, path = None, None, slide_path or slide_path_from_store(store, slide_id)
    if path is not None:
        try:
            with open_slide(path) as slide:
                size, mpp = slide.dimensions, slide.mpp
                if footprint is None:
                    footprint = _slide_footprint(slide, store, table)
        except (SlideError, OSError):
            path = None
    if footprint is None:
        raise MILError(f"{slide_id}: no heatmap: the patch footprint is unknown (neither "
                       "the extraction index nor the slide is at the recorded path)")
    if size is None:
        x, y = table.column("x").to_numpy(), table.column("y").to_numpy()
        size = (math.ceil(x.max() + footprint), math.ceil(y.max() + footprint))
    return {"level0_size": [int(size[0]), int(size[1])],
            "mpp": list(mpp) if mpp else None, "footprint": float(footprint),
            "slide": None if path is None else os.fspath(path)}


def _slide_footprint(slide, store: FeatureStore, table) -> float:
    patch_mpp = (store.info.get("patch") or {}).get("mpp")
    side = float(table.column("size")[0].as_py())
    if patch_mpp and slide.mpp:
        return side * float(patch_mpp) / slide.mpp[0]
    return side * slide.level_downsamples[int(table.column("level")[0].as_py())]


def grid_step(x: np.ndarray, y: np.ndarray, footprint: float) -> float:
    """The patches' grid step in level-0 pixels when they lie on a regular grid finer
    than their footprint (overlapping grid patches, down to a quarter of it); else the
    footprint (random or irregular positions)."""
    steps = [np.diff(np.unique(v)) for v in (x, y)]
    found = [float(s[s > 0].min()) for s in steps if (s > 0).any()]
    step = min([footprint, *found])
    if step < footprint / 4:
        return footprint
    on_grid = all(np.allclose((v - v.min()) / step, np.round((v - v.min()) / step))
                  for v in (x, y))
    return step if on_grid else footprint


def score_grid(x: np.ndarray, y: np.ndarray, scores: np.ndarray, footprint: float,
               level0_size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """``(rows x cols float32 map, cell)``: each patch's score at the cell of its centre,
    cells one grid step wide (as ``exaslide infer`` maps overlapping patches), the
    highest where patches still share a cell, NaN elsewhere."""
    cell = max(1, round(grid_step(x, y, footprint)))
    width, height = level0_size
    rows, cols = max(1, math.ceil(height / cell)), max(1, math.ceil(width / cell))
    grid = np.full((rows, cols), np.nan, dtype=np.float32)
    c = np.clip(np.floor((x + footprint / 2.0) / cell).astype(np.int64), 0, cols - 1)
    r = np.clip(np.floor((y + footprint / 2.0) / cell).astype(np.int64), 0, rows - 1)
    np.fmax.at(grid, (r, c), np.asarray(scores, dtype=np.float32))
    return grid, cell


def write_score_heatmap(folder: str | os.PathLike, store: FeatureStore, slide_id: str,
                        scores: np.ndarray, *, slide_path: str | None, classes: list[str],
                        model: str, score: str) -> Path:
    """Write ``<slide_id>.heatmap.npy`` / ``.json`` of per-patch ``scores`` (in the
    store's row order) into ``folder``.

    Raises:
        MILError: the geometry cannot be found, or the scores do not match the patches.
    """
    from exaslide.heatmaps import write_heatmap

    table = store.patches(slide_id)
    if table.num_rows != len(scores):
        raise MILError(f"{slide_id}: {len(scores)} scores for {table.num_rows} patches")
    geometry = slide_geometry(store, slide_id, slide_path, table)
    x = table.column("x").to_numpy().astype(np.float64)
    y = table.column("y").to_numpy().astype(np.float64)
    grid, cell = score_grid(x, y, scores, geometry["footprint"], geometry["level0_size"])
    meta = {"slide_id": slide_id, "slide": geometry["slide"],
            "level0_size": geometry["level0_size"], "mpp": geometry["mpp"],
            "origin": [0, 0], "cell": cell, "patch_footprint": geometry["footprint"],
            "classes": list(classes), "model": model, "class": classes[-1] if
            len(classes) == 2 else "tumour", "score": score,
            "computed_cells": int(np.isfinite(grid).sum()), "features": str(store.folder)}
    return write_heatmap(folder, slide_id, grid, meta)
