"""``SlidePatchDataset``: patches read on the fly from the slides, by their index rows.

No pixels are stored ahead: each patch is read from its slide (local path or URL) with the
extraction engine's geometry (:class:`~exaslide.patches.reader.PatchReader`: level,
rounding, centring, resampling), so the pixels are exactly those ``exaslide extract``
would write (tested). Readers (one per slide and patch resolution) live in a per-process
:class:`~exaslide.slides.pool.HandlePool` opened lazily inside each ``DataLoader`` worker:
the dataset pickles without open files, and a forked worker never uses its parent's
handles.

Batches (``__getitems__``, the protocol PyTorch's fetcher uses) are assembled in place:
for TIFF-based slides (TIFF, SVS, OME-TIFF...) the stored tiles are decoded once into
recycled buffers (:mod:`exaslide.data.tile_decode`), kept in one per-process
:class:`~exaslide.slides.tile_cache.TileCache` with a byte limit, and copied straight into
one preallocated batch array (:mod:`exaslide.data.patch_batch`). When the loader comes
from :func:`~exaslide.data.loader.make_loader`, each batch may carry the plan of the
patches this process will read next (:meth:`SlidePatchDataset.expect`): the cache then
knows how often each tile will still be read and spends its bytes on those. Other formats
are read through OpenSlide, whose own cache (32 MiB per open slide) applies instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.ma  # np.unique imports it on first use (~10 ms CPU): once, before workers fork
import torch
from torch.utils.data import Dataset

from exaslide.data.assembly import Assembler, Handle
from exaslide.data.patch_batch import PatchBatch, ReadGeometry, batch_metadata
from exaslide.data.sources import PatchTable, PatchTableDataset, load_patches
from exaslide.patches.geometry import centring_shift
from exaslide.patches.reader import PatchReader
from exaslide.patches.spec import PatchSpec
from exaslide.slides.pool import DEFAULT_MAX_OPEN, HandlePool

#: Byte limit of the decoded-tile cache shared by all readers of one process. Importing
#: PyTorch alone makes a process ~710 MiB resident, so 128 MiB keeps every loader process
#: of ``bench/loader.py`` under 1 GiB (256 MiB: 1.14 GiB in-process with a full shuffle);
#: the locality-aware order needs only the tiles read again in a later window (a few MiB)
#: and a larger cache pays only where a process's whole epoch of tiles fits in it
#: (``docs/data.md``: the measurement behind this choice).
DEFAULT_TILE_CACHE_BYTES = 128 << 20
#: Default side of a locality block, in patches (see :meth:`SlidePatchDataset.blocks`).
DEFAULT_BLOCK_PATCHES = 8


class SlidePatchDataset(PatchTableDataset, Dataset):
    """Map-style dataset of ``(image, label, metadata)`` read from the slides.

    Args:
        source: an ``exaslide extract`` output folder (``"out/"``), its ``index/``
            folder, a Parquet index file, or an index ``pyarrow`` table or dataset.
        slides: ``slide_id -> path or URL``; by default taken from ``manifest`` or from
            the extraction's status files.
        manifest: a cohort manifest CSV giving the slide paths.
        classes: label names in class-code order (default: ``normal``, ``tumour``, then
            other labels present, sorted). Patches without a label get ``-1``.
        filter: a pyarrow expression selecting rows (``pc.field("split") == "train"``).
        size: read ``size`` x ``size`` pixels centred on each indexed patch, at the same
            resolution (e.g. 224 from a 256 index); default: the indexed size.
        mpp: read at this resolution (µm/px) instead of the index's, centred on each
            indexed patch and resampled as the extraction engine does (an encoder's
            resolution); needs slides with a known resolution.
        transform: called on each image tensor (e.g. an :mod:`exaslide.augment`
            pipeline); batches are then stacked per item (slower: augment batches on
            the device instead).
        dtype: ``"uint8"`` (``CHW`` 0..255, normalise on the GPU) or ``"float"``
            (``CHW`` float32 in 0..1).
        backend: force a slide backend (see :func:`~exaslide.slides.open_slide`).
        max_open: open slides kept per process.
        tile_cache_bytes: byte limit of the per-process decoded-tile cache.

    Items: ``image`` (``uint8`` or ``float32`` tensor ``3 x size x size``), ``label``
    (int class code) and ``metadata`` (``key``, ``slide_id``, ``x``, ``y``, ``level``,
    ``index``); the default ``collate`` batches all three. ``dataset.__getitems__(rows)``
    returns a whole batch (a :class:`~exaslide.data.patch_batch.PatchBatch`).
    """

    def __init__(self, source, *, slides: Mapping[str, str] | None = None, manifest=None,
                 classes: Sequence[str] | None = None, filter=None, size: int | None = None,
                 mpp: float | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 dtype: str = "uint8", backend: str | None = None,
                 max_open: int = DEFAULT_MAX_OPEN,
                 tile_cache_bytes: int = DEFAULT_TILE_CACHE_BYTES):
        if dtype not in ("uint8", "float"):
            raise ValueError(f"dtype must be 'uint8' or 'float', got {dtype!r}")
        if size is not None and size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {size}")
        if mpp is not None and not mpp > 0:
            raise ValueError(f"mpp must be positive, got {mpp}")
        self.patches: PatchTable = source if isinstance(source, PatchTable) else \
            load_patches(source, slides=slides, manifest=manifest, classes=classes,
                         filter=filter)
        self.size, self.transform, self.dtype, self.backend = size, transform, dtype, backend
        self.mpp = mpp
        self.tile_cache_bytes = tile_cache_bytes
        self.pool = HandlePool(max_open)
        self._readers, self._groups = _reader_groups(self.patches)
        self._geometry: dict[int, ReadGeometry] = {}
        self._slots: dict[tuple[int, int], int] = {}
        self._process: Assembler | None = None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, dict[str, Any]]:
        p = self.patches
        if not -len(p) <= index < len(p):
            raise IndexError(f"patch {index} out of range for {len(p)} patches")
        index = int(index) % len(p)
        handle = self._handle(int(self._groups[index]))
        g = handle.geometry
        pixels = np.empty((g.size, g.size, 3), np.uint8)
        x, y = int(p.x[index]), int(p.y[index])
        if g.grid is None:
            pixels[...] = handle.reader.read(x + g.shift, y + g.shift)
        else:
            self._state().fill(handle, pixels, *g.box(x, y))
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        if self.dtype == "float":
            image = image.float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        metadata = {"key": p.keys[index].as_py(), "slide_id": p.slide_ids[p.slide[index]],
                    "x": x, "y": y, "level": int(p.level[index]), "index": index}
        return image, int(p.label[index]), metadata

    def __getitems__(self, indices: Sequence[int]) -> PatchBatch | list:
        """The patches of ``indices`` as one batch (see the module docstring). A plan
        attached by :func:`~exaslide.data.loader.make_loader` (``indices.plan``) is
        declared to the tile cache first, and the next planned batches are assembled
        ahead with this one (:mod:`exaslide.data.assembly`)."""
        state = self._state()
        plan = getattr(indices, "plan", None)
        if plan is not None:
            reset = getattr(indices, "reset", False)
            self.expect(plan, reset=reset, complete=getattr(indices, "complete", False),
                        keep=getattr(indices, "keep", True))
            state.follow(plan, reset, getattr(indices, "window", None))
        ring = getattr(indices, "ring", None)
        if ring is not None:
            state.batches.use_ring(*ring)
        n = len(self.patches)
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            bad = rows[(rows < -n) | (rows >= n)][0]
            raise IndexError(f"patch {bad} out of range for {n} patches")
        rows = rows % n
        batch = state.ready(rows)
        if batch is None:
            chunks = state.next_batches(rows) or [rows]
            made = self._make(chunks)
            state.ahead.extend(zip(chunks[1:], made[1:], strict=True))
            batch = made[0]
        if self.dtype == "float":
            batch.images = batch.images.float().div_(255.0)
        if self.transform is None:
            return batch
        return [(self.transform(image), label, meta) for image, label, meta in batch]

    # ------------------------------------------------------------------ planning
    def expect(self, rows: Sequence[int] | np.ndarray, *, reset: bool = False,
               complete: bool = False, keep: bool = True) -> None:
        """Declare that this process will read the patches ``rows`` (in any order), so
        its tile cache keeps each tile until its last planned read and evicts spent
        tiles first. ``reset`` forgets the previous plan (a new epoch); ``complete``
        says ``rows`` is the whole epoch of this process: when its tiles all fit in the
        cache and ``keep`` (the next epoch will read them here again, see
        :class:`~exaslide.data.loader.PlannedBatch`), spent tiles are kept for the next
        epoch, otherwise they are dropped at once and their buffers reused."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1) % len(self.patches)
        keys = [self.geometry(int(g)).tile_keys(self.patches.x[r], self.patches.y[r])
                for g, r in _split_by(self._groups[rows], rows)]
        keys = np.concatenate(keys) if keys else np.empty(0, np.int64)
        unique, counts = np.unique(keys, return_counts=True)
        cache = self.tile_cache()
        if reset:
            tile_bytes = max((math.prod(g.grid) * 3 for g in self._geometry.values()
                              if g.grid is not None), default=0)
            cache.keep_spent = complete and keep and \
                len(unique) * tile_bytes <= cache.max_bytes
        cache.expect(dict(zip(unique.tolist(), counts.tolist(), strict=True)), reset=reset)

    def blocks(self, patches: int = DEFAULT_BLOCK_PATCHES) -> np.ndarray:
        """Locality block of every patch, for ``PatchSampler(blocks=...)``.

        A block is a square of about ``patches`` x ``patches`` patch footprints of one
        slide and level, aligned to the slide's stored tiles; when the patches lie on a
        grid whose period meets the tile grid within twice that side (224-px patches on
        256-px tiles: every 7 tiles), the side is a multiple of that period, so no tile
        is read by two blocks. Opens each slide once (in this process) for its tile
        grid."""
        if patches < 1:
            raise ValueError(f"patches must be at least 1, got {patches}")
        out = np.empty(len(self.patches), np.int64)
        p = self.patches
        for g, rows in _split_by(self._groups, np.arange(len(p))):
            geometry = self.geometry(int(g))
            x0, y0, _, _ = geometry.boxes(p.x[rows], p.y[rows])
            if geometry.grid is None:
                side_x = side_y = max(1, round(patches * geometry.size * geometry.scale))
            else:
                side_x, side_y = (_block_tiles(geometry.size * geometry.scale, t, patches) * t
                                  for t in geometry.grid)
            out[rows] = ((np.int64(geometry.slot) << 42) + ((y0 // side_y) << 21)
                         + x0 // side_x)
        return np.unique(out, return_inverse=True)[1].astype(np.int64)

    def geometry(self, group: int) -> ReadGeometry:
        """The :class:`~exaslide.data.patch_batch.ReadGeometry` of reader group
        ``group`` (opens its slide in this process the first time)."""
        geometry = self._geometry.get(group)
        if geometry is None:
            geometry = self._handle(group).geometry
        return geometry

    # ------------------------------------------------------------------ reading
    def _out_side(self, rows: np.ndarray) -> int:
        if self.size is not None:
            return self.size
        sizes = self.patches.size[rows]
        if (sizes == sizes[0]).all():
            return int(sizes[0])
        sizes = np.unique(sizes)
        if len(sizes) > 1:
            raise ValueError(f"a batch mixes patch sizes {sizes.tolist()}: give size= to "
                             "read them all at one size")
        return int(sizes[0])

    def _make(self, chunks: list[np.ndarray]) -> list[PatchBatch]:
        """Assemble batches of rows together (each tile decoded once for all of them)."""
        state = self._state()
        side = self._out_side(np.concatenate(chunks))
        taken = [state.batches.take(len(rows), side) for rows in chunks]
        rows = np.concatenate(chunks)
        dest = np.repeat(np.arange(len(chunks)), [len(c) for c in chunks])
        slot = np.concatenate([np.arange(len(c)) for c in chunks])
        self._assemble(rows, [pixels.numpy() for pixels, _, _ in taken], dest, slot)
        batches = []
        for part, (pixels, ints, ring_slot) in zip(chunks, taken, strict=True):
            labels, metadata = batch_metadata(self.patches, part, ints)
            batches.append(PatchBatch(pixels.permute(0, 3, 1, 2), labels, metadata,
                                      ring_slot))
        return batches

    def _assemble(self, rows: np.ndarray, outs: list[np.ndarray], dest: np.ndarray,
                  slot: np.ndarray) -> None:
        """Write the patch of ``rows[k]`` into ``outs[dest[k]][slot[k]]``."""
        p = self.patches
        state = self._state()
        for g, where in _split_by(self._groups[rows], np.arange(len(rows))):
            handle = self._handle(int(g))
            geometry = handle.geometry
            picked = rows[where]
            targets = zip(dest[where].tolist(), slot[where].tolist(), strict=True)
            if geometry.grid is None:
                for (b, i), r in zip(targets, picked.tolist(), strict=True):
                    outs[b][i] = handle.reader.read(int(p.x[r]) + geometry.shift,
                                                    int(p.y[r]) + geometry.shift)
                continue
            boxes = geometry.boxes(p.x[picked], p.y[picked])
            if geometry.scale == 1.0:
                state.fill_tiles(handle, outs, dest[where], slot[where], *boxes)
                continue
            for (b, i), *box in zip(targets, *(c.tolist() for c in boxes), strict=True):
                state.fill(handle, outs[b][i], *box)

    def _handle(self, group: int) -> Handle:
        slide, size, level, mpp = self._readers[group]
        out_size = self.size or size
        key = (slide, size, level, None if math.isnan(mpp) else mpp, out_size)
        return self.pool.get(key, lambda: self._open(group))

    def _open(self, group: int) -> Handle:
        slide, size, level, mpp = self._readers[group]
        out_size = self.size or size
        read_mpp = self.mpp if self.mpp is not None else mpp
        spec = PatchSpec(size=out_size, level=None, mpp=read_mpp) \
            if not math.isnan(read_mpp) else PatchSpec(size=out_size, level=level)
        reader = PatchReader(self.patches.paths[slide], spec, backend=self.backend,
                             tile_cache=self.tile_cache())
        try:
            row = int(np.flatnonzero(self._groups == group)[0])
            p = self.patches
            shift = centring_shift(p.size[row], p.mpp[row], int(p.level[row]), self.size,
                                   self.mpp, reader)
            slot = self._slots.setdefault((slide, reader.level), len(self._slots))
            geometry = ReadGeometry(
                level=reader.level, downsample=reader.downsample, scale=reader.scale,
                size=out_size, shift=shift,
                level_size=tuple(reader.slide.level_dimensions[reader.level]),
                grid=tuple(reader.tiles.tile_grid(reader.level)) if reader.uses_tiles
                else None, slot=slot)
            self._geometry[group] = geometry
            return Handle(reader, geometry)
        except BaseException:
            reader.close()
            raise

    def _state(self) -> Assembler:
        if self._process is None or self._process.pid != os.getpid():
            self._process = Assembler(self.tile_cache_bytes)
        return self._process

    def tile_cache(self):
        """This process's decoded-tile cache, shared by every reader (created lazily;
        ``tile_cache().stats()`` gives hits, misses and bytes)."""
        return self._state().cache

    @property
    def tile_decodes(self) -> int:
        """Tiles decoded by this process so far (for tests and benchmarks)."""
        return self._state().decodes

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_process"] = None
        return state


def _reader_groups(p: PatchTable) -> tuple[list[tuple[int, int, int, float]], np.ndarray]:
    """The distinct ``(slide, size, level, mpp)`` of the index and each patch's group."""
    if len(p) == 0:
        return [], np.empty(0, np.int32)
    if all(_constant(c) for c in (p.size, p.level, p.mpp)):
        slides = np.arange(len(p.slide_ids), dtype=np.int32)
        groups = [(int(s), int(p.size[0]), int(p.level[0]), float(p.mpp[0])) for s in slides]
        return groups, p.slide
    mpp_bits = p.mpp.astype(np.float32).view(np.int32).astype(np.int64)
    table = np.stack([p.slide.astype(np.int64), p.size, p.level, mpp_bits], axis=1)
    unique, inverse = np.unique(table, axis=0, return_inverse=True)
    groups = [(int(s), int(z), int(lv), float(np.int32(m).view(np.float32)))
              for s, z, lv, m in unique.tolist()]
    return groups, inverse.reshape(-1).astype(np.int32)


def _constant(column: np.ndarray) -> bool:
    if (column == column[0]).all():
        return True
    return column.dtype.kind == "f" and bool(np.isnan(column).all())


def _split_by(codes: np.ndarray, values: np.ndarray):
    """``(code, values with that code)`` for each distinct code, in code order."""
    if len(codes) == 0:
        return
    first = codes[0]
    if (codes == first).all():
        yield first, values
        return
    order = np.argsort(codes, kind="stable")
    cuts = np.flatnonzero(np.diff(codes[order])) + 1
    for part in np.split(order, cuts):
        yield codes[part[0]], values[part]


def _block_tiles(footprint: float, tile: int, patches: int) -> int:
    """Tiles per block side: about ``patches`` footprints, a multiple of the period after
    which a grid of that footprint meets the tile grid again when that period is short."""
    target = max(1, round(patches * footprint / tile))
    step = round(footprint)
    if step > 0 and math.isclose(step, footprint):
        period = math.lcm(step, tile) // tile
        if period <= 2 * target:
            return max(1, round(target / period)) * period
    return target
