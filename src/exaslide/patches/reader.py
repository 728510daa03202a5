"""The extraction engine: read many patches of one slide, decoding each tile once.

For slides that tifffile can read (TIFF, SVS, OME-TIFF...), patches are assembled from
decoded stored tiles kept in a small cache. :meth:`PatchReader.iter_patches` counts the
patches that need each tile before it starts and drops a tile as soon as its last patch is
read, so every tile is decoded exactly once and, in raster order within region blocks,
the cache holds about two rows of one block's tiles (an aligned grid holds none). Single
:meth:`PatchReader.read` calls use an LRU cache bounded at 128 MB, or the shared
:class:`~exaslide.slides.tile_cache.TileCache` given as ``tile_cache`` (the data loaders
give all readers of a process one cache with one byte limit). Pixels are the same
as OpenSlide's ``read_region`` (both decode the same JPEG tiles with libjpeg-turbo).
Every other format falls back to :meth:`Slide.read_region` per patch (OpenSlide).

Stored JPEG tiles (8-bit RGB or YCbCr, the usual whole-slide case) are decoded by
libjpeg-turbo directly into buffers that start 16 bytes past a 32-byte boundary
(:mod:`exaslide.slides.jpeg_tiles` says why); the pixels are those of
``TiffFileSlide.read_tile`` (tested), which decodes every other tile.

A patch is *blank* (see :func:`is_blank`) when at least ``blank_fraction`` (90%) of its
pixels are white (``min(R,G,B) > 220``: glass) or black (``max(R,G,B) < 25``), or when it
is flat (standard deviation below 2 in every channel: scanner fill), counted over all its
pixels. To stay cheap for tissue, the test first looks at evenly spaced whole rows (every
``s``-th row from the first, ``s`` the largest step that keeps at least 16 rows and 4,096
pixels: every 16th row of a 256-px patch); these rows only ever *keep* a patch without
looking further: when they prove it is not flat (a sample's variance bounds the whole
patch's from below) and hold less than ``blank_fraction - 0.1`` white and black pixels.
Anything else is decided on every pixel, so a patch with tissue is never called blank
because the rows missed it; a patch that is just over 90% glass but whose sampled rows
show under 80% is kept.
"""

from __future__ import annotations

import logging
import operator
import sys
from collections import Counter, deque
from collections.abc import Iterator

import numpy as np

from exaslide.lru import LRU
from exaslide.patches.geometry import level_box, level_boxes, tiles_of
from exaslide.patches.spec import PatchSpec
from exaslide.slides import open_slide
from exaslide.slides.base import Slide
from exaslide.slides.jpeg_tiles import DECODE_OFFSET, jpeg_tiles

logger = logging.getLogger(__name__)

WHITE, BLACK, FLAT_STD = 220, 25, 2.0
TILE_CACHE_BYTES = 128 << 20


#: The blank test's row sample holds at least this many rows and this many pixels.
BLANK_ROWS, BLANK_PIXELS = 16, 4096
#: The row sample keeps a patch on its own when its white (or black) share is this much
#: below ``blank_fraction``; closer, every pixel is counted.
BLANK_MARGIN = 0.1


def blank_rows(height: int, width: int) -> int:
    """The row step of :func:`is_blank`'s sample: the largest that keeps at least
    :data:`BLANK_ROWS` rows and :data:`BLANK_PIXELS` pixels (1 for small patches)."""
    rows = max(BLANK_ROWS, -(-BLANK_PIXELS // max(width, 1)))
    return max(1, height // rows)


def is_blank(patch: np.ndarray, blank_fraction: float = 0.9) -> bool:
    """True for patches that are mostly glass, mostly black, or flat, over all their
    pixels; a row sample only ever skips the full count for tissue (see the module
    doc)."""
    import cv2

    step = blank_rows(patch.shape[0], patch.shape[1])
    sample = np.ascontiguousarray(patch[::step])  # whole rows: a few memcpy
    mean, std = cv2.meanStdDev(sample)
    # the whole patch's variance is at least the sample's times its share of the pixels
    share = sample.shape[0] / patch.shape[0]
    if std.max() ** 2 * share < FLAT_STD ** 2 and cv2.meanStdDev(patch)[1].max() < FLAT_STD:
        return True
    return _mostly(patch, sample, mean, blank_fraction)


def _mostly(patch: np.ndarray, sample: np.ndarray, mean: np.ndarray, f: float) -> bool:
    """At least a fraction ``f`` of the patch's pixels white, or black; decided on the
    sample when it holds less than ``f - BLANK_MARGIN`` of either."""
    import cv2

    # exact bounds: a fraction g of pixels above WHITE in every channel puts every
    # channel's mean at g * (WHITE + 1) or more; g below BLACK puts every channel's mean
    # at g * (BLACK - 1) + (1 - g) * 255 or less. Most tissue passes both tests here.
    g = max(f - BLANK_MARGIN, 0.0)
    maybe_white = mean.min() >= g * (WHITE + 1) - 1e-6
    maybe_black = mean.max() <= g * (BLACK - 1) + (1 - g) * 255 + 1e-6
    channels = 1 if patch.ndim == 2 else patch.shape[2]
    for maybe, low, high in ((maybe_white, WHITE + 1, 255), (maybe_black, 0, BLACK - 1)):
        bounds = ((low,) * channels, (high,) * channels)
        if maybe and cv2.countNonZero(cv2.inRange(sample, *bounds)) >= \
                g * sample.shape[0] * sample.shape[1] and cv2.countNonZero(
                    cv2.inRange(np.ascontiguousarray(patch), *bounds)) >= \
                f * patch.shape[0] * patch.shape[1]:
            return True
    return False


class PatchReader:
    """Reads ``spec``-sized patches of one slide by their level-0 top-left corners.

    Use as a context manager. ``tile_decodes`` counts decoded tiles (for tests and
    benchmarks).
    """

    def __init__(self, path, spec: PatchSpec, backend: str | None = None,
                 tile_cache=None):
        spec.validate()
        self.spec = spec
        self.shared_cache = tile_cache
        # no slide tile cache: the reader's own (exact-refcount) cache holds the tiles
        self.slide: Slide = open_slide(path, backend=backend, tile_cache=None)
        self.tiles = _tiled_source(self.slide, path, backend)
        if spec.mpp is not None:
            self.level = self.slide.best_level(mpp=spec.mpp)
            self.scale = spec.mpp / (self.slide.mpp[0] * self.slide.level_downsamples[self.level])
        else:
            self.slide.check_level(spec.level)
            self.level, self.scale = spec.level, 1.0
        self.downsample = self.slide.level_downsamples[self.level]
        self._level_size = self.slide.level_dimensions[self.level]
        self._grid = self.tiles.tile_grid(self.level) if self.tiles is not None else None
        self._jpeg = jpeg_tiles(self.tiles, self.level) if self.tiles is not None else None
        self._buffers = _Buffers()
        self._cache = LRU(TILE_CACHE_BYTES, size_of=operator.attrgetter("nbytes"),
                          keep_newest=True, threadsafe=False)  # one reader, one thread
        self._refs: Counter | None = None
        self.tile_decodes = 0

    @property
    def uses_tiles(self) -> bool:
        """True when patches are assembled from decoded tiles (TIFF-based slides)."""
        return self.tiles is not None

    def read(self, x: int, y: int, writable: bool = False) -> np.ndarray:
        """One ``(size, size, 3)`` RGB patch with top-left ``(x, y)`` in level-0 pixels.

        The array is read-only (it may be shared with the tile cache) unless
        ``writable``: then it is the caller's own (copied only when it is a cached tile)."""
        patch = self._read(x, y)
        if writable:
            return patch if patch.flags.writeable else patch.copy()
        patch.flags.writeable = False
        return patch

    def _read(self, x: int, y: int) -> np.ndarray:
        size = self.spec.size
        if self.tiles is None:
            if self.spec.mpp is not None:
                return self.slide.read_region((x, y), (size, size), mpp=self.spec.mpp)
            return self.slide.read_region((x, y), (size, size), level=self.level)
        x0, y0, x1, y1 = self._level_box(x, y)
        region = self._assemble(x0, y0, x1, y1)
        if self.scale == 1.0:
            return region
        import cv2

        interp = cv2.INTER_AREA if self.scale >= 1.0 else cv2.INTER_LINEAR
        return cv2.resize(region, (size, size), interpolation=interp)

    def iter_patches(self, xs, ys) -> Iterator[np.ndarray]:
        """Read-only patches for each ``(x, y)``, in the given order.

        Every tile is decoded once whatever the order: the tiles each patch needs are
        counted first, and a tile leaves the cache as soon as the last patch that needs it
        has been read (raster order keeps the cache smallest)."""
        xs, ys = [int(v) for v in xs], [int(v) for v in ys]
        if self._one_tile_each(xs, ys):  # e.g. a grid of tile-sized patches
            yield from self._iter_tiles(xs, ys)
            return
        if self.tiles is not None:
            self._refs = Counter(t for x, y in zip(xs, ys, strict=True)
                                 for t in self._tiles_of(*self._level_box(x, y)))
        try:
            for x, y in zip(xs, ys, strict=True):
                yield self.read(x, y)
        finally:
            self._refs = None

    def _one_tile_each(self, xs: list[int], ys: list[int]) -> bool:
        """True when every patch is exactly one stored tile, no two the same."""
        if self.tiles is None or self.scale != 1.0 or self._grid != (self.spec.size,) * 2 \
                or not xs:
            return False
        tw, th = self._grid
        x0, y0, _, _ = level_boxes(xs, ys, self.downsample, 1.0, self.spec.size)
        if (x0 % tw).any() or (y0 % th).any() or (x0 < 0).any() or (y0 < 0).any():
            return False
        return len(np.unique(y0 * (1 << 32) + x0)) == len(xs)

    def _iter_tiles(self, xs: list[int], ys: list[int]) -> Iterator[np.ndarray]:
        """:meth:`iter_patches` when each patch is one tile: decoded and handed over,
        never cached (padded with white where the tile is cut by the level's edge)."""
        tw, th = self._grid
        for x, y in zip(xs, ys, strict=True):
            x0, y0, _, _ = level_box(x, y, self.downsample, 1.0, tw)
            if x0 >= self._level_size[0] or y0 >= self._level_size[1]:
                yield self.read(x, y)  # outside the level: read() says so
                continue
            tile = self._decode(x0 // tw, y0 // th, self._buffers)
            if tile.shape[:2] != (th, tw):
                out = np.full((th, tw, 3), 255, np.uint8)
                out[: tile.shape[0], : tile.shape[1]] = tile
                out.flags.writeable = False
                tile = out
            yield tile

    def _level_box(self, x: int, y: int) -> tuple[int, int, int, int]:
        """The patch's source box in pixels of the level read (same rounding as
        :meth:`Slide.read_region`; see :func:`~exaslide.patches.geometry.level_box`)."""
        return level_box(x, y, self.downsample, self.scale, self.spec.size)

    def _tiles_of(self, x0: int, y0: int, x1: int, y1: int) -> Iterator[tuple[int, int]]:
        return tiles_of(x0, y0, x1, y1, self._grid, self._level_size)

    def _assemble(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        tw, th = self._grid
        keys = list(self._tiles_of(x0, y0, x1, y1))
        if len(keys) == 1 and x0 % tw == 0 and y0 % th == 0 and \
                (x1 - x0, y1 - y0) == (tw, th):  # a patch that is exactly one tile
            tile = self._tile(*keys[0])
            if tile.shape[:2] == (th, tw):
                self._release(keys)
                return tile
        out = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
        for tx, ty in keys:
            tile = self._tile(tx, ty)
            sx0, sy0 = tx * tw, ty * th
            ax0, ay0 = max(x0, sx0), max(y0, sy0)
            ax1, ay1 = min(x1, sx0 + tile.shape[1]), min(y1, sy0 + tile.shape[0])
            out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = \
                tile[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0]
        self._release(keys)
        return out

    def _tile(self, tx: int, ty: int) -> np.ndarray:
        if self._refs is None and self.shared_cache is not None:
            return self.shared_cache.get_or_load(
                ("patch-reader", self.slide.path, self.level, tx, ty),
                lambda: self._decode(tx, ty))
        key = (tx, ty)
        tile = self._cache.get(key)
        if tile is None:
            tile = self._decode(tx, ty)
            self._cache.put(key, tile)
        return tile

    def _decode(self, tx: int, ty: int, buffers: _Buffers | None = None) -> np.ndarray:
        tile = None
        if self._jpeg is not None:
            tw, th = self._jpeg.tile_size
            tile = self._jpeg.decode(tx, ty, None if buffers is None else
                                     buffers.take((th, tw, 3)))
        if tile is None:
            tile = self.tiles.read_tile(self.level, tx, ty)
        tile.flags.writeable = False  # shared by the cache and the patches returned
        self.tile_decodes += 1
        return tile

    def _release(self, keys: list[tuple[int, int]]) -> None:
        """Drop tiles no later patch of the current :meth:`iter_patches` pass needs."""
        if self._refs is None:
            return
        for key in keys:
            self._refs[key] -= 1
            if self._refs[key] <= 0:
                self._cache.pop(key)

    def close(self) -> None:
        """Close the slide (and the tile source)."""
        if self.tiles is not None and self.tiles is not self.slide:
            self.tiles.close()
        self.slide.close()

    def __enter__(self) -> PatchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Buffers:
    """Decode buffers (see :func:`~exaslide.slides.jpeg_tiles.aligned_empty`) used again
    once nothing outside holds them: a buffer whose only reference is this ring's (the
    arrays handed out are views that keep it referenced) is free. Writing a tile into a
    buffer still in the cache is much faster than into new memory (~30 us of a 256-px
    tile here)."""

    FREE = 3  #: references of a free buffer: the ring, the loop variable, getrefcount's

    def __init__(self, size: int = 4):
        self.size = size
        self._ring: deque[np.ndarray] = deque()

    def take(self, shape: tuple[int, int, int]) -> np.ndarray:
        """A writable buffer of ``shape`` (contents undefined)."""
        nbytes = shape[0] * shape[1] * shape[2]
        for _ in range(len(self._ring)):
            raw = self._ring[0]
            self._ring.rotate(-1)
            if sys.getrefcount(raw) == self.FREE and raw.size == nbytes + 32:
                break
        else:
            raw = np.empty(nbytes + 32, np.uint8)
            self._ring.append(raw)
            if len(self._ring) > self.size:
                self._ring.popleft()  # its holder keeps it alive, and frees it later
        start = (DECODE_OFFSET - raw.__array_interface__["data"][0]) % 32
        return raw[start : start + nbytes].reshape(shape)


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
