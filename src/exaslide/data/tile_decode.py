"""Decoding stored JPEG tiles into recycled buffers: the loaders' hot path.

Two facts measured on the project's 2-core machine (``bench/loader.py`` prints them again)
make a tile decode cost about half when the output buffer is chosen with care:

- a fresh 192 KiB array per tile costs page faults and an allocator round trip;
- libjpeg-turbo writes rows whose address is 32-byte aligned with non-temporal (cache
  bypassing) stores, which ran about 2x slower there than ordinary stores, and left the
  tile out of the cache for the copy that follows.

:class:`TileBuffers` hands out buffers whose address is 16 bytes past a 32-byte boundary
and takes them back when the tile cache lets go of a tile; :class:`JpegTiles` decodes a
level's stored tiles into such buffers with exactly the colour handling of tifffile (the
pixels are those of :meth:`TiffFileSlide.read_tile <exaslide.slides.tifffile_backend.
TiffFileSlide.read_tile>`, tested). Levels that are not 8-bit, 3-sample, chunky JPEG tiles
are decoded by ``read_tile`` itself.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

TIFF_JPEG = 7  #: TIFF Compression tag value of "new-style" JPEG
#: Where a decode buffer starts relative to a 32-byte boundary (see the module doc).
BUFFER_OFFSET = 16


class TileBuffers:
    """A free list of decode buffers, recycled instead of freed.

    New buffers are cut from arenas of at least 4 MiB: NumPy asks the kernel for
    transparent huge pages for arrays that large, so first touching an arena costs a few
    faults instead of one per 4 KiB page (page faults cost more than the decode itself on
    a virtual machine).

    Args:
        keep_bytes: the most bytes of free buffers kept (the rest are released); the
            tile cache's limit is right, as free buffers are tiles it let go of.
    """

    ARENA_BYTES = 6 << 20

    def __init__(self, keep_bytes: int = 64 << 20):
        self.keep_bytes = keep_bytes
        self.free_bytes = 0
        self._free: dict[int, list[np.ndarray]] = {}
        self._owned: dict[int, np.ndarray] = {}  # address -> buffer, handed out
        self.allocated = 0

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """A writable ``uint8`` buffer of ``shape`` (contents undefined)."""
        nbytes = int(np.prod(shape))
        free = self._free.get(nbytes)
        if not free:
            free = self._free.setdefault(nbytes, [])
            free.extend(self._arena(nbytes))
            self.free_bytes += len(free) * nbytes
        flat = free.pop()
        self.free_bytes -= nbytes
        self._owned[flat.ctypes.data] = flat
        return flat.reshape(shape)

    def _arena(self, nbytes: int) -> list[np.ndarray]:
        """Fresh buffers of ``nbytes``, each 16 bytes past a 32-byte boundary."""
        stride = -(-nbytes // 64) * 64
        count = max(1, min(self.ARENA_BYTES, self.keep_bytes) // stride)
        raw = np.empty(count * stride + 64, np.uint8)
        start = (BUFFER_OFFSET - raw.ctypes.data) % 32
        self.allocated += count
        return [raw[start + i * stride : start + i * stride + nbytes] for i in range(count)]

    def give(self, array: np.ndarray) -> None:
        """Take back a buffer from :meth:`take` (or a view of it that starts where it
        starts); other arrays are ignored. The caller must hold no other view of it."""
        flat = self._owned.pop(array.ctypes.data, None)
        if flat is None:
            return
        if self.free_bytes + flat.nbytes <= self.keep_bytes:
            self._free.setdefault(flat.nbytes, []).append(flat)
            self.free_bytes += flat.nbytes

    def clear(self) -> None:
        """Release the free buffers."""
        self._free.clear()
        self.free_bytes = 0


class JpegTiles:
    """The stored JPEG tiles of one level of a :class:`TiffFileSlide`, decoded into given
    buffers. Build with :meth:`of`, which returns ``None`` for levels it cannot decode
    this way."""

    def __init__(self, tiles, level: int, page):
        from tifffile.tifffile import jpeg_decode_colorspace

        key = page.keyframe
        self.tiles, self.level = tiles, level
        self.tile_size = (int(key.tilewidth), int(key.tilelength))
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.counts = np.asarray(page.databytecounts, dtype=np.int64)
        self.across = -(-int(key.imagewidth) // self.tile_size[0])
        self.tables = getattr(key, "jpegtables", None)
        self.colorspace, self.outcolorspace = jpeg_decode_colorspace(
            key.photometric, key.planarconfig, key.extrasamples, key.is_jfif)
        self._pread = tiles._source.pread  # the slide's byte source

    @classmethod
    def of(cls, tiles, level: int) -> JpegTiles | None:
        """A decoder for ``level`` of ``tiles`` (a ``TiffFileSlide``), or ``None`` when
        the level is not stored as 8-bit RGB/YCbCr chunky JPEG tiles in one page."""
        from exaslide.slides.tifffile_backend import TiffFileSlide

        if not isinstance(tiles, TiffFileSlide) or getattr(tiles, "_composite", True):
            return None
        pages = tiles._levels[level].pages  # the levels read_tile decodes
        if len(pages) != 1:
            return None
        page = pages[0]
        key = page.keyframe
        if not (key.compression == TIFF_JPEG and key.is_tiled and key.samplesperpixel == 3
                and key.bitspersample == 8 and key.planarconfig == 1
                and not key.extrasamples and int(key.photometric) in (2, 6)
                and np.dtype(key.dtype) == np.uint8):
            return None
        try:
            return cls(tiles, level, page)
        except Exception as exc:  # e.g. an unexpected tag layout: read_tile decodes
            logger.debug("%s level %d: no direct JPEG decode: %s", tiles.path, level, exc)
            return None

    def decode_into(self, tx: int, ty: int, out: np.ndarray) -> bool:
        """Decode stored tile ``(tx, ty)`` into ``out`` (``tile_height x tile_width x 3``);
        False when the tile has no stored bytes or does not decode to that shape (the
        caller then uses ``read_tile``, which paints sparse tiles and names errors)."""
        index = ty * self.across + tx
        if index >= len(self.counts) or not self.counts[index]:
            return False
        import imagecodecs

        data = self._pread(int(self.counts[index]), int(self.offsets[index]))
        try:
            imagecodecs.jpeg_decode(data, tables=self.tables, colorspace=self.colorspace,
                                    outcolorspace=self.outcolorspace, out=out)
        except Exception as exc:  # damaged or odd tile: read_tile reports it properly
            logger.debug("%s level %d tile (%d, %d): direct decode failed: %s",
                         self.tiles.path, self.level, tx, ty, exc)
            return False
        return True
