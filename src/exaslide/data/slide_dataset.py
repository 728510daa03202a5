"""``SlidePatchDataset``: patches read on the fly from the slides, by their index rows.

No pixels are stored ahead: each item is read from its slide (local path or URL) through
the extraction engine's :class:`~exaslide.patches.reader.PatchReader`, so the pixels are
exactly those ``exaslide extract`` would write. Readers (one per slide and patch
resolution) live in a per-process :class:`~exaslide.slides.pool.HandlePool` opened lazily
inside each ``DataLoader`` worker: the dataset pickles without open files, and a forked
worker never uses its parent's handles. For TIFF-based slides (TIFF, SVS, OME-TIFF...)
all readers of a process share one decoded-tile LRU cache with a byte limit, so
neighbouring and repeated patches decode no tile twice while it is cached; other formats
are read through OpenSlide, whose own cache (32 MiB per open slide) applies instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from exaslide.data.sources import PatchTable, load_patches
from exaslide.patches.reader import PatchReader
from exaslide.patches.spec import PatchSpec
from exaslide.slides.pool import DEFAULT_MAX_OPEN, HandlePool

#: Byte limit of the decoded-tile cache shared by all readers of one worker process.
DEFAULT_TILE_CACHE_BYTES = 512 << 20


class SlidePatchDataset(Dataset):
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
            pipeline).
        dtype: ``"uint8"`` (``CHW`` 0..255, normalise on the GPU) or ``"float"``
            (``CHW`` float32 in 0..1).
        backend: force a slide backend (see :func:`~exaslide.slides.open_slide`).
        max_open: open slides kept per process.
        tile_cache_bytes: byte limit of the per-process decoded-tile cache.

    Items: ``image`` (``uint8`` or ``float32`` tensor ``3 x size x size``), ``label``
    (int class code) and ``metadata`` (``key``, ``slide_id``, ``x``, ``y``, ``level``,
    ``index``); the default ``collate`` batches all three.
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
        self.patches: PatchTable = load_patches(source, slides=slides, manifest=manifest,
                                                classes=classes, filter=filter)
        self.size, self.transform, self.dtype, self.backend = size, transform, dtype, backend
        self.mpp = mpp
        self.tile_cache_bytes = tile_cache_bytes
        self.pool = HandlePool(max_open)
        self._tile_cache = None

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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, dict[str, Any]]:
        p = self.patches
        if not -len(p) <= index < len(p):
            raise IndexError(f"patch {index} out of range for {len(p)} patches")
        index = index % len(p)
        reader = self._reader(int(p.slide[index]), int(p.size[index]),
                              int(p.level[index]), float(p.mpp[index]))
        x, y = int(p.x[index]), int(p.y[index])
        if self.mpp is not None:  # centre the read patch on the indexed one (level 0)
            side = p.size[index] * (p.mpp[index] / reader.slide.mpp[0]
                                    if not math.isnan(p.mpp[index]) else
                                    reader.slide.level_downsamples[int(p.level[index])])
            shift = (side - reader.spec.size * reader.scale * reader.downsample) / 2
            x, y = x + math.floor(shift + 0.5), y + math.floor(shift + 0.5)
        elif self.size is not None and self.size != p.size[index]:
            shift = (p.size[index] - self.size) / 2 * reader.scale * reader.downsample
            x, y = x + math.floor(shift + 0.5), y + math.floor(shift + 0.5)
        image = torch.from_numpy(reader.read(x, y, writable=True)).permute(2, 0, 1)
        if self.dtype == "float":
            image = image.float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        metadata = {"key": p.keys[index].as_py(), "slide_id": p.slide_ids[p.slide[index]],
                    "x": int(p.x[index]), "y": int(p.y[index]),
                    "level": int(p.level[index]), "index": index}
        return image, int(p.label[index]), metadata

    def _reader(self, slide: int, size: int, level: int, mpp: float) -> PatchReader:
        out_size = self.size or size
        key = (slide, size, level, mpp if not math.isnan(mpp) else None, out_size)
        return self.pool.get(key, lambda: self._open(slide, out_size, level, mpp))

    def _open(self, slide: int, size: int, level: int, mpp: float) -> PatchReader:
        if self.mpp is not None:
            mpp = self.mpp
        spec = PatchSpec(size=size, level=None, mpp=mpp) if not math.isnan(mpp) else \
            PatchSpec(size=size, level=level)
        return PatchReader(self.patches.paths[slide], spec, backend=self.backend,
                           tile_cache=self.tile_cache())

    def tile_cache(self):
        """This process's decoded-tile cache, shared by every reader (created lazily;
        ``tile_cache().stats()`` gives hits, misses and bytes)."""
        import os

        from exaslide.slides.tile_cache import TileCache

        if self._tile_cache is None or self._tile_cache_pid != os.getpid():
            self._tile_cache = TileCache(self.tile_cache_bytes)
            self._tile_cache_pid = os.getpid()
        return self._tile_cache

    def close(self) -> None:
        """Close this process's open slides."""
        self.pool.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tile_cache"] = None
        return state
