"""Direct access to the stored JPEG tiles of a tifffile-read slide (no torch).

Every fast path of exaslide starts from the same bytes: the extraction reader and the
data loaders decode stored tiles straight into buffers they choose, and the compressed
batch path ships the tiles' JPEG streams to a batched (GPU) decoder. :class:`JpegTiles`
is that one view of a level: its tile geometry, its stored bytes and a decode into a
given buffer with exactly tifffile's colour handling (the pixels are those of
:meth:`TiffFileSlide.read_tile <exaslide.slides.tifffile_backend.TiffFileSlide.read_tile>`,
tested). :func:`jpeg_tiles` returns ``None`` for levels that are not one page of 8-bit,
3-sample, chunky RGB/YCbCr JPEG tiles: their callers use ``read_tile``, which decodes
every format tifffile knows.

Decode buffers start :data:`DECODE_OFFSET` bytes past a 32-byte boundary
(:func:`aligned_empty`): libjpeg-turbo writes rows whose address is 32-byte aligned with
non-temporal (cache-bypassing) stores, which made a tile decode about 1.6-2x slower on
the project's machines and left the tile out of the CPU cache for the copy or the JPEG
encode that reads it next (``bench/extract.py`` and ``bench/loader.py`` measure both).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

TIFF_JPEG = 7  #: the TIFF Compression value of (new-style) JPEG
PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR = 2, 6
#: Where a decode buffer starts relative to a 32-byte boundary (see the module doc).
DECODE_OFFSET = 16


def aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised ``uint8`` array of ``shape`` that starts :data:`DECODE_OFFSET`
    bytes past a 32-byte boundary."""
    nbytes = int(np.prod(shape))
    raw = np.empty(nbytes + 32, np.uint8)
    start = (DECODE_OFFSET - raw.ctypes.data) % 32
    return raw[start : start + nbytes].reshape(shape)


class JpegTiles:
    """The stored JPEG tiles of one pyramid level. Build with :func:`jpeg_tiles`.

    Attributes:
        tile_size: ``(width, height)`` of the stored tiles.
        level_size: ``(width, height)`` of the level.
        grid: ``(columns, rows)`` of tiles.
        tables: the TIFF's shared JPEG tables (``JPEGTables``), or ``None``.
        photometric: 2 (RGB) or 6 (YCbCr), as the TIFF says.
    """

    def __init__(self, slide, level: int, page):
        from tifffile.tifffile import jpeg_decode_colorspace

        key = page.keyframe
        self.slide, self.level = slide, level
        self.name = f"{slide.path} level {level}"
        self.tile_size = (int(key.tilewidth), int(key.tilelength))
        self.level_size = tuple(slide.level_dimensions[level])
        self.grid = (-(-self.level_size[0] // self.tile_size[0]),
                     -(-self.level_size[1] // self.tile_size[1]))
        self.photometric = int(key.photometric)
        self.tables = getattr(key, "jpegtables", None)
        self.colorspace, self.outcolorspace = jpeg_decode_colorspace(
            key.photometric, key.planarconfig, key.extrasamples, key.is_jfif)
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.counts = np.asarray(page.databytecounts, dtype=np.int64)
        self._pread = slide.byte_source.pread

    def index(self, tx: int, ty: int) -> int:
        """The stored-tile index of tile column ``tx``, row ``ty``."""
        return ty * self.grid[0] + tx

    def stored(self, tx: int, ty: int) -> bool:
        """False for a tile outside the grid or without stored bytes (a sparse tile,
        which ``read_tile`` paints)."""
        if not (0 <= tx < self.grid[0] and 0 <= ty < self.grid[1]):
            return False
        return bool(self.counts[self.index(tx, ty)])

    def raw(self, tx: int, ty: int) -> bytes:
        """The stored bytes of tile ``(tx, ty)`` (an abbreviated JPEG stream when the
        TIFF has shared tables). The tile must be :meth:`stored`."""
        i = self.index(tx, ty)
        return self._pread(int(self.counts[i]), int(self.offsets[i]))

    def decode_into(self, tx: int, ty: int, out: np.ndarray) -> bool:
        """Decode tile ``(tx, ty)`` into ``out`` (``tile height x tile width x 3``,
        uint8); False when it has no stored bytes or does not decode to that shape
        (the caller then uses ``read_tile``, which paints sparse tiles and names
        errors)."""
        if not self.stored(tx, ty):
            return False
        import imagecodecs

        try:
            imagecodecs.jpeg_decode(self.raw(tx, ty), tables=self.tables,
                                    colorspace=self.colorspace,
                                    outcolorspace=self.outcolorspace, out=out)
        except Exception as exc:  # damaged or odd tile: read_tile reports it properly
            logger.debug("%s tile (%d, %d): direct decode failed: %s", self.name, tx, ty,
                         exc)
            return False
        return True

    def decode(self, tx: int, ty: int, out: np.ndarray | None = None) -> np.ndarray | None:
        """Tile ``(tx, ty)`` cropped at the level's edge, decoded into ``out`` (a full
        tile) or into a fresh :func:`aligned_empty` buffer; ``None`` as for
        :meth:`decode_into`."""
        (tw, th), (w, h) = self.tile_size, self.level_size
        out = aligned_empty((th, tw, 3)) if out is None else out
        if not self.decode_into(tx, ty, out):
            return None
        return out[: min(th, h - ty * th), : min(tw, w - tx * tw)]


def jpeg_tiles(slide, level: int, cls: type[JpegTiles] = JpegTiles) -> JpegTiles | None:
    """A :class:`JpegTiles` (or ``cls``) for ``level`` of ``slide``, or ``None`` unless
    ``slide`` is a :class:`~exaslide.slides.tifffile_backend.TiffFileSlide` whose level is
    one page of 8-bit, 3-sample, chunky RGB/YCbCr JPEG tiles with every tile's offset."""
    from exaslide.slides.tifffile_backend import TiffFileSlide

    if not isinstance(slide, TiffFileSlide):
        return None
    try:
        page = slide.stored_page(level)
        if page is None:
            return None
        key = page.keyframe
        if not (key.compression == TIFF_JPEG and key.is_tiled and key.samplesperpixel == 3
                and key.bitspersample == 8 and key.planarconfig == 1
                and not key.extrasamples
                and int(key.photometric) in (PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR)
                and np.dtype(key.dtype) == np.uint8):
            return None
        tiles = cls(slide, level, page)
    except Exception as exc:  # an unexpected tag layout: read_tile decodes
        logger.debug("%s level %d: no direct JPEG access: %s", slide.path, level, exc)
        return None
    if len(tiles.offsets) < tiles.grid[0] * tiles.grid[1] or \
            len(tiles.counts) < tiles.grid[0] * tiles.grid[1]:
        return None
    return tiles
