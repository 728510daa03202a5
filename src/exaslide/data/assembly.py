"""Patches assembled from decoded tiles: the per-process engine of ``SlidePatchDataset``.

:class:`Assembler` owns what one process needs to turn index rows into pixels: the tile
cache, the recycled decode buffers (:mod:`exaslide.data.tile_decode`), the batch memory
(:mod:`exaslide.data.batch_memory`) and the plan of the rows it will read next.

Assembly works tile by tile: the ``(patch, tile)`` pairs of a set of patches are sorted
by tile, each tile is looked up or decoded once and copied into every patch that
overlaps it. A tile that will not be read again after this set (known from the plan) is
decoded into one small buffer that stays in the CPU cache, not into a cache buffer.

With a plan, a request for the next planned batch assembles *ahead*: every batch up to
the end of the current shuffle window of the plan (``span`` patches) at once, so the
tiles shared by the patches of a window are decoded once and leave the CPU cache only
after their last copy; later requests are answered from the batches made ahead. A
request that is not the next planned batch is assembled on its own (and the batches made
ahead are dropped), so the pixels never depend on the plan.
"""

from __future__ import annotations

import os
from collections import deque

import numpy as np

from exaslide.data.patch_batch import PatchBatch, ReadGeometry
from exaslide.patches.geometry import tiles_of

#: Patches assembled ahead at most when the plan gives no shuffle window (a full shuffle
#: reuses few tiles within a span; the batches made ahead cost memory).
DEFAULT_SPAN = 256


class Handle:
    """One open reader of a process, with its geometry and, for JPEG-tiled levels, the
    direct decoder of its tiles."""

    def __init__(self, reader, geometry: ReadGeometry):
        from exaslide.slides.jpeg_tiles import jpeg_tiles

        self.reader, self.geometry = reader, geometry
        self.jpeg = jpeg_tiles(reader.tiles, reader.level) if reader.uses_tiles else None

    def close(self) -> None:
        self.reader.close()


class Assembler:
    """The per-process part of a dataset (see the module doc).

    Args:
        cache_bytes: byte limit of the tile cache (and of the free decode buffers).
    """

    def __init__(self, cache_bytes: int):
        from exaslide.data.batch_memory import BatchMemory
        from exaslide.data.tile_decode import TileBuffers
        from exaslide.slides.tile_cache import TileCache

        self.pid = os.getpid()
        self.batches = BatchMemory()
        self.buffers = TileBuffers(keep_bytes=cache_bytes)
        self.cache = TileCache(cache_bytes, on_drop=self.buffers.give)
        self.decodes = 0
        self._hot: dict[tuple[int, int], np.ndarray] = {}
        self._scratch: np.ndarray | None = None
        self.stream: np.ndarray | None = None  # planned rows, from ``pos`` on
        self.pos = 0
        self.span = DEFAULT_SPAN
        self.ahead: deque[tuple[np.ndarray, PatchBatch]] = deque()

    # ------------------------------------------------------------------ the plan
    def follow(self, plan: np.ndarray, reset: bool, window: int | None) -> None:
        """Record planned rows (a new epoch's first segment when ``reset``). When the
        tile cache keeps every tile of the plan (``keep_spent``), batches are assembled
        one at a time: a tile is then decoded once whatever the order, and batches made
        ahead would only cost memory touched for the first time (in a worker, shared
        memory at ~1.7 µs per 4 KiB page on the project's machine)."""
        if reset or self.stream is None:
            self.drop_ahead()
            self.stream, self.pos = np.asarray(plan, np.int64), 0
            self.span = int(window) if window else DEFAULT_SPAN
            if self.cache.keep_spent and self.cache.planned_count():
                self.span = 1
        else:
            self.stream = np.concatenate([self.stream[self.pos :], plan])
            self.pos = 0

    def ready(self, rows: np.ndarray) -> PatchBatch | None:
        """The batch made ahead for ``rows``, if it is the next one (else ``None``; a
        request off the plan drops the batches made ahead and stops following it)."""
        if self.ahead:
            expected, batch = self.ahead[0]
            if np.array_equal(expected, rows):
                self.ahead.popleft()
                return batch
            self.drop_ahead()
            self.stream = None
        return None

    def next_batches(self, rows: np.ndarray) -> list[np.ndarray]:
        """The planned batches to assemble ahead when ``rows`` is the next one: up to
        the end of its shuffle window, cut like ``rows``; empty when it is not next."""
        stream, pos, size = self.stream, self.pos, len(rows)
        if stream is None or size == 0 or not np.array_equal(stream[pos : pos + size], rows):
            self.stream = None
            return []
        end = max((pos // self.span + 1) * self.span, pos + size)
        end = min(pos + -(-(end - pos) // size) * size, len(stream))
        self.pos = end
        return [stream[start : min(start + size, end)] for start in range(pos, end, size)]

    def drop_ahead(self) -> None:
        """Forget the batches made ahead (their ring blocks become free again)."""
        while self.ahead:
            self.batches.unused(self.ahead.popleft()[1].slot)

    # ------------------------------------------------------------------ assembly
    def fill_tiles(self, handle: Handle, outs: list[np.ndarray], dest: np.ndarray,
                   slot: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray,
                   y1: np.ndarray) -> None:
        """Assemble unscaled boxes into ``outs[dest[k]][slot[k]]``, tile by tile."""
        g = handle.geometry
        (tw, th), (lw, lh) = g.grid, g.level_size
        for k in np.flatnonzero((x0 < 0) | (y0 < 0) | (x1 > lw) | (y1 > lh)).tolist():
            outs[dest[k]][slot[k]] = 255
        patch, tx, ty = g.tile_pairs(x0, y0, x1, y1)
        keys = g.keys(tx, ty)
        order = np.argsort(keys, kind="stable")
        patch, tx, ty, keys = patch[order], tx[order], ty[order], keys[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        runs = np.diff(np.r_[starts, len(keys)])
        uses = np.zeros(len(keys), np.int64)
        uses[starts] = runs
        sx0, sy0 = tx * tw, ty * th
        ax0, ay0 = np.maximum(x0[patch], sx0), np.maximum(y0[patch], sy0)
        ax1 = np.maximum(np.minimum(x1[patch], np.minimum(sx0 + tw, lw)), ax0)
        ay1 = np.maximum(np.minimum(y1[patch], np.minimum(sy0 + th, lh)), ay0)
        columns = (dest[patch], slot[patch], keys, uses, tx, ty, ay0 - y0[patch],
                   ay1 - y0[patch], ax0 - x0[patch], ax1 - x0[patch], ay0 - sy0,
                   ay1 - sy0, ax0 - sx0, ax1 - sx0)
        cache, tile, spare = self.cache, None, []
        for b, i, key, n, x, y, oy0, oy1, ox0, ox1, ty0, ty1, tx0, tx1 in zip(
                *(c.tolist() for c in columns), strict=True):
            if n:  # the first pair of a new tile
                tile = cache.get(key)
                if tile is None:
                    keep = cache.keeps(key, n)
                    tile = self._decode(handle, x, y, keep)
                    if keep and not cache.put(key, tile):
                        spare.append(tile)  # not cached: its buffer comes back below
                cache.release(key, n)
            outs[b][i, oy0:oy1, ox0:ox1] = tile[ty0:ty1, tx0:tx1]
        for tile in spare:
            self.buffers.give(tile)

    def fill(self, handle: Handle, out: np.ndarray, x0: int, y0: int, x1: int,
             y1: int) -> None:
        """Assemble one box of the handle's level into ``out``, resampled to ``out``'s
        size when the geometry scales (as ``PatchReader.read`` does); plain Python
        numbers, for single patches."""
        g = handle.geometry
        target = out if g.scale == 1.0 else self._region(y1 - y0, x1 - x0)
        (tw, th), (lw, lh) = g.grid, g.level_size
        if x0 < 0 or y0 < 0 or x1 > lw or y1 > lh:
            target[...] = 255
        cache = self.cache
        for tx, ty in tiles_of(x0, y0, x1, y1, g.grid, g.level_size):
            key = g.key(tx, ty)
            tile = cache.get(key)
            spare = None
            if tile is None:
                keep = cache.keeps(key, 1)
                tile = self._decode(handle, tx, ty, keep)
                if keep and not cache.put(key, tile):
                    spare = tile
            cache.release(key)
            sx0, sy0 = tx * tw, ty * th
            ax0, ay0 = max(x0, sx0), max(y0, sy0)
            ax1 = max(min(x1, sx0 + tile.shape[1]), ax0)
            ay1 = max(min(y1, sy0 + tile.shape[0]), ay0)
            target[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = \
                tile[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0]
            if spare is not None:
                self.buffers.give(spare)
        if g.scale != 1.0:
            import cv2

            interp = cv2.INTER_AREA if g.scale >= 1.0 else cv2.INTER_LINEAR
            cv2.resize(target, (g.size, g.size), dst=out, interpolation=interp)

    def _decode(self, handle: Handle, tx: int, ty: int, keep: bool) -> np.ndarray:
        """Tile ``(tx, ty)``: in a cache buffer when ``keep``, else in a reused buffer
        that stays in the CPU cache (valid until the next decode)."""
        g = handle.geometry
        (tw, th), (lw, lh) = g.grid, g.level_size
        self.decodes += 1
        if handle.jpeg is not None:
            buffer = self.buffers.take((th, tw, 3)) if keep else self._hot_buffer(th, tw)
            if handle.jpeg.decode_into(tx, ty, buffer):
                return buffer[: min(th, lh - ty * th), : min(tw, lw - tx * tw)]
            if keep:
                self.buffers.give(buffer)
        return handle.reader.tiles.read_tile(g.level, tx, ty)

    def _hot_buffer(self, height: int, width: int) -> np.ndarray:
        buffer = self._hot.get((height, width))
        if buffer is None:
            from exaslide.slides.jpeg_tiles import aligned_empty

            buffer = self._hot[height, width] = aligned_empty((height, width, 3))
        return buffer

    def _region(self, height: int, width: int) -> np.ndarray:
        """A scratch array for a region to be resampled (reused while large enough)."""
        if self._scratch is None or self._scratch.shape[0] < height or \
                self._scratch.shape[1] < width:
            self._scratch = np.empty((max(height, 1), max(width, 1), 3), np.uint8)
        return self._scratch[:height, :width]
