"""``CompressedPatchDataset``: batches of compressed JPEG tiles for decoding on a device.

The loader-worker half of the compressed batch path (``docs/decode.md``). Indexed with a
*list* of patch indices (a ``BatchSampler``'s batch), it returns one
:class:`~exaslide.data.compressed_batch.CompressedBatch`: the standalone JPEG stream of
every stored tile the batch needs, each tile read once per batch and never decoded here,
plus the plan that places tile pixels into patches. Patches of slides (or levels) that are
not JPEG-tiled, and patches that touch a sparse (unstored) tile, are read by the CPU
reader (:class:`~exaslide.patches.reader.PatchReader`) in the worker and travel as pixels
in the same batch, so the decoding side sees one interface whatever the format.

The patches are those :class:`~exaslide.data.slide_dataset.SlidePatchDataset` reads for
the same index (same centring for ``size`` and ``mpp``, same level and resampling), so
:class:`~exaslide.data.batch_decode.BatchDecoder` on the CPU returns identical pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from exaslide.data.compressed_batch import AREA, LINEAR, NO_RESAMPLE, CompressedBatch
from exaslide.data.sources import PatchTable, PatchTableDataset, load_patches
from exaslide.errors import DatasetError
from exaslide.patches.geometry import centring_shift, level_box, tiles_of
from exaslide.patches.reader import PatchReader
from exaslide.patches.spec import PatchSpec
from exaslide.slides.pool import DEFAULT_MAX_OPEN, HandlePool

#: Default cap on the compressed bytes of one batch (streams + fallback pixels).
MAX_BATCH_BYTES = 256 << 20
#: Default cap on the decoded bytes of the tiles one batch needs (decoder memory).
MAX_DECODED_BYTES = 2 << 30
#: Byte limit of the decoded-tile cache of the fallback readers of one worker.
FALLBACK_CACHE_BYTES = 64 << 20


class _Source:
    """One slide at one patch resolution in a worker: its reader and, when its level is
    JPEG-tiled, the stored tiles' streams."""

    def __init__(self, reader: PatchReader, name: str):
        from exaslide.data.tile_bytes import jpeg_level

        self.reader, self.name = reader, name
        self.jpeg = jpeg_level(reader.tiles, reader.level) if reader.tiles is not None \
            else None

    def close(self) -> None:
        self.reader.close()


class CompressedPatchDataset(PatchTableDataset, Dataset):
    """Compressed batches of the patches of an index (see the module docstring).

    Args:
        source, slides, manifest, classes, filter, size, mpp, backend, max_open: as for
            :class:`~exaslide.data.slide_dataset.SlidePatchDataset` (``source`` may also
            be a loaded :class:`~exaslide.data.sources.PatchTable`).
        max_batch_bytes: refuse a batch whose compressed bytes exceed this.
        max_decoded_bytes: refuse a batch whose tiles would take more than this once
            decoded (the decoder holds them all at once).

    ``dataset[[i, j, ...]]`` returns a :class:`CompressedBatch`; ``dataset[i]`` a batch of
    one. Use :func:`make_compressed_loader` to iterate it with workers.
    """

    def __init__(self, source, *, slides: Mapping[str, str] | None = None, manifest=None,
                 classes: Sequence[str] | None = None, filter=None, size: int | None = None,
                 mpp: float | None = None, backend: str | None = None,
                 max_open: int = DEFAULT_MAX_OPEN, max_batch_bytes: int = MAX_BATCH_BYTES,
                 max_decoded_bytes: int = MAX_DECODED_BYTES):
        if size is not None and size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {size}")
        if mpp is not None and not mpp > 0:
            raise ValueError(f"mpp must be positive, got {mpp}")
        self.patches: PatchTable = source if isinstance(source, PatchTable) else \
            load_patches(source, slides=slides, manifest=manifest, classes=classes,
                         filter=filter)
        self.size, self.mpp, self.backend = size, mpp, backend
        self.max_batch_bytes, self.max_decoded_bytes = max_batch_bytes, max_decoded_bytes
        self.pool = HandlePool(max_open)
        self._cache = None

    @classmethod
    def like(cls, dataset, **options: Any) -> CompressedPatchDataset:
        """The compressed twin of a :class:`SlidePatchDataset`: the same patches, size,
        resolution and backend (it must not have a per-item ``transform``)."""
        if getattr(dataset, "transform", None) is not None:
            raise ValueError("the compressed path applies no per-item transform: augment "
                             "the decoded batch on the device instead")
        return cls(dataset.patches, size=dataset.size, mpp=dataset.mpp,
                   backend=dataset.backend, **options)

    def __getitem__(self, indices) -> CompressedBatch:
        if isinstance(indices, (int, np.integer)):
            indices = [int(indices)]
        n = len(self.patches)
        rows = []
        for i in indices:
            i = int(i)
            if not -n <= i < n:
                raise IndexError(f"patch {i} out of range for {n} patches")
            rows.append(i % n)
        if not rows:
            raise ValueError("an empty batch of indices")
        return _BatchBuilder(self, rows).build()

    def source(self, index: int) -> _Source:
        """The worker's open :class:`_Source` of patch ``index`` (opened lazily)."""
        p = self.patches
        slide, size = int(p.slide[index]), int(p.size[index])
        level, mpp = int(p.level[index]), float(p.mpp[index])
        out_size = self.size or size
        key = (slide, size, level, mpp if not math.isnan(mpp) else None, out_size)
        return self.pool.get(key, lambda: self._open(slide, out_size, level, mpp))

    def _open(self, slide: int, size: int, level: int, mpp: float) -> _Source:
        if self.mpp is not None:
            mpp = self.mpp
        spec = PatchSpec(size=size, level=None, mpp=mpp) if not math.isnan(mpp) else \
            PatchSpec(size=size, level=level)
        reader = PatchReader(self.patches.paths[slide], spec, backend=self.backend,
                             tile_cache=self._fallback_cache())
        return _Source(reader, f"{self.patches.slide_ids[slide]} level {reader.level}")

    def _fallback_cache(self):
        import os

        from exaslide.slides.tile_cache import TileCache

        if self._cache is None or self._cache_pid != os.getpid():
            self._cache, self._cache_pid = TileCache(FALLBACK_CACHE_BYTES), os.getpid()
        return self._cache

    def origin(self, index: int, reader: PatchReader) -> tuple[int, int]:
        """Level-0 top-left corner read for patch ``index``: the indexed corner, moved so
        that a ``size`` crop or an ``mpp`` read is centred on the indexed patch (as
        :class:`SlidePatchDataset` reads it)."""
        p = self.patches
        shift = centring_shift(p.size[index], p.mpp[index], int(p.level[index]), self.size,
                               self.mpp, reader)
        return int(p.x[index]) + shift, int(p.y[index]) + shift

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None
        return state


class _BatchBuilder:
    """Reads one batch's streams and builds its plan (one use)."""

    def __init__(self, dataset: CompressedPatchDataset, rows: list[int]):
        self.ds, self.rows = dataset, rows
        self.sizes: set[int] = set()
        self.streams: list[bytes] = []
        self.where: list[tuple[int, int, int]] = []
        self.rgb: list[bool] = []
        self.stream_of: dict[tuple[int, int, int], int] = {}
        self.source_ids: dict[int, int] = {}
        self.source_names: list[str] = []
        self.planned: list[tuple] = []
        self.fallback: list[tuple[int, np.ndarray]] = []
        self.decoded = 0  #: bytes of the batch's tiles once decoded

    def build(self) -> CompressedBatch:
        for position, row in enumerate(self.rows):
            source = self.ds.source(row)
            self.sizes.add(source.reader.spec.size)
            x, y = self.ds.origin(row, source.reader)
            if not self._plan(position, source, x, y):
                self.fallback.append((position, source.reader.read(x, y)))
        if len(self.sizes) > 1:
            raise DatasetError(f"one batch holds patches of sizes {sorted(self.sizes)}; "
                               "give the dataset a size= so every patch has the same")
        return self._batch()

    def _plan(self, position: int, source: _Source, x: int, y: int) -> bool:
        """Plan one patch from JPEG tiles; False when it must be read as pixels."""
        jpeg, reader = source.jpeg, source.reader
        if jpeg is None:
            return False
        size = reader.spec.size
        x0, y0, x1, y1 = level_box(x, y, reader.downsample, reader.scale, size)
        (tw, th), (lw, lh) = jpeg.tile_size, jpeg.level_size
        tx0, ty0 = x0 // tw, y0 // th
        cols, rows = (x1 - 1) // tw - tx0 + 1, (y1 - 1) // th - ty0 + 1
        table = np.full((rows, cols), -1, np.int64)
        inside = list(tiles_of(x0, y0, x1, y1, (tw, th), (lw, lh)))  # none: all white
        if any(not jpeg.stored(tx, ty) for tx, ty in inside):
            return False  # a sparse tile: the CPU reader paints it as it does
        sid = self._source_id(source)
        for tx, ty in inside:
            table[ty - ty0, tx - tx0] = self._stream(sid, jpeg, tx, ty)
        resample = NO_RESAMPLE if reader.scale == 1.0 else \
            AREA if reader.scale >= 1.0 else LINEAR
        self.planned.append((position, (x0, y0, x1, y1), (tx0, ty0), table, (tw, th),
                             (lw, lh), resample))
        return True

    def _source_id(self, source: _Source) -> int:
        key = id(source)
        if key not in self.source_ids:
            self.source_ids[key] = len(self.source_names)
            self.source_names.append(source.name)
        return self.source_ids[key]

    def _stream(self, sid: int, jpeg, tx: int, ty: int) -> int:
        key = (sid, tx, ty)
        found = self.stream_of.get(key)
        if found is None:
            data, colour = jpeg.stream(tx, ty)
            found = self.stream_of[key] = len(self.streams)
            self.streams.append(data)
            self.where.append(key)
            self.rgb.append(colour == "rgb")
            self.decoded += jpeg.tile_size[0] * jpeg.tile_size[1] * 3
        return found

    def _batch(self) -> CompressedBatch:
        size = self.sizes.pop()
        data = b"".join(self.streams)
        decoded = self.decoded
        nbytes = len(data) + len(self.fallback) * size * size * 3
        if nbytes > self.ds.max_batch_bytes or decoded > self.ds.max_decoded_bytes:
            raise DatasetError(
                f"a batch of {len(self.rows)} patches needs {nbytes / 2**20:.0f} MiB of "
                f"compressed tiles and pixels and {decoded / 2**20:.0f} MiB of decoded "
                f"tiles, over the caps ({self.ds.max_batch_bytes / 2**20:.0f} and "
                f"{self.ds.max_decoded_bytes / 2**20:.0f} MiB); use a smaller batch size "
                "or raise max_batch_bytes / max_decoded_bytes")
        offsets = np.zeros(len(self.streams) + 1, np.int64)
        np.cumsum([len(s) for s in self.streams], out=offsets[1:])
        return CompressedBatch(
            size=size,
            data=torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else
            torch.empty(0, dtype=torch.uint8),
            offsets=torch.from_numpy(offsets),
            stream_where=torch.tensor(self.where, dtype=torch.int32).reshape(-1, 3),
            stream_rgb=torch.tensor(self.rgb, dtype=torch.bool),
            sources=self.source_names,
            **self._plan_tensors(),
            **self._fallback_tensors(size),
            labels=torch.from_numpy(self.ds.patches.label[self.rows].astype(np.int64)),
            metadata=self._metadata())

    def _plan_tensors(self) -> dict[str, torch.Tensor]:
        planned = self.planned
        ky = max((p[3].shape[0] for p in planned), default=1)
        kx = max((p[3].shape[1] for p in planned), default=1)
        tiles = np.full((len(planned), ky, kx), -1, np.int64)
        for i, entry in enumerate(planned):
            table = entry[3]
            tiles[i, : table.shape[0], : table.shape[1]] = table

        def column(k: int, width: int) -> torch.Tensor:
            return torch.tensor([p[k] for p in planned], dtype=torch.int64).reshape(-1, width)

        return {"position": column(0, 1).reshape(-1), "box": column(1, 4),
                "tile0": column(2, 2), "tiles": torch.from_numpy(tiles),
                "tile_size": column(4, 2), "level_size": column(5, 2),
                "resample": torch.tensor([p[6] for p in planned], dtype=torch.int8)}

    def _fallback_tensors(self, size: int) -> dict[str, torch.Tensor]:
        pixels = np.empty((len(self.fallback), size, size, 3), np.uint8)
        for i, (_, patch) in enumerate(self.fallback):
            pixels[i] = patch
        return {"fallback_position": torch.tensor([f[0] for f in self.fallback],
                                                  dtype=torch.int64),
                "fallback_pixels": torch.from_numpy(pixels)}

    def _metadata(self) -> dict[str, Any]:
        p, rows = self.ds.patches, self.rows
        keys = p.keys.take(rows).to_pylist()
        return {"key": keys, "slide_id": [p.slide_ids[p.slide[i]] for i in rows],
                "x": torch.from_numpy(p.x[rows].astype(np.int64)),
                "y": torch.from_numpy(p.y[rows].astype(np.int64)),
                "level": torch.from_numpy(p.level[rows].astype(np.int64)),
                "index": torch.tensor(rows, dtype=torch.int64)}


def identity(batch):
    """The loader's ``collate_fn`` for batches the dataset already made."""
    return batch


def make_compressed_loader(dataset: CompressedPatchDataset, *, batch_size: int = 64,
                           workers: int = 2, sampler=None, device=None,
                           prefetch_factor: int = 4, drop_last: bool = False,
                           seed: int = 0):
    """A ``DataLoader`` of :class:`CompressedBatch`: the batches
    :func:`~exaslide.data.loader.make_loader` would form from the same sampler (a
    :class:`~exaslide.data.sampler.PatchSampler`'s own ``batches`` for ``workers``
    streams, so a locality-aware order keeps its tiles together; else ``batch_size``
    consecutive indices), in the same order.

    Args:
        dataset: the compressed dataset.
        batch_size, workers, prefetch_factor, drop_last, seed: as for ``make_loader``.
        sampler: e.g. a :class:`~exaslide.data.sampler.PatchSampler` (default: the index
            order).
        device: where batches will be decoded; pinned memory is used for CUDA devices.
    """
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    from exaslide.data.loader import StreamBatches, loader_options

    sampler = sampler if sampler is not None else SequentialSampler(range(len(dataset)))
    if callable(getattr(sampler, "batches", None)):
        batches = StreamBatches(sampler, batch_size, workers, drop_last, plan=False)
    else:
        batches = BatchSampler(sampler, batch_size, drop_last)
    return DataLoader(dataset, batch_size=None, sampler=batches, collate_fn=identity,
                      **loader_options(workers, device, prefetch_factor, seed))
