"""Recycled tile decode buffers: the loaders' hot path.

Two facts measured on the project's 2-core machine (``bench/loader.py`` prints them again)
make a tile decode cost about half when the output buffer is chosen with care:

- a fresh 192 KiB array per tile costs page faults and an allocator round trip;
- libjpeg-turbo writes rows whose address is 32-byte aligned with non-temporal (cache
  bypassing) stores, which ran about 2x slower there than ordinary stores, and left the
  tile out of the cache for the copy that follows.

:class:`TileBuffers` hands out buffers whose address is 16 bytes past a 32-byte boundary
and takes them back when the tile cache lets go of a tile;
:class:`~exaslide.slides.jpeg_tiles.JpegTiles` decodes stored tiles into them.
"""

from __future__ import annotations

import numpy as np

from exaslide.slides.jpeg_tiles import DECODE_OFFSET


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
        start = (DECODE_OFFSET - raw.ctypes.data) % 32
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
