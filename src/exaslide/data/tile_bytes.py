"""Standalone JPEG streams of the stored tiles of JPEG-tiled TIFF slides (no decoding).

A JPEG-compressed TIFF (SVS, generic pyramidal TIFF) stores each tile as an *abbreviated*
JPEG stream: the quantisation and Huffman tables may live once in the ``JPEGTables`` tag,
and the colour space is decided by the TIFF's ``Photometric`` tag, not by the stream.
A decoder that only sees the tile's bytes (nvJPEG on a GPU, or any plain JPEG decoder)
therefore needs a stream that stands alone. :func:`standalone_jpeg` makes one:

- the tables of ``JPEGTables`` are spliced in after the start-of-image marker;
- the colour space is made explicit, exactly as the TIFF reader (tifffile +
  libjpeg-turbo, i.e. :class:`~exaslide.patches.reader.PatchReader`) decodes it:
  ``Photometric=RGB`` without a JFIF marker (Aperio SVS) stores R, G, B unconverted, so the
  JFIF marker is dropped and an Adobe APP14 marker with transform 0 ("no colour
  transform") is inserted; a YCbCr stream without a JFIF marker gets an Adobe marker with
  transform 1 (the decoder then converts YCbCr to RGB whatever its component ids say).

:class:`JpegLevel` gives the stored tiles of one pyramid level of an open
:class:`~exaslide.slides.tifffile_backend.TiffFileSlide` as such streams, reading only the
compressed bytes (``os.pread`` on a local file, byte ranges of a remote one).
:func:`jpeg_level` returns ``None`` for levels that are not 8-bit RGB JPEG tiles (JPEG
2000, LZW, deflate, strips, planar or multi-channel images...): those are read through
the CPU reader instead.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from exaslide.errors import SlideReadError
from exaslide.slides.jpeg_tiles import PHOTOMETRIC_RGB, JpegTiles, jpeg_tiles

logger = logging.getLogger(__name__)

SOI, EOI, SOS = b"\xff\xd8", b"\xff\xd9", 0xDA
APP0, APP14 = 0xE0, 0xEE
#: Start-of-frame markers (baseline, extended, progressive, lossless; not DHT/JPG/DAC).
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers that stand alone, without a length field.
BARE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])


def adobe_marker(transform: int) -> bytes:
    """An Adobe APP14 segment (version 100, no flags) with colour ``transform`` (0: RGB or
    CMYK, unconverted; 1: YCbCr)."""
    return b"\xff\xee\x00\x0eAdobe" + struct.pack(">HHHB", 100, 0, 0, transform)


class TileDecodeError(SlideReadError):
    """A stored JPEG tile that is damaged: its markers cannot be parsed or it does not
    decode. The message names the slide, the level and the tile."""


@dataclass(frozen=True)
class JpegHeader:
    """What :func:`parse_jpeg` found before the scan data of a JPEG stream."""

    segments: list[tuple[int, bytes]]  #: (marker, whole segment bytes) before SOS
    scan_start: int  #: offset of the SOS marker
    jfif: bool
    adobe_transform: int | None
    component_ids: tuple[int, ...]


def parse_jpeg(data: bytes) -> JpegHeader:
    """Split a JPEG stream's header into marker segments, up to the first scan.

    Raises:
        ValueError: the stream does not start with SOI, a segment runs past the end, or
            there is no scan.
    """
    if data[:2] != SOI:
        raise ValueError("not a JPEG stream (no start-of-image marker)")
    segments, pos, size = [], 2, len(data)
    jfif, adobe, ids = False, None, ()
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            raise ValueError(f"expected a marker at byte {pos}, found 0x{data[pos]:02x}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in BARE_MARKERS:
            segments.append((marker, data[pos : pos + 2]))
            pos += 2
            continue
        if marker == SOS:
            return JpegHeader(segments, pos, jfif, adobe, ids)
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > size:
            raise ValueError(f"marker 0x{marker:02x} at byte {pos} claims {length} bytes, "
                             f"past the end of the {size}-byte stream")
        body = data[pos + 4 : end]
        if marker == APP0 and body[:5] == b"JFIF\x00":
            jfif = True
        elif marker == APP14 and body[:5] == b"Adobe" and len(body) >= 12:
            adobe = body[11]
        elif marker in SOF_MARKERS and len(body) >= 6:
            count = body[5]
            ids = tuple(body[6 + 3 * i] for i in range(count) if 6 + 3 * i < len(body))
        segments.append((marker, data[pos:end]))
        pos = end
    raise ValueError("no scan (start-of-scan marker) in the stream")


def _table_segments(tables: bytes | None) -> bytes:
    """The marker segments of a TIFF ``JPEGTables`` value (an abbreviated stream: SOI,
    tables, EOI), without its SOI and EOI."""
    if not tables:
        return b""
    body = tables[2:] if tables[:2] == SOI else tables
    return body[:-2] if body[-2:] == EOI else body


def libjpeg_colour(header: JpegHeader, photometric: int) -> str:
    """``"rgb"`` or ``"ycbcr"``: how the TIFF reader decodes a 3-component tile.

    tifffile asks libjpeg for no colour conversion when ``Photometric`` is RGB and the
    stream has no JFIF marker (Aperio); otherwise libjpeg decides: JFIF -> YCbCr, Adobe
    transform 0 -> RGB, else component ids ``R, G, B`` -> RGB, anything else -> YCbCr.
    """
    if photometric == PHOTOMETRIC_RGB and not header.jfif:
        return "rgb"
    if header.jfif:
        return "ycbcr"
    if header.adobe_transform is not None:
        return "rgb" if header.adobe_transform == 0 else "ycbcr"
    return "rgb" if header.component_ids[:3] == (82, 71, 66) else "ycbcr"


def standalone_jpeg(tile: bytes, tables: bytes | None, photometric: int) -> bytes:
    """A complete JPEG stream for one stored tile (see the module docstring).

    Args:
        tile: the tile's stored bytes.
        tables: the page's ``JPEGTables`` value, or ``None``.
        photometric: the page's ``Photometric`` tag (2 RGB, 6 YCbCr).

    Raises:
        ValueError: the tile's markers cannot be parsed.
    """
    return standalone_jpeg_colour(tile, tables, photometric)[0]


def standalone_jpeg_colour(tile: bytes, tables: bytes | None,
                           photometric: int) -> tuple[bytes, str]:
    """:func:`standalone_jpeg` and the colour space it codes: ``"rgb"`` or ``"ycbcr"``."""
    header = parse_jpeg(tile)
    colour = libjpeg_colour(header, photometric)
    if colour == "ycbcr" and header.jfif and not tables:
        return tile, colour  # already complete and explicit
    kept = [seg for marker, seg in header.segments
            if not (marker == APP14 and seg[4:9] == b"Adobe")
            and not (marker == APP0 and seg[4:9] == b"JFIF\x00")]
    if colour == "ycbcr" and header.jfif:
        explicit = next(seg for marker, seg in header.segments
                        if marker == APP0 and seg[4:9] == b"JFIF\x00")
    else:
        explicit = adobe_marker(0 if colour == "rgb" else 1)
    return b"".join([SOI, explicit, _table_segments(tables), *kept,
                     tile[header.scan_start:]]), colour


class JpegLevel(JpegTiles):
    """:class:`~exaslide.slides.jpeg_tiles.JpegTiles` that also gives each tile as a
    standalone JPEG stream (the compressed batch path ships these)."""

    def stream(self, tx: int, ty: int) -> tuple[bytes, str]:
        """The standalone JPEG stream of tile ``(tx, ty)`` and its colour space
        (``"rgb"`` or ``"ycbcr"``, see :func:`standalone_jpeg_colour`).

        Raises:
            TileDecodeError: the stored bytes are not a parseable JPEG stream.
        """
        try:
            return standalone_jpeg_colour(self.raw(tx, ty), self.tables, self.photometric)
        except ValueError as exc:
            raise TileDecodeError(f"{self.name}: stored tile ({tx}, {ty}) is a damaged "
                                  f"JPEG stream: {exc}") from exc


def jpeg_level(slide, level: int) -> JpegLevel | None:
    """A :class:`JpegLevel` for ``level`` of ``slide``, or ``None`` when the level is not
    stored as 8-bit, 3-sample, chunky, tiled JPEG (its patches then come from the CPU
    reader); see :func:`~exaslide.slides.jpeg_tiles.jpeg_tiles`."""
    return jpeg_tiles(slide, level, cls=JpegLevel)


def is_jpeg_tiled(path, backend: str | None = None) -> bool:
    """True when level 0 of the slide at ``path`` is stored as JPEG tiles that
    :class:`JpegLevel` can ship (opens the file; ``False`` when it cannot be opened with
    tifffile)."""
    from exaslide.slides.tifffile_backend import TiffFileSlide, is_tiff

    if backend not in (None, "tifffile") or not is_tiff(path):
        return False
    try:
        slide = TiffFileSlide(str(path))
    except Exception as exc:  # not readable by tifffile: the CPU reader decides
        logger.debug("%s: not readable with tifffile: %s", path, exc)
        return False
    try:
        return jpeg_level(slide, 0) is not None
    finally:
        slide.close()
