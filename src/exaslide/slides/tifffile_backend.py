"""tifffile backend: pyramidal and flat TIFF, SVS, OME-TIFF and QPTIFF, decoded tile by tile.

Only the tiles (or strips) that intersect a region are read (``os.pread``) and decoded
(``TiffPage.decode``, i.e. imagecodecs), so memory is bounded by the region, not the level.

Channel mapping to RGB (documented in ``docs/formats.md``):

- 8-bit RGB(A) images are returned as RGB (alpha dropped).
- 8-bit single-channel images are grey: the value is copied to R, G and B (so a label mask
  stored as 0/1/2 reads back as 0/1/2).
- Anything else (several channels, e.g. multiplex fluorescence, or more than 8 bits) is
  rendered as a fluorescence composite: each channel is scaled linearly from its 0.1th to
  99.9th percentile (measured once, on the smallest level) to 0..1, tinted with its colour
  (the file's own colour when a QPTIFF names one, else blue, green, red, yellow, magenta,
  cyan, orange, white in channel order) and the tinted channels are added and clipped.
  Non-spatial axes other than channels (Z, T) are read at index 0.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping

import numpy as np

from exaslide.errors import SlideOpenError
from exaslide.slides.base import LazyImages, Slide

logger = logging.getLogger(__name__)

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
ASSOCIATED_NAMES = ("thumbnail", "label", "macro", "overview")
PALETTE = np.array(
    [[0, 0, 255], [0, 255, 0], [255, 0, 0], [255, 255, 0], [255, 0, 255], [0, 255, 255],
     [255, 128, 0], [255, 255, 255]], dtype=np.float32,
) / 255.0


def is_tiff(path: str) -> bool:
    """True when the file starts with a TIFF or BigTIFF signature."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in TIFF_MAGIC
    except OSError:
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
        self.samples = self.pages[0].keyframe.samplesperpixel
        self.dtype = np.dtype(self.pages[0].keyframe.dtype)


class TiffFileSlide(Slide):
    """A slide read with tifffile and imagecodecs."""

    backend = "tifffile"

    @staticmethod
    def can_open(path: str) -> bool:
        """True for TIFF / BigTIFF files (SVS, OME-TIFF, QPTIFF and generic TIFF included)."""
        return is_tiff(path)

    def __init__(self, path: str):
        import tifffile

        super().__init__(path)
        try:
            self._tif = tifffile.TiffFile(path)
            series = self._main_series()
            self._levels = [_Level(s) for s in series.levels]
            self._fd = os.open(path, os.O_RDONLY)
        except SlideOpenError as exc:
            raise SlideOpenError(f"{path}: {exc}") from exc
        except Exception as exc:
            raise SlideOpenError(f"{path}: tifffile cannot open it: {exc}") from exc
        self._series = series
        self._parse_metadata()
        self._scaling = None
        if self._needs_composite():
            self._colors = self._channel_colors()
        try:  # decode one tile now, so unsupported compression fails at open, not later
            self._read_pixels(self.level_count - 1, 0, 0, 1, 1)
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
        self._props: dict[str, str] = {}
        for tag in page.tags:
            if tag.name not in ("StripOffsets", "StripByteCounts", "TileOffsets",
                                "TileByteCounts", "JPEGTables"):
                self._props[f"tiff.{tag.name}"] = str(tag.value)[:1000]
        self._mpp = self._power = None
        self._vendor = "generic-tiff"
        if tif.is_svs:
            self._vendor = "aperio"
            meta = tifffile_svs_metadata(page.description)
            self._props.update({f"aperio.{k}": str(v) for k, v in meta.items()})
            self._mpp = (float(meta["MPP"]),) * 2 if "MPP" in meta else None
            self._power = float(meta["AppMag"]) if "AppMag" in meta else None
        elif tif.is_qpi:
            self._vendor = "qptiff"
            size = re.search(r"<PixelSizeMicrons>([\d.eE+-]+)<", page.description)
            power = re.search(r"<Objective>\s*([\d.]+)\s*x", page.description)
            self._mpp = (float(size.group(1)),) * 2 if size else None
            self._power = float(power.group(1)) if power else None
        elif tif.is_ome:
            self._vendor = "ome-tiff"
            self._mpp = _ome_mpp(tif.ome_metadata or "")
        if self._mpp is None:
            self._mpp = _resolution_mpp(page)
        self._props["tifffile.series_axes"] = self._series.axes

    # ------------------------------------------------------------------------ metadata
    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((lv.width, lv.height) for lv in self._levels)

    @property
    def mpp(self) -> tuple[float, float] | None:
        return self._mpp

    @property
    def objective_power(self) -> float | None:
        return self._power

    @property
    def vendor(self) -> str:
        return self._vendor

    @property
    def properties(self) -> Mapping[str, str]:
        return self._props

    @property
    def associated_images(self) -> Mapping[str, np.ndarray]:
        found = {(s.name or "").lower(): s for s in self._tif.series
                 if (s.name or "").lower() in ASSOCIATED_NAMES}
        return LazyImages(sorted(found), lambda n: _to_rgb_simple(found[n].asarray()))

    # ------------------------------------------------------------------------- reading
    def _needs_composite(self) -> bool:
        lv = self._levels[0]
        return not (lv.dtype == np.uint8 and len(lv.pages) == 1 and lv.samples in (1, 3, 4))

    def _read_pixels(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        lv = self._levels[level]
        planes = [_read_page_region(page, self._fd, x, y, width, height) for page in lv.pages]
        if not self._needs_composite():
            img = planes[0]
            if lv.pages[0].keyframe.photometric == 0:  # MINISWHITE
                img = 255 - img
            return _to_rgb_simple(img)
        stack = np.concatenate([p.reshape(height, width, -1) for p in planes], axis=2)
        return self._composite(stack)

    def _composite(self, stack: np.ndarray) -> np.ndarray:
        if self._scaling is None:
            self._scaling = self._measure_scaling()
        lo, hi = self._scaling
        norm = np.clip((stack.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
        rgb = norm @ self._colors[: norm.shape[2]]
        return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def _measure_scaling(self) -> tuple[np.ndarray, np.ndarray]:
        lv = self._levels[-1]
        planes = [_read_page_region(p, self._fd, 0, 0, lv.width, lv.height) for p in lv.pages]
        stack = np.concatenate([p.reshape(lv.height, lv.width, -1) for p in planes], axis=2)
        flat = stack.reshape(-1, stack.shape[2]).astype(np.float32)
        lo, hi = np.percentile(flat, 0.1, axis=0), np.percentile(flat, 99.9, axis=0)
        return lo, np.maximum(hi, lo + 1e-6)

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
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
        if getattr(self, "_tif", None) is not None:
            self._tif.close()


def _read_page_region(page, fd: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Decode the segments (tiles or strips) of ``page`` that cover a region.

    ``page`` may be a ``TiffFrame`` (OME-TIFF planes): its layout comes from its keyframe.
    """
    frame, page = page, page.keyframe
    if page.is_tiled:
        seg_h, seg_w = page.tilelength, page.tilewidth
    else:
        seg_h, seg_w = min(page.rowsperstrip or page.imagelength, page.imagelength), \
            page.imagewidth
    across = -(-page.imagewidth // seg_w)
    per_plane = across * -(-page.imagelength // seg_h)
    if page.planarconfig == 2 and page.samplesperpixel > 1:
        raise ValueError("planar-separate multi-sample pages are not supported")
    out = np.empty((height, width, page.samplesperpixel), dtype=page.dtype)
    tables = getattr(page, "jpegtables", None)
    for ty in range(y // seg_h, (y + height - 1) // seg_h + 1):
        for tx in range(x // seg_w, (x + width - 1) // seg_w + 1):
            index = ty * across + tx
            if index >= per_plane:
                continue
            nbytes = frame.databytecounts[index]
            data = os.pread(fd, nbytes, frame.dataoffsets[index]) if nbytes else None
            if data is None:  # sparse tile: no data stored, TIFF says it is zero
                segment = np.zeros((seg_h, seg_w, page.samplesperpixel), page.dtype)
            else:
                segment = page.decode(data, index, jpegtables=tables)[0]
                segment = segment.reshape(segment.shape[-3:])
            sx0, sy0 = tx * seg_w, ty * seg_h
            ox0, oy0 = max(x, sx0), max(y, sy0)
            ox1 = min(x + width, sx0 + segment.shape[1])
            oy1 = min(y + height, sy0 + segment.shape[0])
            out[oy0 - y : oy1 - y, ox0 - x : ox1 - x] = \
                segment[oy0 - sy0 : oy1 - sy0, ox0 - sx0 : ox1 - sx0]
    return out


def _to_rgb_simple(img: np.ndarray) -> np.ndarray:
    """8-bit grey / RGB / RGBA to RGB; other images are stretched to 8 bits."""
    if img.ndim == 2:
        img = img[..., None]
    if img.dtype != np.uint8:
        lo, hi = float(img.min()), float(img.max())
        img = ((img.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def tifffile_svs_metadata(description: str) -> dict:
    """Aperio ImageDescription key-value pairs (tifffile's parser, tolerant of odd files)."""
    import tifffile

    try:
        return tifffile.tifffile.svs_description_metadata(description)
    except Exception:
        return {}


def _ome_mpp(ome_xml: str) -> tuple[float, float] | None:
    sizes = {}
    for axis in ("X", "Y"):
        value = re.search(rf'PhysicalSize{axis}="([\d.eE+-]+)"', ome_xml)
        unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', ome_xml)
        if not value:
            return None
        units = {"nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
        factor = units.get(unit.group(1) if unit else "", 1.0)
        sizes[axis] = float(value.group(1)) * factor
    return sizes["X"], sizes["Y"]


def _resolution_mpp(page) -> tuple[float, float] | None:
    """Microns per pixel from the TIFF resolution tags (centimetre or inch units only)."""
    try:
        unit = int(page.resolutionunit)
        xres, yres = page.resolution
    except Exception:
        return None
    per_unit = {2: 25400.0, 3: 10000.0}.get(unit)
    if not per_unit or not xres or not yres:
        return None
    return per_unit / xres, per_unit / yres
