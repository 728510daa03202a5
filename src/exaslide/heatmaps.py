"""Whole-slide probability heatmaps on disk: ``<slide_id>.heatmap.npy`` + ``.heatmap.json``.

The format shared by inference (writes it) and evaluation (reads it); both import this
module, neither imports the other. ``exaslide.evaluate.heatmap`` re-exports it.

- ``<slide_id>.heatmap.npy``: a float32 array ``(rows, cols)`` of tumour probability, NaN
  where nothing was computed (no tissue).
- ``<slide_id>.heatmap.json``: ``{"slide_id", "slide", "level0_size": [width, height],
  "mpp": [x, y] or null, "origin": [x0, y0], "cell", "patch_footprint", "classes",
  "model", "npy_sha256"}``.

Cell ``(r, c)`` covers the level-0 box ``[x0 + c*cell, x0 + (c+1)*cell) x
[y0 + r*cell, y0 + (r+1)*cell)``; its value is the probability of the patch centred on the
cell centre ``(x0 + (c+0.5)*cell, y0 + (r+0.5)*cell)``. ``patch_footprint`` is the side of
that patch in level-0 pixels.

Both files are written atomically, the JSON last: a heatmap whose JSON exists is complete.
``npy_sha256`` is the SHA-256 of the ``.npy`` bytes written; :func:`read_heatmap` checks
it (heatmaps written before it existed are read unchecked).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.atomic import atomic_path, write_text
from exaslide.errors import EvaluationError
from exaslide.integrity import file_digest
from exaslide.jsonio import dumps
from exaslide.naming import is_valid_slide_id

NPY_SUFFIX = ".heatmap.npy"
JSON_SUFFIX = ".heatmap.json"
REQUIRED_KEYS = ("level0_size", "origin", "cell")


@dataclass
class Heatmap:
    """One slide's probability map and its metadata.

    Attributes:
        probabilities: float32 ``(rows, cols)``; NaN where not computed.
        meta: the JSON dict (see the module docstring).
        path: the ``.heatmap.npy`` file it was read from, if any.
    """

    probabilities: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def slide_id(self) -> str:
        """The slide's id (``meta["slide_id"]``)."""
        return str(self.meta.get("slide_id", ""))

    @property
    def cell(self) -> float:
        """Side of one cell in level-0 pixels."""
        return float(self.meta["cell"])

    @property
    def origin(self) -> tuple[float, float]:
        """Level-0 ``(x0, y0)`` of the top-left corner of cell (0, 0)."""
        x0, y0 = self.meta.get("origin", (0.0, 0.0))
        return float(x0), float(y0)

    @property
    def level0_size(self) -> tuple[int, int]:
        """The slide's level-0 ``(width, height)``."""
        width, height = self.meta["level0_size"]
        return int(width), int(height)

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Level-0 microns per pixel ``(x, y)``, or None when the slide does not say."""
        value = self.meta.get("mpp")
        if value is None:
            return None
        if isinstance(value, int | float):
            return float(value), float(value)
        return float(value[0]), float(value[1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the map."""
        rows, cols = self.probabilities.shape
        return int(rows), int(cols)

    def cell_centres(self, rows: Any, cols: Any) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 ``(x, y)`` of the centres of cells ``(rows, cols)`` (arrays broadcast)."""
        x0, y0 = self.origin
        x = x0 + (np.asarray(cols, dtype=np.float64) + 0.5) * self.cell
        y = y0 + (np.asarray(rows, dtype=np.float64) + 0.5) * self.cell
        return np.broadcast_arrays(x, y)

    def grid_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 centre coordinates of every column (x, length cols) and row (y, rows)."""
        rows, cols = self.shape
        x, _ = self.cell_centres(0, np.arange(cols))
        _, y = self.cell_centres(np.arange(rows), 0)
        return np.asarray(x), np.asarray(y)

    def cell_of(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` of the cells holding level-0 points ``(x, y)`` (may fall
        outside the map: check against :attr:`shape`)."""
        x0, y0 = self.origin
        cols = np.floor((np.asarray(x, dtype=np.float64) - x0) / self.cell).astype(np.int64)
        rows = np.floor((np.asarray(y, dtype=np.float64) - y0) / self.cell).astype(np.int64)
        return rows, cols


def heatmap_paths(folder: str | os.PathLike, slide_id: str) -> tuple[Path, Path]:
    """``(npy, json)`` paths of ``slide_id``'s heatmap in ``folder``."""
    folder = Path(folder)
    return folder / f"{slide_id}{NPY_SUFFIX}", folder / f"{slide_id}{JSON_SUFFIX}"


def _check_slide_id(slide_id: str) -> None:
    if not is_valid_slide_id(slide_id):
        raise EvaluationError(f"slide_id {slide_id!r} must be non-empty, without a path "
                              "separator and not start with '.' (it names the heatmap files)")


def _check_meta(meta: dict[str, Any], where: str) -> None:
    missing = [k for k in REQUIRED_KEYS if meta.get(k) is None]
    if missing:
        raise EvaluationError(f"{where}: heatmap metadata lacks {', '.join(missing)}; it needs "
                              f"{', '.join(REQUIRED_KEYS)} (see docs/evaluation.md)")
    try:
        cell = float(meta["cell"])
        size = [int(v) for v in meta["level0_size"]]
        origin = [float(v) for v in meta["origin"]]
    except (TypeError, ValueError) as exc:
        raise EvaluationError(f"{where}: malformed heatmap metadata: {exc}") from exc
    if not (math.isfinite(cell) and cell > 0) or len(size) != 2 or len(origin) != 2:
        raise EvaluationError(f"{where}: expected cell > 0, level0_size [width, height] and "
                              f"origin [x0, y0]; found cell={meta['cell']!r}, "
                              f"level0_size={meta['level0_size']!r}, origin={meta['origin']!r}")


def write_heatmap(folder: Path | str, slide_id: str, probabilities: np.ndarray,
                  meta: dict) -> Path:
    """Write ``<slide_id>.heatmap.npy`` (float32) and ``<slide_id>.heatmap.json``.

    Both are written atomically, the JSON last, so a reader never sees half a heatmap.

    Args:
        folder: output folder (created if needed).
        slide_id: the slide's id; names the files and fills ``meta["slide_id"]``.
        probabilities: 2-D array of tumour probabilities, NaN where not computed.
        meta: the metadata dict (see the module docstring); needs at least
            ``level0_size``, ``origin`` and ``cell``.

    Returns:
        The path of the ``.npy`` file.

    Raises:
        EvaluationError: a bad slide id, a non 2-D array or incomplete metadata.
    """
    _check_slide_id(slide_id)
    array = np.asarray(probabilities, dtype=np.float32)
    if array.ndim != 2:
        raise EvaluationError(f"{slide_id}: a heatmap is a 2-D (rows, cols) array; got shape "
                              f"{array.shape}")
    meta = {**dict(meta), "slide_id": slide_id}
    _check_meta(meta, slide_id)
    npy_path, json_path = heatmap_paths(folder, slide_id)
    try:
        dumps(meta, strict=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EvaluationError(f"{slide_id}: heatmap metadata is not JSON: {exc}") from exc
    with atomic_path(npy_path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        meta["npy_sha256"] = file_digest(tmp)
    write_text(json_path, dumps(meta, strict=True, allow_nan=False))
    return npy_path


def _resolve(folder_or_npy_path: str | os.PathLike, slide_id: str | None) -> Path:
    path = Path(folder_or_npy_path)
    if path.is_dir():
        if slide_id is not None:
            return heatmap_paths(path, slide_id)[0]
        found = sorted(path.glob(f"*{NPY_SUFFIX}"))
        if len(found) != 1:
            raise EvaluationError(f"{path}: {len(found)} heatmaps in this folder; pass "
                                  "slide_id to choose one")
        return found[0]
    if path.name.endswith(NPY_SUFFIX) or path.exists():
        return path
    raise EvaluationError(f"{path}: no such heatmap folder or {NPY_SUFFIX} file")


def _check_digest(npy_path: Path, expected: Any) -> None:
    if expected is None:  # written before heatmaps recorded it
        return
    found = file_digest(npy_path)
    if found != str(expected).lower():
        raise EvaluationError(f"{npy_path}: corrupt file (sha256 expected "
                              f"{str(expected)[:16]}..., found {found[:16]}...: flipped bits "
                              "or a truncated copy; recorded as npy_sha256 in its "
                              ".heatmap.json); run `exaslide infer --overwrite` for this "
                              "slide again")


def read_heatmap(folder_or_npy_path: str | os.PathLike, slide_id: str | None = None) -> Heatmap:
    """Read a heatmap written by :func:`write_heatmap`.

    Args:
        folder_or_npy_path: a folder of heatmaps, or one ``<slide_id>.heatmap.npy`` file (its
            ``.heatmap.json`` sits beside it).
        slide_id: which heatmap of the folder; optional when the folder holds exactly one.
            Given with a ``.npy`` path, it must match the metadata.

    Raises:
        EvaluationError: missing files, a ``.npy`` file whose SHA-256 is not the recorded
            one (corrupt), an array that is not 2-D, malformed metadata or a slide id that
            does not match.
    """
    npy_path = _resolve(folder_or_npy_path, slide_id)
    if not npy_path.name.endswith(NPY_SUFFIX):
        raise EvaluationError(f"{npy_path}: a heatmap file ends with {NPY_SUFFIX}")
    json_path = npy_path.with_name(npy_path.name[: -len(NPY_SUFFIX)] + JSON_SUFFIX)
    for p in (npy_path, json_path):
        if not p.is_file():
            raise EvaluationError(f"{p}: no such heatmap file (run `exaslide infer` for this "
                                  "slide, or check --heatmaps)")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvaluationError(f"{json_path}: cannot read heatmap metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise EvaluationError(f"{json_path}: expected a JSON object")
    _check_meta(meta, str(json_path))
    _check_digest(npy_path, meta.get("npy_sha256"))
    try:
        array = np.load(npy_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{npy_path}: not a readable .npy array: {exc}") from exc
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise EvaluationError(f"{npy_path}: expected a 2-D float array, found "
                              f"{array.dtype} {array.shape}")
    stem = npy_path.name[: -len(NPY_SUFFIX)]
    meta.setdefault("slide_id", stem)
    if slide_id is not None and meta["slide_id"] != slide_id:
        raise EvaluationError(f"{json_path}: metadata names slide {meta['slide_id']!r}, "
                              f"expected {slide_id!r}")
    return Heatmap(probabilities=array.astype(np.float32, copy=False), meta=meta,
                   path=npy_path)
