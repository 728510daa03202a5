"""The extraction engine: read many patches of one slide, decoding each tile once.

For slides that tifffile can read (TIFF, SVS, OME-TIFF...), patches are assembled from
decoded stored tiles kept in a small cache: patches are read in raster order, and a tile
is dropped once the patches have moved below it, so an aligned grid decodes every tile
exactly once and memory holds about two rows of tiles of one region. Pixels are the same
as OpenSlide's ``read_region`` (both decode the same JPEG tiles with libjpeg-turbo).
Every other format falls back to :meth:`Slide.read_region` per patch (OpenSlide).

A patch is *blank* (see :func:`is_blank`) when at least ``blank_fraction`` (90%) of its
pixels are white (``min(R,G,B) > 220``: glass) or black (``max(R,G,B) < 25``), or when it
is flat (standard deviation below 2: scanner fill).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from exaslide.patches.spec import PatchSpec
from exaslide.slides import open_slide
from exaslide.slides.base import Slide

logger = logging.getLogger(__name__)

WHITE, BLACK, FLAT_STD = 220, 25, 2.0
TILE_CACHE_BYTES = 256 << 20


def is_blank(patch: np.ndarray, blank_fraction: float = 0.9) -> bool:
    """True for patches that are mostly glass, mostly black, or flat (see module doc)."""
    white = (patch.min(axis=2) > WHITE).mean()
    black = (patch.max(axis=2) < BLACK).mean()
    return bool(white >= blank_fraction or black >= blank_fraction or patch.std() < FLAT_STD)


def _round(value: float) -> int:
    return math.floor(value + 0.5)


class PatchReader:
    """Reads ``spec``-sized patches of one slide by their level-0 top-left corners.

    Use as a context manager. ``tile_decodes`` counts decoded tiles (for tests and
    benchmarks).
    """

    def __init__(self, path, spec: PatchSpec, backend: str | None = None):
        spec.validate()
        self.spec = spec
        self.slide: Slide = open_slide(path, backend=backend)
        self.tiles = _tiled_source(self.slide, path, backend)
        if spec.mpp is not None:
            self.level = self.slide.best_level(mpp=spec.mpp)
            self.scale = spec.mpp / (self.slide.mpp[0] * self.slide.level_downsamples[self.level])
        else:
            self.slide.check_level(spec.level)
            self.level, self.scale = spec.level, 1.0
        self.downsample = self.slide.level_downsamples[self.level]
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self.tile_decodes = 0

    @property
    def uses_tiles(self) -> bool:
        """True when patches are assembled from decoded tiles (TIFF-based slides)."""
        return self.tiles is not None

    def read(self, x: int, y: int) -> np.ndarray:
        """One ``(size, size, 3)`` RGB patch with top-left ``(x, y)`` in level-0 pixels."""
        size = self.spec.size
        if self.tiles is None:
            if self.spec.mpp is not None:
                return self.slide.read_region((x, y), (size, size), mpp=self.spec.mpp)
            return self.slide.read_region((x, y), (size, size), level=self.level)
        lx0, ly0 = _round(x / self.downsample), _round(y / self.downsample)
        if self.scale == 1.0:
            return self._assemble(lx0, ly0, lx0 + size, ly0 + size)
        import cv2

        lx1 = max(lx0 + 1, _round(x / self.downsample + size * self.scale))
        ly1 = max(ly0 + 1, _round(y / self.downsample + size * self.scale))
        region = self._assemble(lx0, ly0, lx1, ly1)
        interp = cv2.INTER_AREA if self.scale >= 1.0 else cv2.INTER_LINEAR
        return cv2.resize(region, (size, size), interpolation=interp)

    def iter_patches(self, xs, ys) -> Iterator[np.ndarray]:
        """Patches for each ``(x, y)``; pass them in raster order (by y, then x) so that each
        tile is decoded once."""
        for x, y in zip(xs, ys, strict=True):
            yield self.read(int(x), int(y))

    def _assemble(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        lw, lh = self.slide.level_dimensions[self.level]
        tw, th = self.tiles.tile_grid(self.level)
        out = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
        first_row = max(0, y0) // th
        self._evict_rows_above(first_row)
        for ty in range(first_row, (min(y1, lh) - 1) // th + 1):
            for tx in range(max(0, x0) // tw, (min(x1, lw) - 1) // tw + 1):
                tile = self._tile(tx, ty)
                sx0, sy0 = tx * tw, ty * th
                ax0, ay0 = max(x0, sx0), max(y0, sy0)
                ax1, ay1 = min(x1, sx0 + tile.shape[1]), min(y1, sy0 + tile.shape[0])
                out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = \
                    tile[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0]
        return out

    def _tile(self, tx: int, ty: int) -> np.ndarray:
        key = (tx, ty)
        tile = self._cache.get(key)
        if tile is None:
            tile = self.tiles.read_tile(self.level, tx, ty)
            self.tile_decodes += 1
            self._cache[key] = tile
            self._cache_bytes += tile.nbytes
            while self._cache_bytes > TILE_CACHE_BYTES and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return tile

    def _evict_rows_above(self, row: int) -> None:
        stale = [k for k in self._cache if k[1] < row]
        for k in stale:
            self._cache_bytes -= self._cache.pop(k).nbytes

    def close(self) -> None:
        """Close the slide (and the tile source)."""
        if self.tiles is not None and self.tiles is not self.slide:
            self.tiles.close()
        self.slide.close()

    def __enter__(self) -> PatchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tiled_source(slide: Slide, path, backend: str | None):
    """A :class:`TiffFileSlide` with the same levels as ``slide``, or ``None``."""
    from exaslide.slides.tifffile_backend import TiffFileSlide, is_tiff

    if isinstance(slide, TiffFileSlide):
        return slide
    if backend is not None or not is_tiff(slide.path):
        return None
    try:
        tiles = TiffFileSlide(slide.path)
    except Exception as exc:
        logger.debug("no tile access for %s: %s", path, exc)
        return None
    if tiles.level_dimensions != slide.level_dimensions:  # e.g. NDPI, SCN, Philips
        tiles.close()
        return None
    return tiles
