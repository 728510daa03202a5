"""tifffile backend: pyramidal and flat TIFF, SVS, OME-TIFF and QPTIFF, decoded tile by tile.

Only the tiles (or strips) that intersect a region are read and decoded (``TiffPage.decode``,
i.e. imagecodecs), so memory is bounded by the region, not the level. Bytes come from a
byte source (:mod:`exaslide.storage.source`): ``os.pread`` on a local file, or byte ranges
of a remote file through the disk cache. Decoded segments go through the slide's
:class:`~exaslide.slides.tile_cache.TileCache` when it has one.

Channel mapping to RGB (documented in ``docs/formats.md``):

- RGB(A) images are returned as RGB (alpha composited on white, as in the other backends).
- Single-channel images are grey: 8-bit values are copied to R, G and B unchanged (so a
  label mask stored as 0/1/2 reads back as 0/1/2); other depths are scaled like one
  fluorescence channel below, but shown in grey.
- Several channels (multiplex fluorescence) are rendered as a composite: each channel is
  scaled linearly from its 0.1th to 99.9th percentile (measured once, on a subsample of
  at most 4 M pixels of the smallest level) to 0..1, tinted with its colour (the file's own
  colour when a QPTIFF names one, else blue, green, red, yellow, magenta, cyan, orange,
  white in channel order) and the tinted channels are added and clipped.
  Non-spatial axes other than channels (Z, T) are read at index 0.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping

import numpy as np

from exaslide.errors import SlideOpenError, SlideReadError, StorageError
from exaslide.slides.base import MAX_READ_PIXELS, MAX_SLIDE_SIDE, LazyImages, Slide
from exaslide.slides.pixels import stretch_to_uint8, to_rgb
from exaslide.slides.tile_cache import TileCache

logger = logging.getLogger(__name__)

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
ASSOCIATED_NAMES = ("thumbnail", "label", "macro", "overview")
PALETTE = np.array(
    [[0, 0, 255], [0, 255, 0], [255, 0, 0], [255, 255, 0], [255, 0, 255], [0, 255, 255],
     [255, 128, 0], [255, 255, 255]], dtype=np.float32,
) / 255.0
SCALING_SAMPLE_PIXELS = 4_000_000
SKIPPED_TAGS = ("StripOffsets", "StripByteCounts", "TileOffsets", "TileByteCounts",
                "JPEGTables")
#: Largest decoded size of one stored tile or strip: a file whose segments are larger is
#: refused at open (every read decodes whole segments, so this bounds a read's memory).
MAX_SEGMENT_BYTES = 1 << 30
#: Image directories checked by :func:`tiff_layout_problem` (the first ones; the levels of
#: the series read are always checked when the tifffile backend opens the file).
MAX_CHECKED_PAGES = 256


def is_tiff(path) -> bool:
    """True when the file starts with a TIFF or BigTIFF signature. ``path`` may also be a
    byte source (:mod:`exaslide.storage.source`), e.g. a remote file."""
    try:
        if hasattr(path, "pread"):
            return path.pread(4, 0) in TIFF_MAGIC
        with open(path, "rb") as fh:
            return fh.read(4) in TIFF_MAGIC
    except StorageError:
        raise  # a remote file that cannot be read is an error, not "not a TIFF"
    except OSError:
        return False


def tiff_structure_problem(path) -> str | None:
    """Walk the chain of image file directories (IFDs) of a TIFF / BigTIFF and describe the
    first problem (a directory beyond the end of the file, cut short, or a loop), or
    return ``None``. Catches truncated copies whose first levels are intact, which
    readers would otherwise open as a smaller pyramid. Hamamatsu NDPI files (tag 65420)
    are not checked: their 32-bit offsets wrap beyond 4 GB by design. ``path`` may also be
    a byte source (its ``size`` is the size the store reports)."""
    if hasattr(path, "pread"):
        return _ifd_chain_problem(path.pread, path.size)
    with open(path, "rb") as fh:
        fd = fh.fileno()
        return _ifd_chain_problem(lambda n, offset: os.pread(fd, n, offset),
                                  os.fstat(fd).st_size)


def _ifd_chain_problem(read_at, size: int) -> str | None:
    """:func:`tiff_structure_problem` over ``read_at(nbytes, offset)``."""
    import struct

    head = read_at(16, 0)
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    count_fmt, entry_size, offset_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    offset = struct.unpack(order + offset_fmt, head[8:16] if big else head[4:8])[0]
    count_size, next_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
    seen: set[int] = set()
    while offset:
        if offset in seen:
            return f"image directories form a loop at offset {offset}"
        seen.add(offset)
        where = f"image directory {len(seen)} at offset {offset}"
        if offset + count_size > size:
            return f"{where} lies beyond the end of the file ({size} bytes)"
        count = struct.unpack(order + count_fmt, read_at(count_size, offset))[0]
        end = offset + count_size + count * entry_size
        if end + next_size > size:
            return f"{where} is cut short by the end of the file ({size} bytes)"
        entries = read_at(count * entry_size, offset + count_size)
        if len(seen) == 1 and NDPI_TAG in _tags(entries, order, entry_size):
            return None
        offset = struct.unpack(order + offset_fmt, read_at(next_size, end))[0]
    return None


NDPI_TAG = 65420


def _tags(entries: bytes, order: str, entry_size: int) -> set[int]:
    """Tag numbers of the raw entries of one image file directory."""
    import struct

    return {struct.unpack(order + "H", entries[i : i + 2])[0]
            for i in range(0, len(entries) - 1, entry_size)}


def tiff_layout_problem(path) -> str | None:
    """Check what the image directories of a local TIFF claim before any reader sizes a
    buffer from it, and describe the first problem as ``"<kind>: <details>"`` (or return
    ``None``): a width or height beyond :data:`~exaslide.slides.base.MAX_SLIDE_SIDE`,
    tiles or strips larger than :data:`MAX_SEGMENT_BYTES` decoded, fewer stored tiles than
    the dimensions need, or tile data beyond the end of the file. Checks the first
    :data:`MAX_CHECKED_PAGES` directories (levels, label, macro...)."""
    import itertools

    import tifffile

    size = os.path.getsize(path)
    with tifffile.TiffFile(path) as tif:
        for i, page in enumerate(itertools.islice(tif.pages, MAX_CHECKED_PAGES)):
            problem = page_layout_problem(page, size, f"image {i}")
            if problem:
                return problem
    return None


def page_layout_problem(page, file_size: int, name: str) -> str | None:
    """:func:`tiff_layout_problem` for one page (or frame) named ``name`` in messages."""
    key = page.keyframe  # a TiffFrame's layout is its keyframe's; its offsets are its own
    width, length = int(key.imagewidth), int(key.imagelength)
    if width == 0 or length == 0:
        return None  # an empty directory: no pixels to read
    if width > MAX_SLIDE_SIDE or length > MAX_SLIDE_SIDE:
        return (f"implausible TIFF header: {name} claims {width}x{length} pixels, more than "
                f"{MAX_SLIDE_SIDE} a side; the file is damaged or forged, not a slide")
    kind = "tiles" if key.is_tiled else "strips"
    chunks = tuple(int(n) for n in key.chunks)
    nbytes = math.prod(chunks) * max(1, -(-int(key.bitspersample) // 8))
    if nbytes > MAX_SEGMENT_BYTES:
        return (f"unsupported TIFF layout: {name} stores its pixels in segments ({kind}) of "
                f"{'x'.join(map(str, chunks))} samples, {nbytes / 2**30:.1f} GiB each "
                f"decoded, more than the {MAX_SEGMENT_BYTES / 2**30:g} GiB exaslide "
                "decodes at once; re-save it as a tiled TIFF (e.g. 256 x 256 tiles)")
    needed, stored = math.prod(int(n) for n in key.chunked), len(page.dataoffsets)
    if stored < needed:
        return (f"truncated or damaged TIFF: {name} stores {stored} {kind} but its "
                f"{width}x{length} pixels need {needed}")
    offsets = np.asarray(page.dataoffsets, dtype=np.int64)
    ends = offsets + np.asarray(page.databytecounts, dtype=np.int64)
    if len(ends) and int(ends.max()) > file_size:
        return (f"truncated or damaged TIFF: {name} has {kind[:-1]} data past the end of "
                f"the file (byte {int(ends.max())} of {file_size})")
    return None


def prefers_tifffile(path) -> bool:
    """True for TIFFs that OpenSlide would open but misread: OME-TIFF and QPTIFF (pyramids
    in SubIFDs, channels as pages), and anything that is not 8-bit grey/RGB(A). ``path``
    may also be a seekable binary file."""
    import tifffile

    try:
        if hasattr(path, "seek"):
            path.seek(0)
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return bool(tif.is_ome or tif.is_qpi or page.subifds
                        or np.dtype(page.dtype) != np.uint8
                        or page.samplesperpixel not in (1, 3, 4))
    except StorageError:
        raise
    except Exception:
        return False


#: TIFF-based vendor formats whose pyramid OpenSlide assembles differently from tifffile's
#: series (tifffile flag names): a remote file of these kinds is copied whole and opened
#: like a local one, so that it reads the same as its local copy.
VENDOR_TIFF_FLAGS = ("ndpi", "scn", "philips", "bif")


def is_vendor_tiff(file) -> bool:
    """True for a TIFF of one of :data:`VENDOR_TIFF_FLAGS` (a path or seekable file)."""
    import tifffile

    try:
        if hasattr(file, "seek"):
            file.seek(0)
        with tifffile.TiffFile(file) as tif:
            return any(getattr(tif, f"is_{flag}", False) for flag in VENDOR_TIFF_FLAGS)
    except StorageError:
        raise
    except Exception:
        return False


class _Level:
    """The pages holding one pyramid level: one page (RGB/grey) or one page per channel."""

    def __init__(self, series):
        axes, shape = series.axes, series.shape
        self.width, self.height = shape[axes.index("X")], shape[axes.index("Y")]
        outer = [(a, n) for a, n in zip(axes, shape, strict=True) if a not in "YXS"]
        n_channels = next((n for a, n in outer if a == "C"), 1)
        pages = series.pages
        if len(pages) != math.prod(n for _, n in outer):
            raise SlideOpenError(f"unsupported TIFF layout: axes {axes}, {len(pages)} pages")
        strides = np.cumprod([1, *[n for _, n in outer][::-1]])[::-1][1:]
        c_pos = [a for a, _ in outer].index("C") if n_channels > 1 else None
        self.pages = [
            pages[int(c * strides[c_pos]) if c_pos is not None else 0]
            for c in range(n_channels)
        ]
        key = self.pages[0].keyframe
        self.samples = key.samplesperpixel
        self.dtype = np.dtype(key.dtype)
        self.miniswhite = key.photometric == 0


class TiffFileSlide(Slide):
    """A slide read with tifffile and imagecodecs."""

    backend = "tifffile"

    @staticmethod
    def can_open(path: str) -> bool:
        """True for TIFF / BigTIFF files (SVS, OME-TIFF, QPTIFF and generic TIFF included)."""
        return is_tiff(path)

    accepts_tile_cache = True

    def __init__(self, path: str, *, source=None, tile_cache: TileCache | None = None):
        """Open ``path`` (a local path or a remote URL); ``source`` is its byte source when
        the caller already opened one (the slide then owns and closes it)."""
        import tifffile

        from exaslide.storage.source import open_source

        super().__init__(path, tile_cache=tile_cache)
        self._tif = self._source = None
        try:
            self._source = source if source is not None else open_source(path)
            if self._source.remote:
                self._source.seek(0)
                self._tif = tifffile.TiffFile(self._source)
            else:
                self._tif = tifffile.TiffFile(self._source.path)
            self._series = self._main_series()
            self._levels = [_Level(s) for s in self._series.levels]
            _check_complete(self._levels, self._source.size)
            self._parse_metadata()
        except StorageError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            reason = str(exc) if isinstance(exc, SlideOpenError) else \
                f"tifffile cannot open it: {exc}"
            raise SlideOpenError(f"{path}: {reason}") from exc
        self._scaling: tuple[np.ndarray, np.ndarray] | None = None
        self._composite = len(self._levels[0].pages) * self._levels[0].samples > 4 or \
            len(self._levels[0].pages) > 1
        if self._composite:
            self._colors = self._channel_colors()
        try:  # decode one tile now, so unsupported compression fails at open, not later
            self._read_pixels(self.level_count - 1, 0, 0, 1, 1)
        except StorageError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise SlideOpenError(f"{path}: tifffile cannot decode its pixels: {exc}") from exc

    def _main_series(self):
        candidates = [s for s in self._tif.series
                      if (s.name or "").lower() not in ASSOCIATED_NAMES and "X" in s.axes]
        if not candidates:
            raise SlideOpenError("no image series found")
        return max(candidates, key=lambda s: s.shape[s.axes.index("X")])

    def _parse_metadata(self) -> None:
        tif, page = self._tif, self._series.pages[0]
        description = getattr(page, "description", "") or ""
        self._properties = {f"tiff.{t.name}": str(t.value)[:1000] for t in page.tags
                       if t.name not in SKIPPED_TAGS}
        self._properties["tifffile.series_axes"] = self._series.axes
        self._vendor = "generic-tiff"
        if tif.is_svs:
            self._vendor = "aperio"
            meta = _svs_metadata(description)
            self._properties.update({f"aperio.{k}": str(v) for k, v in meta.items()})
            mpp = _number(meta.get("MPP"))
            self._mpp = (mpp, mpp) if mpp else None
            self._objective_power = _number(meta.get("AppMag"))
        elif tif.is_qpi:
            self._vendor = "qptiff"
            size = re.search(r"<PixelSizeMicrons>([^<]+)<", description)
            power = re.search(r"<Objective>\s*([\d.]+)\s*x", description)
            mpp = _number(size.group(1)) if size else None
            self._mpp = (mpp, mpp) if mpp else None
            self._objective_power = _number(power.group(1)) if power else None
        elif tif.is_ome:
            self._vendor = "ome-tiff"
            self._mpp = _ome_mpp(tif.ome_metadata or "")
        if self._mpp is None:
            self._mpp = _resolution_mpp(page)

    # ------------------------------------------------------------------------ metadata
    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of every pyramid level of the main image series."""
        return tuple((lv.width, lv.height) for lv in self._levels)

    @property
    def associated_images(self) -> Mapping[str, np.ndarray]:
        """Series named Thumbnail, Label, Macro or Overview, as RGB arrays."""
        found = {(s.name or "").lower(): s for s in self._tif.series
                 if (s.name or "").lower() in ASSOCIATED_NAMES}
        return LazyImages(sorted(found), lambda n: self._associated(n, found[n]))

    def _associated(self, name: str, series) -> np.ndarray:
        """One associated image as RGB, refused when it claims more than
        :data:`~exaslide.slides.base.MAX_READ_PIXELS` pixels."""
        pixels = math.prod(int(n) for n, a in zip(series.shape, series.axes, strict=True)
                           if a in "YX")
        if pixels > MAX_READ_PIXELS:
            raise SlideReadError(f"{self.path}: the {name} image claims {pixels} pixels, too "
                                 f"many for one read (max {MAX_READ_PIXELS})")
        return to_rgb(series.asarray())

    # ------------------------------------------------------------------------- reading
    @property
    def byte_source(self):
        """The file's byte source (:mod:`exaslide.storage.source`): ``pread(count,
        offset)`` returns stored bytes, locally or through the remote block cache."""
        return self._source

    def stored_page(self, level: int):
        """The tifffile page (or frame) that holds ``level``, the one :meth:`read_tile`
        decodes; ``None`` for composite slides (channel planes) and for levels stored
        as several pages."""
        self.check_level(level)
        if self._composite:
            return None
        pages = self._levels[level].pages
        return pages[0] if len(pages) == 1 else None

    def tile_grid(self, level: int) -> tuple[int, int]:
        """``(width, height)`` of the stored segments (tiles, or full-width strips) of a
        level: reading a region aligned to this grid decodes each segment once."""
        self.check_level(level)
        return _segment_size(self._levels[level].pages[0].keyframe)

    def read_tile(self, level: int, tx: int, ty: int) -> np.ndarray:
        """The RGB pixels of stored tile ``(tx, ty)`` of a level, cropped at the level's
        edge (one segment decode; 8-bit RGB tiles are returned as decoded, without a
        copy)."""
        lv = self._levels[level]
        page = lv.pages[0].keyframe
        tw, th = self.tile_grid(level)
        x, y = tx * tw, ty * th
        w, h = min(tw, lv.width - x), min(th, lv.height - y)
        if self._composite or lv.samples != 3 or lv.dtype != np.uint8 or \
                page.planarconfig == 2 or not page.is_tiled:
            return self._read_pixels(level, x, y, w, h)
        index = ty * -(-lv.width // tw) + tx
        frame = lv.pages[0]
        if not frame.databytecounts[index]:
            return self._read_pixels(level, x, y, w, h)
        return self._segment(frame, index)[:h, :w]

    def _segment(self, frame, index: int) -> np.ndarray:
        """Decoded segment ``index`` (tile or strip) of a page or frame, as
        ``(rows, columns, samples)``, through the tile cache (read-only when cached)."""
        key = (self._source.token, frame.offset, index)
        cache = self.tile_cache
        if cache is not None:
            segment = cache.get(key)
            if segment is not None:
                return segment
        page = frame.keyframe
        data = self._source.pread(frame.databytecounts[index], frame.dataoffsets[index])
        segment = page.decode(data, index, jpegtables=getattr(page, "jpegtables", None))[0]
        segment = segment.reshape(segment.shape[-3:])
        if cache is not None:
            cache.put(key, segment)
        return segment

    def _prefetch(self, frame, indices: list[int]) -> None:
        """Fetch the bytes of the segments not yet decoded in one go (remote files)."""
        if not self._source.remote:
            return
        cache = self.tile_cache
        token = self._source.token
        self._source.prefetch(
            (frame.dataoffsets[i], frame.databytecounts[i]) for i in indices
            if frame.databytecounts[i] and (cache is None or (token, frame.offset, i)
                                            not in cache))

    def _read_page_region(self, frame, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Decode the segments (tiles or strips) of a page that cover a region.

        ``frame`` may be a ``TiffFrame`` (OME-TIFF planes): its layout comes from its
        keyframe. Planar-separate pages store each sample in its own run of segments.
        """
        page = frame.keyframe
        seg_w, seg_h = _segment_size(page)
        across = -(-page.imagewidth // seg_w)
        per_plane = across * -(-page.imagelength // seg_h)
        separate = page.planarconfig == 2 and page.samplesperpixel > 1
        samples = page.samplesperpixel
        wanted = [(tx, ty, s, ty * across + tx + s * per_plane)
                  for ty in range(y // seg_h, (y + height - 1) // seg_h + 1)
                  for tx in range(x // seg_w, (x + width - 1) // seg_w + 1)
                  for s in range(samples if separate else 1)]
        self._prefetch(frame, [i for *_, i in wanted])
        out = np.empty((height, width, samples), dtype=page.dtype)
        for tx, ty, s, i in wanted:
            sx0, sy0 = tx * seg_w, ty * seg_h
            ox0, oy0 = max(x, sx0), max(y, sy0)
            if frame.databytecounts[i]:
                segment = self._segment(frame, i)
            else:  # sparse segment: no data stored, TIFF says it is zero
                segment = np.zeros((seg_h, seg_w, 1 if separate else samples), page.dtype)
            ox1 = min(x + width, sx0 + segment.shape[1])
            oy1 = min(y + height, sy0 + segment.shape[0])
            channels = slice(s, s + 1) if separate else slice(None)
            out[oy0 - y : oy1 - y, ox0 - x : ox1 - x, channels] = \
                segment[oy0 - sy0 : oy1 - sy0, ox0 - sx0 : ox1 - sx0]
        return out

    def _planes(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """``(height, width, channels)`` raw samples of every channel page of a level."""
        lv = self._levels[level]
        planes = [self._read_page_region(p, x, y, width, height) for p in lv.pages]
        return planes[0] if len(planes) == 1 else np.concatenate(planes, axis=2)

    def _read_pixels(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        lv = self._levels[level]
        raw = self._planes(level, x, y, width, height)
        if self._composite:
            return self._tint(raw)
        if lv.samples == 1 and lv.dtype != np.uint8:
            lo, hi = self._channel_range()
            raw = stretch_to_uint8(raw, float(lo[0]), float(hi[0]))
        elif lv.dtype != np.uint8:
            raw = stretch_to_uint8(raw, 0.0, float(np.iinfo(lv.dtype).max)
                                   if lv.dtype.kind in "ui" else 1.0)
        if lv.miniswhite:
            raw = 255 - raw
        return to_rgb(raw)

    def _tint(self, stack: np.ndarray) -> np.ndarray:
        lo, hi = self._channel_range()
        norm = np.clip((stack.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
        rgb = norm @ self._colors[: norm.shape[2]]
        return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def _channel_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel 0.1th and 99.9th percentiles on a bounded subsample of the smallest
        level, read in blocks of about :data:`SCALING_SAMPLE_PIXELS` (computed once)."""
        if self._scaling is None:
            level = self.level_count - 1
            w, h = self.level_dimensions[level]
            step = max(1, math.ceil(math.sqrt(w * h / SCALING_SAMPLE_PIXELS)))
            rows = max(step, (SCALING_SAMPLE_PIXELS // max(w, 1)) // step * step)
            cols = max(step, (SCALING_SAMPLE_PIXELS // rows) // step * step)
            parts = [self._planes(level, x0, y0, min(cols, w - x0), min(rows, h - y0))
                     [::step, ::step] for y0 in range(0, h, rows) for x0 in range(0, w, cols)]
            flat = np.concatenate([p.reshape(-1, p.shape[2]) for p in parts])
            flat = flat.astype(np.float32)
            lo, hi = np.percentile(flat, 0.1, axis=0), np.percentile(flat, 99.9, axis=0)
            self._scaling = (lo, np.maximum(hi, lo + 1e-6))
        return self._scaling

    def _channel_colors(self) -> np.ndarray:
        colors = []
        for i, page in enumerate(self._levels[0].pages):
            text = getattr(page, "description", "") or ""
            match = re.search(r"<Color>\s*(\d+),\s*(\d+),\s*(\d+)\s*<", text)
            rgb = [int(v) / 255.0 for v in match.groups()] if match else None
            colors.append(rgb if rgb and any(rgb) else PALETTE[i % len(PALETTE)])
        n = len(colors) * self._levels[0].samples
        while len(colors) < n:
            colors.append(PALETTE[len(colors) % len(PALETTE)])
        return np.asarray(colors, dtype=np.float32)

    def close(self) -> None:
        """Close the file handles (and the byte source). Idempotent."""
        if getattr(self, "_tif", None) is not None:
            self._tif.close()
            self._tif = None
        if getattr(self, "_source", None) is not None:
            self._source.close()
            self._source = None


def _check_complete(levels: list[_Level], file_size: int) -> None:
    """Raise :class:`SlideOpenError` when a level's pages claim an implausible layout (see
    :func:`page_layout_problem`), e.g. stored tiles or strips beyond the end of the file (a
    truncated copy): tifffile would otherwise open what is left, e.g. a pyramid without its
    lower levels, and only log a warning."""
    for i, level in enumerate(levels):
        if level.width > MAX_SLIDE_SIDE or level.height > MAX_SLIDE_SIDE:
            raise SlideOpenError(
                f"implausible TIFF header: level {i} claims {level.width}x{level.height} "
                f"pixels, more than {MAX_SLIDE_SIDE} a side; the file is damaged or forged, "
                "not a slide")
        for page in level.pages:
            problem = page_layout_problem(page, file_size, f"level {i}")
            if problem:
                raise SlideOpenError(problem)


def _segment_size(page) -> tuple[int, int]:
    """``(width, height)`` of a page's segments: its tiles, or full-width strips."""
    if page.is_tiled:
        return page.tilewidth, page.tilelength
    return page.imagewidth, min(page.rowsperstrip or page.imagelength, page.imagelength)


def _number(value) -> float | None:
    """A positive finite float from metadata, or ``None`` for missing / malformed values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _svs_metadata(description: str) -> dict:
    """Aperio ImageDescription key-value pairs (tifffile's parser, tolerant of odd files)."""
    import tifffile

    try:
        return tifffile.tifffile.svs_description_metadata(description)
    except Exception:
        return {}


def _ome_mpp(ome_xml: str) -> tuple[float, float] | None:
    sizes = {}
    units = {"nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
    for axis in ("X", "Y"):
        value = re.search(rf'PhysicalSize{axis}="([^"]+)"', ome_xml)
        unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', ome_xml)
        number = _number(value.group(1)) if value else None
        if number is None:
            return None
        sizes[axis] = number * units.get(unit.group(1) if unit else "", 1.0)
    return sizes["X"], sizes["Y"]


def _resolution_mpp(page) -> tuple[float, float] | None:
    """Microns per pixel from the TIFF resolution tags (centimetre or inch units only)."""
    try:
        unit = int(page.resolutionunit)
        xres, yres = page.resolution
    except Exception:
        return None
    per_unit = {2: 25400.0, 3: 10000.0}.get(unit)
    if not per_unit or not _number(xres) or not _number(yres):
        return None
    return per_unit / xres, per_unit / yres
