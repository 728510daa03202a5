"""Forged slide files for the reliability catalogue: headers that lie about their size.

Tests under ``tests/reliability/`` import these directly (pytest puts this folder on
``sys.path``)::

    from forge import forge_huge_tiff, forge_tiles_past_eof

Each function writes a small valid pyramidal TIFF with tifffile (8-bit RGB, 256 x 256
tiles, uncompressed; level 0 of 1024 x 1024 pixels, then a 512 x 512 reduced page, so
OpenSlide and tifffile both open the unpatched file as a 2-level slide) and then patches
tags of its first image directory (level 0) in place:

- :func:`forge_huge_tiff`: ImageWidth / ImageLength claim ``side x side`` pixels
  (default ``2**31``), with the original small tile table: a few hundred bytes that a
  reader sizing its buffers from the header would turn into exabytes.
- :func:`forge_huge_tiles`: true dimensions, but TileWidth / TileLength claim 65536 x
  65536 pixels (12 GiB to decode one tile).
- :func:`forge_tiles_past_eof`: true dimensions, but one level-0 tile offset points past
  the end of the file (a lying tile table, not a truncated copy: the directory chain is
  intact, and OpenSlide, which checks only the smallest level's tiles, opens it).
- :func:`forge_tile_count_mismatch`: plausible dimensions (40,000 pixels a side) far larger
  than the tile table covers (16 tiles stored, 24,649 needed).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

TAG_IMAGE_WIDTH, TAG_IMAGE_LENGTH = 256, 257
TAG_TILE_WIDTH, TAG_TILE_LENGTH, TAG_TILE_OFFSETS = 322, 323, 324
LONG, SHORT = 4, 3


def write_small_tiff(path: str | Path, size: int = 1024) -> Path:
    """A valid 2-level tiled RGB TIFF (``size`` and ``size // 2`` pixels a side, 256 x 256
    tiles, uncompressed, little-endian classic TIFF, 0.5 um/px). Returns ``path``."""
    import tifffile

    path = Path(path)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path, bigtiff=False, byteorder="<") as tif:
        for level, image in enumerate((data, data[::2, ::2])):
            tif.write(image, tile=(256, 256), photometric="rgb", subfiletype=1 if level else 0,
                      resolution=(2e4 / 2**level, 2e4 / 2**level),
                      resolutionunit="CENTIMETER", metadata=None)
    return path


def _entries(buf: bytes) -> dict[int, tuple[int, int, int, int]]:
    """``{tag: (entry offset, type, count, value or offset)}`` of the first IFD of a
    little-endian classic TIFF."""
    assert buf[:4] == b"II*\x00", "forge works on little-endian classic TIFF only"
    ifd = struct.unpack_from("<I", buf, 4)[0]
    count = struct.unpack_from("<H", buf, ifd)[0]
    found = {}
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, kind, n, value = struct.unpack_from("<HHII", buf, at)
        found[tag] = (at, kind, n, value)
    return found


def _set_long(buf: bytearray, entries: dict, tag: int, value: int) -> None:
    """Rewrite a one-value SHORT/LONG entry in place as a LONG holding ``value``."""
    at, _kind, n, _old = entries[tag]
    assert n == 1, f"tag {tag} has {n} values"
    struct.pack_into("<HHII", buf, at, tag, LONG, 1, value)


def forge_huge_tiff(path: str | Path, side: int = 2**31) -> Path:
    """Write a TIFF at ``path`` whose header claims ``side x side`` pixels (a few hundred
    kilobytes on disk). Returns ``path``."""
    path = write_small_tiff(path)
    buf = bytearray(path.read_bytes())
    entries = _entries(bytes(buf))
    _set_long(buf, entries, TAG_IMAGE_WIDTH, side)
    _set_long(buf, entries, TAG_IMAGE_LENGTH, side)
    path.write_bytes(bytes(buf))
    return path


def forge_huge_tiles(path: str | Path, tile: int = 65536) -> Path:
    """Write a true 1024 x 1024 TIFF whose level-0 tiles claim ``tile x tile`` pixels.
    Returns ``path``."""
    path = write_small_tiff(path)
    buf = bytearray(path.read_bytes())
    entries = _entries(bytes(buf))
    _set_long(buf, entries, TAG_TILE_WIDTH, tile)
    _set_long(buf, entries, TAG_TILE_LENGTH, tile)
    path.write_bytes(bytes(buf))
    return path


def forge_tiles_past_eof(path: str | Path, beyond: int = 1 << 30) -> Path:
    """Write a true 1024 x 1024 TIFF whose last level-0 tile offset points ``beyond`` bytes past
    the end of the file (the image directories themselves are intact). Returns ``path``."""
    path = write_small_tiff(path)
    buf = bytearray(path.read_bytes())
    _at, kind, n, where = _entries(bytes(buf))[TAG_TILE_OFFSETS]
    assert kind == LONG and n > 1, "expected an out-of-line LONG tile offset array"
    struct.pack_into("<I", buf, where + 4 * (n - 1), len(buf) + beyond)
    path.write_bytes(bytes(buf))
    return path


def forge_tile_count_mismatch(path: str | Path, side: int = 40_000) -> Path:
    """Write a TIFF whose header claims ``side x side`` pixels (plausible) but whose tile
    table holds the 16 tiles of a 1024 x 1024 image. Returns ``path``."""
    return forge_huge_tiff(path, side=side)
