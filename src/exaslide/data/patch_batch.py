"""Batches assembled in place: the geometry of a patch read and the batch container.

:class:`SlidePatchDataset <exaslide.data.slide_dataset.SlidePatchDataset>` answers
``__getitems__`` (the batch protocol of PyTorch's map-style fetcher) by writing every patch
of a batch straight into one preallocated ``N x H x W x 3`` array (in shared memory inside
a ``DataLoader`` worker, so the batch crosses to the main process without a copy): no
per-item tensors, no ``torch.stack``, no defensive copies. :class:`PatchBatch` carries the
result; :func:`~exaslide.data.loader.collate_patches` hands it on as it is, and any other
collate function sees an ordinary sequence of ``(image, label, metadata)`` items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exaslide.patches.geometry import level_box, level_boxes, tile_ranges

#: Bits of a tile key for each tile coordinate (2**20 tiles of a level per axis).
TILE_BITS = 20


@dataclass(frozen=True)
class ReadGeometry:
    """Where the patches of one reader (slide, level or resolution, size) come from.

    Attributes:
        level: the pyramid level read.
        downsample: that level's downsample from level 0.
        scale: level pixels per output pixel (1.0: no resampling).
        size: output side in pixels.
        shift: level-0 pixels added to the indexed corner (centring a crop or a read at
            another resolution on the indexed patch).
        level_size: ``(width, height)`` of the level.
        grid: ``(width, height)`` of its stored tiles, or ``None`` when the slide is not
            read by tiles (the reader's ``read`` is used per patch).
        slot: this process's number for ``(slide, level)``: tile keys start at
            ``slot << 2 * TILE_BITS``.
    """

    level: int
    downsample: float
    scale: float
    size: int
    shift: int
    level_size: tuple[int, int]
    grid: tuple[int, int] | None
    slot: int

    def boxes(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
        """``x0, y0, x1, y1`` boxes in level pixels of patches with level-0 corners
        ``x, y`` (:func:`~exaslide.patches.geometry.level_boxes` of the shifted corners)."""
        return level_boxes(np.asarray(x, np.int64) + self.shift,
                           np.asarray(y, np.int64) + self.shift, self.downsample,
                           self.scale, self.size)

    def box(self, x: int, y: int) -> tuple[int, int, int, int]:
        """:meth:`boxes` for one patch, in Python numbers (the same float operations)."""
        return level_box(x + self.shift, y + self.shift, self.downsample, self.scale,
                         self.size)

    def tile_ranges(self, x0, y0, x1, y1) -> tuple[np.ndarray, ...]:
        """First and last tile column and row touched by each box inside the level
        (last < first: none; see :func:`~exaslide.patches.geometry.tile_ranges`)."""
        return tile_ranges(x0, y0, x1, y1, self.grid, self.level_size)

    def tile_pairs(self, x0, y0, x1, y1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(patch, tx, ty)``: one entry per box and stored tile it overlaps."""
        tx0, ty0, tx1, ty1 = self.tile_ranges(x0, y0, x1, y1)
        nx, ny = np.maximum(tx1 - tx0 + 1, 0), np.maximum(ty1 - ty0 + 1, 0)
        patch, tx, ty = [], [], []
        for dy in range(int(ny.max(initial=0))):
            for dx in range(int(nx.max(initial=0))):
                hit = np.flatnonzero((dx < nx) & (dy < ny))
                patch.append(hit)
                tx.append(tx0[hit] + dx)
                ty.append(ty0[hit] + dy)
        if not patch:
            return (np.empty(0, np.int64),) * 3
        return np.concatenate(patch), np.concatenate(tx), np.concatenate(ty)

    def tile_keys(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The key of every tile each patch reads (one entry per patch and tile)."""
        if self.grid is None:
            return np.empty(0, np.int64)
        _, tx, ty = self.tile_pairs(*self.boxes(x, y))
        return self.keys(tx, ty)

    def keys(self, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
        """Tile cache keys of tiles ``(tx, ty)`` (arrays)."""
        return (np.int64(self.slot) << (2 * TILE_BITS)) + (ty << TILE_BITS) + tx

    def key(self, tx: int, ty: int) -> int:
        """The tile cache key of tile ``(tx, ty)``."""
        return (self.slot << (2 * TILE_BITS)) | (ty << TILE_BITS) | tx


class PatchBatch(Sequence):
    """A batch of patches assembled in place.

    Attributes:
        images: ``N x 3 x H x W`` (an ``NCHW`` view of ``NHWC`` memory: channels-last).
        labels: ``int64`` class codes.
        metadata: ``key`` and ``slide_id`` (lists), ``x``, ``y``, ``level``, ``index``
            (``int64`` tensors): what ``default_collate`` makes of the items' dicts.
        slot: the worker ring block holding it (see :mod:`exaslide.data.batch_memory`).

    As a sequence it yields ``(image, label, metadata)`` items, as ``dataset[i]`` does.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, metadata: dict[str, Any],
                 slot: Any = None):
        self.images, self.labels, self.metadata, self.slot = images, labels, metadata, slot

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        meta = {k: (v[i] if isinstance(v, list) else int(v[i]))
                for k, v in self.metadata.items()}
        return self.images[i], int(self.labels[i]), meta

    def collated(self) -> LoaderBatch:
        """``(images, labels, metadata)`` as the loader yields them."""
        return LoaderBatch((self.images, self.labels, self.metadata), self.slot)


class LoaderBatch(tuple):
    """``(images, labels, metadata)``; sent from a worker, it registers its shared block
    in the receiving process (:func:`~exaslide.data.batch_memory.received`) so the block
    is reused only once no tensor uses it."""

    slot: Any = None

    def __new__(cls, items, slot: Any = None):
        batch = super().__new__(cls, items)
        batch.slot = slot
        return batch

    def __reduce__(self):
        return _rebuild, (tuple(self), self.slot)

    def pin_memory(self, device=None) -> LoaderBatch:
        """The batch with its tensors in page-locked memory (the ``DataLoader``'s pinning
        thread calls this); the shared block is released when the pinned copy is made."""
        from torch.utils.data._utils.pin_memory import pin_memory

        return LoaderBatch(tuple(pin_memory(item, device) for item in self))


def _rebuild(items: tuple, slot: Any) -> LoaderBatch:
    from exaslide.data.batch_memory import received

    received(items[0], slot)
    return LoaderBatch(items)


def batch_metadata(table, rows: np.ndarray,
                   ints: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """Labels and metadata of index ``rows`` of a ``PatchTable``; the integers are written
    into ``ints`` (``5 x N`` ``int64``, part of the batch's memory block)."""
    import pyarrow as pa

    block = ints.numpy()
    block[0] = table.label[rows]
    block[1] = table.x[rows]
    block[2] = table.y[rows]
    block[3] = table.level[rows]
    block[4] = rows
    metadata = {"key": table.keys.take(pa.array(rows)).to_pylist(),
                "slide_id": [table.slide_ids[c] for c in table.slide[rows].tolist()],
                "x": ints[1], "y": ints[2], "level": ints[3], "index": ints[4]}
    return ints[0], metadata
