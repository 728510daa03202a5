"""Where a patch's pixels come from: the one implementation of the read geometry.

Every reader of patches (:class:`~exaslide.patches.reader.PatchReader`, the loaders'
in-place assembly, the compressed batch path) computes the same three things, here:

- :func:`centring_shift`: level-0 pixels added to an indexed corner so that a read of
  another size (a centre crop) or at another resolution (``mpp``) is centred on the
  indexed patch;
- :func:`level_box` / :func:`level_boxes`: the box ``(x0, y0, x1, y1)``, in pixels of the
  level read, of a patch with level-0 corner ``(x, y)`` (``Slide.read_region``'s
  rounding: ``floor(v + 0.5)``; a resampled box is at least one pixel wide);
- :func:`tile_range` / :func:`tile_ranges`: the stored tiles such a box overlaps inside
  the level (none when the box misses the level, even where it lies in the last, partial
  tile of the grid).

The scalar forms take and return Python numbers, the vectorised forms NumPy arrays; both
do the same floating-point operations in the same order, so they agree bit for bit
(tested). No PyTorch here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def level_box(x: int, y: int, downsample: float, scale: float,
              size: int) -> tuple[int, int, int, int]:
    """The source box ``(x0, y0, x1, y1)`` in pixels of a level with ``downsample`` for a
    ``size``-pixel patch with level-0 corner ``(x, y)``, read at ``scale`` level pixels
    per output pixel (1.0: no resampling, the box is ``size`` wide)."""
    xs, ys = x / downsample, y / downsample
    x0, y0 = math.floor(xs + 0.5), math.floor(ys + 0.5)
    if scale == 1.0:
        return x0, y0, x0 + size, y0 + size
    extent = size * scale
    return (x0, y0, max(x0 + 1, math.floor(xs + extent + 0.5)),
            max(y0 + 1, math.floor(ys + extent + 0.5)))


def level_boxes(x, y, downsample: float, scale: float,
                size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`level_box` of arrays of corners: ``int64`` arrays ``x0, y0, x1, y1``."""
    xs = np.asarray(x, np.int64) / downsample
    ys = np.asarray(y, np.int64) / downsample
    x0 = np.floor(xs + 0.5).astype(np.int64)
    y0 = np.floor(ys + 0.5).astype(np.int64)
    if scale == 1.0:
        return x0, y0, x0 + size, y0 + size
    extent = size * scale
    x1 = np.maximum(x0 + 1, np.floor(xs + extent + 0.5).astype(np.int64))
    y1 = np.maximum(y0 + 1, np.floor(ys + extent + 0.5).astype(np.int64))
    return x0, y0, x1, y1


def tile_range(x0: int, y0: int, x1: int, y1: int, tile_size: tuple[int, int],
               level_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """First and last (inclusive) tile column and row ``(tx0, ty0, tx1, ty1)`` holding
    pixels of box ``x0, y0, x1, y1`` inside a level of ``level_size`` stored in tiles of
    ``tile_size`` (both ``(width, height)``); ``tx1 < tx0`` and ``ty1 < ty0`` when the
    box and the level do not intersect."""
    (tw, th), (lw, lh) = tile_size, level_size
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, lw), min(y1, lh)
    tx0, ty0 = cx0 // tw, cy0 // th
    if cx1 <= cx0 or cy1 <= cy0:
        return tx0, ty0, tx0 - 1, ty0 - 1
    return tx0, ty0, (cx1 - 1) // tw, (cy1 - 1) // th


def tile_ranges(x0, y0, x1, y1, tile_size: tuple[int, int],
                level_size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """:func:`tile_range` of arrays of boxes."""
    (tw, th), (lw, lh) = tile_size, level_size
    cx0, cy0 = np.maximum(x0, 0), np.maximum(y0, 0)
    cx1, cy1 = np.minimum(x1, lw), np.minimum(y1, lh)
    tx0, ty0 = cx0 // tw, cy0 // th
    miss = (cx1 <= cx0) | (cy1 <= cy0)
    tx1 = np.where(miss, tx0 - 1, (cx1 - 1) // tw)
    ty1 = np.where(miss, ty0 - 1, (cy1 - 1) // th)
    return tx0, ty0, tx1, ty1


def tiles_of(x0: int, y0: int, x1: int, y1: int, tile_size: tuple[int, int],
             level_size: tuple[int, int]) -> Iterator[tuple[int, int]]:
    """The tiles ``(tx, ty)`` of :func:`tile_range`, row by row."""
    tx0, ty0, tx1, ty1 = tile_range(x0, y0, x1, y1, tile_size, level_size)
    for ty in range(ty0, ty1 + 1):
        for tx in range(tx0, tx1 + 1):
            yield tx, ty


def centring_shift(size, index_mpp, index_level: int, out_size: int | None,
                   mpp: float | None, reader) -> int:
    """Level-0 pixels to add to an indexed corner so that the patch ``reader`` reads is
    centred on the indexed one (0 when it reads the indexed patch itself).

    Args:
        size, index_mpp, index_level: the index row's patch size, resolution (NaN: none)
            and level; pass ``size`` and ``index_mpp`` as the index's NumPy scalars (the
            readers all do, so they round alike).
        out_size: the size read instead of the indexed one (``None``: the same).
        mpp: the resolution read instead of the index's (``None``: the same).
        reader: the :class:`~exaslide.patches.reader.PatchReader` reading it (its slide's
            ``mpp`` and ``level_downsamples``, and its ``spec.size``, ``scale`` and
            ``downsample`` are used).
    """
    if mpp is not None:
        side = size * (index_mpp / reader.slide.mpp[0] if not math.isnan(index_mpp)
                       else reader.slide.level_downsamples[index_level])
        shift = (side - reader.spec.size * reader.scale * reader.downsample) / 2
        return math.floor(shift + 0.5)
    if out_size is not None and out_size != size:
        shift = (size - out_size) / 2 * reader.scale * reader.downsample
        return math.floor(shift + 0.5)
    return 0
