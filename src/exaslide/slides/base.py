"""The abstract :class:`Slide`: one interface over every backend.

Coordinate conventions (shared by every backend):

- ``location`` is always ``(x, y)`` in level-0 pixels, x to the right, y down, as in OpenSlide.
- ``size`` is ``(width, height)`` of the returned image, in pixels of the requested level (or
  of the requested resolution when ``mpp=`` is given).
- Level ``L`` pixel ``(i, j)`` covers level-0 pixels ``[j*d, (j+1)*d) x [i*d, (i+1)*d)`` where
  ``d`` is the level's downsample. A level-0 location maps to level pixel
  ``floor(x / d + 0.5)``. OpenSlide interpolates when ``x / d`` is not an integer, so the
  backends agree bit for bit at level 0 and at integer downsamples.
- Pixels outside the slide are white (255, 255, 255). A region entirely outside the slide is
  an error, since it is almost always a coordinate bug.
- Every read returns an ``(H, W, 3)`` ``uint8`` RGB array.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from exaslide.errors import LevelError, SlideOpenError, SlideReadError, StorageError

if TYPE_CHECKING:
    from exaslide.slides.tile_cache import TileCache

logger = logging.getLogger(__name__)

#: Largest region, in pixels, that one ``read_region`` call may return (about 800 MB of RGB):
#: larger requests are refused before anything is allocated.
MAX_READ_PIXELS = 1 << 28
#: Source pixels decoded per block when a read is resampled (``mpp=`` reads, thumbnails):
#: blocks are whole rows of the output when they fit, else columns too. A read in which one
#: output pixel alone averages more source pixels than this is refused.
RESAMPLE_CHUNK_PIXELS = 1 << 24
#: Largest plausible width or height of a level (1,048,576 pixels; real slides stay below
#: 300,000): a header that claims more is damaged or forged and is refused at open.
MAX_SLIDE_SIDE = 1 << 20
#: Relative tolerance when matching a requested resolution or downsample to a level.
DEFAULT_RTOL = 0.05


class LazyImages(Mapping[str, np.ndarray]):
    """A read-only mapping whose values are loaded on first access (associated images)."""

    def __init__(self, names: list[str], loader: Callable[[str], np.ndarray]):
        self._names = list(names)
        self._loader = loader

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return self._loader(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class Slide(ABC):
    """A whole-slide image opened by one backend; use it as a context manager.

    Subclasses set the metadata (``_mpp``, ``_objective_power``, ``_vendor``,
    ``_properties``) while opening and implement :attr:`level_dimensions`,
    :attr:`associated_images` and :meth:`_read_pixels`; everything else
    (level choice, physical resolutions, padding, resampling, thumbnails) lives here so that
    all backends behave the same way.
    """

    #: Backend name, e.g. ``"openslide"``.
    backend: str = ""
    #: True for backends whose constructor takes ``tile_cache=`` (see ``open_slide``).
    accepts_tile_cache: bool = False

    def __init__(self, path: str, tile_cache: TileCache | None = None):
        self.path = str(path)
        #: The :class:`~exaslide.slides.tile_cache.TileCache` of decoded tiles this handle
        #: uses (``None``: no exaslide cache; OpenSlide handles use OpenSlide's own cache).
        self.tile_cache = tile_cache
        # Metadata: backends fill these in while opening.
        self._mpp: tuple[float, float] | None = None
        self._objective_power: float | None = None
        self._vendor = "unknown"
        self._properties: Mapping[str, str] = {}

    # ----------------------------------------------------------------- backend interface
    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of every level, level 0 first."""

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Microns per pixel ``(x, y)`` at level 0, or ``None`` when the file does not say."""
        return self._mpp

    @property
    def objective_power(self) -> float | None:
        """Scanning objective magnification (e.g. 20 or 40), or ``None``."""
        return self._objective_power

    @property
    def vendor(self) -> str:
        """Format / scanner vendor, e.g. ``"aperio"`` or ``"generic-tiff"``."""
        return self._vendor

    @property
    def properties(self) -> Mapping[str, str]:
        """All metadata key-value pairs the backend exposes."""
        return self._properties

    @property
    @abstractmethod
    def associated_images(self) -> Mapping[str, np.ndarray]:
        """Label, macro, thumbnail... images by name, as RGB arrays (loaded lazily)."""

    @abstractmethod
    def _read_pixels(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read a region that lies entirely inside ``level``, in that level's pixels."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles. Idempotent."""

    def check_dimensions(self) -> None:
        """Raise :class:`SlideOpenError` when a level claims an implausible size (zero, or
        more than :data:`MAX_SLIDE_SIDE` a side): backends call it while opening, before
        anything is sized from the header."""
        for i, (w, h) in enumerate(self.level_dimensions):
            if not (0 < w <= MAX_SLIDE_SIDE and 0 < h <= MAX_SLIDE_SIDE):
                raise SlideOpenError(
                    f"{self.path}: implausible slide header: level {i} claims {w}x{h} "
                    f"pixels (at most {MAX_SLIDE_SIDE} a side); the file is damaged or "
                    "forged, not a slide")

    # ------------------------------------------------------------------ derived metadata
    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of every level relative to level 0 (mean of the x and y ratios)."""
        w0, h0 = self.dimensions
        return tuple((w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions)

    def level_mpp(self, level: int) -> tuple[float, float] | None:
        """Microns per pixel at ``level``, or ``None`` when the slide has no resolution."""
        self.check_level(level)
        if self.mpp is None:
            return None
        d = self.level_downsamples[level]
        return (self.mpp[0] * d, self.mpp[1] * d)

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary of the slide (what ``exaslide info --json`` prints)."""
        return {
            "path": self.path,
            "backend": self.backend,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": [round(d, 6) for d in self.level_downsamples],
            "mpp": list(self.mpp) if self.mpp else None,
            "objective_power": self.objective_power,
            "associated_images": sorted(self.associated_images),
        }

    def describe_levels(self) -> str:
        """One line per level: size, downsample and resolution (used in error messages)."""
        lines = []
        for i, (w, h) in enumerate(self.level_dimensions):
            mpp = self.level_mpp(i)
            res = f", {mpp[0]:.4g} um/px" if mpp else ""
            lines.append(f"level {i}: {w}x{h}, downsample {self.level_downsamples[i]:.4g}{res}")
        return "; ".join(lines)

    # ------------------------------------------------------------------ level selection
    def best_level(
        self,
        downsample: float | None = None,
        *,
        mpp: float | None = None,
        rtol: float = DEFAULT_RTOL,
    ) -> int:
        """The coarsest level that is at least as fine as the request.

        Give exactly one of ``downsample`` (relative to level 0) or ``mpp`` (microns per
        pixel). A level matches when its downsample is at most the requested one times
        ``1 + rtol``.

        Raises:
            LevelError: the request is finer than level 0 (beyond ``rtol``), is not
                positive, or asks for ``mpp`` on a slide without resolution metadata. The
                message lists the levels the slide has.
        """
        if (downsample is None) == (mpp is None):
            raise LevelError("give exactly one of downsample= or mpp=")
        if mpp is not None:
            if self.mpp is None:
                raise LevelError(
                    f"{self.path}: cannot select a level by mpp={mpp}: the slide has no "
                    f"resolution metadata; select a level instead ({self.describe_levels()})"
                )
            downsample = mpp / self.mpp[0]
            wanted = f"{mpp} um/px"
        else:
            wanted = f"downsample {downsample}"
        if not downsample or downsample <= 0 or not math.isfinite(downsample):
            raise LevelError(f"{self.path}: {wanted} is not a positive number")
        if downsample < 1.0 / (1.0 + rtol):
            raise LevelError(
                f"{self.path}: {wanted} is finer than the finest level of the slide "
                f"({self.describe_levels()})"
            )
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1.0 + rtol):
                best = i if d >= self.level_downsamples[best] else best
        return best

    def check_level(self, level: int) -> None:
        """Raise :class:`LevelError` (listing the levels) unless ``level`` exists."""
        if not isinstance(level, int | np.integer) or not 0 <= level < self.level_count:
            raise LevelError(
                f"{self.path}: level {level!r} does not exist ({self.describe_levels()})"
            )

    # ------------------------------------------------------------------------- reading
    def read_region(
        self,
        location: tuple[float, float],
        size: tuple[int, int],
        level: int | None = None,
        *,
        mpp: float | None = None,
    ) -> np.ndarray:
        """Read a region as an ``(height, width, 3)`` uint8 RGB array.

        Args:
            location: top-left corner ``(x, y)`` in level-0 pixels.
            size: ``(width, height)`` of the output, in pixels of ``level`` or of ``mpp``.
            level: pyramid level to read (default 0 when ``mpp`` is not given).
            mpp: read at this resolution instead: the best level is chosen with
                :meth:`best_level` and resampled (area interpolation) to exactly ``mpp``.

        Raises:
            SlideReadError: the region is empty, too large, entirely outside the slide, or
                the file's data cannot be decoded.
            LevelError: the level or resolution does not exist.
        """
        width, height = self._check_request(location, size)
        if level is not None and mpp is not None:
            raise LevelError("give level= or mpp=, not both")
        x, y = float(location[0]), float(location[1])
        if mpp is None:
            level = 0 if level is None else level
            self.check_level(level)
            d = self.level_downsamples[level]
            return self._read_padded(level, _round(x / d), _round(y / d), width, height)
        level = self.best_level(mpp=mpp)
        d = self.level_downsamples[level]
        scale = mpp / (self.mpp[0] * d)  # level pixels per output pixel
        return self._read_resampled(level, x / d, y / d, width * scale, height * scale,
                                    (width, height))

    def _check_request(self, location, size) -> tuple[int, int]:
        """``(width, height)`` of a read request, refused up front (before anything is
        allocated) when not finite, not positive or above :data:`MAX_READ_PIXELS`."""
        try:
            width, height = (int(v) for v in size)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SlideReadError(f"{self.path}: region size must be two finite positive "
                                 f"numbers, got {size}") from exc
        if width <= 0 or height <= 0:
            raise SlideReadError(f"{self.path}: region size must be positive, got {size}")
        if width * height > MAX_READ_PIXELS:
            raise SlideReadError(
                f"{self.path}: a {width}x{height} region is too large for one read "
                f"(max {MAX_READ_PIXELS} pixels); read a coarser level or in tiles"
            )
        if not all(math.isfinite(float(v)) for v in location[:2]):
            raise SlideReadError(f"{self.path}: region location must be finite numbers, "
                                 f"got {tuple(location)}")
        return width, height

    def thumbnail(self, max_size: int | tuple[int, int] = 1024) -> np.ndarray:
        """The whole slide scaled to fit in ``max_size`` (keeping the aspect ratio)."""
        if isinstance(max_size, int | np.integer):
            max_size = (int(max_size), int(max_size))
        w0, h0 = self.dimensions
        scale = max(w0 / max_size[0], h0 / max_size[1], 1.0)
        out = (max(1, round(w0 / scale)), max(1, round(h0 / scale)))
        level = self.best_level(downsample=scale)
        lw, lh = self.level_dimensions[level]
        return self._read_resampled(level, 0.0, 0.0, float(lw), float(lh), out)

    def read_downsampled(self, downsample: float) -> np.ndarray:
        """The whole slide at ``downsample`` level-0 pixels per output pixel (size
        ``round(W0 / downsample) x round(H0 / downsample)``), read from the best level and
        resampled in strips (bounded memory)."""
        if not downsample or downsample <= 0:
            raise LevelError(f"{self.path}: downsample must be positive, got {downsample}")
        w0, h0 = self.dimensions
        out = (max(1, round(w0 / downsample)), max(1, round(h0 / downsample)))
        if out[0] * out[1] > MAX_READ_PIXELS:
            raise SlideReadError(f"{self.path}: a {out[0]}x{out[1]} image is too large for "
                                 f"one read (max {MAX_READ_PIXELS} pixels)")
        level = self.best_level(downsample=max(downsample, 1.0))
        d = self.level_downsamples[level]
        return self._read_resampled(level, 0.0, 0.0, w0 / d, h0 / d, out)

    def read_level(self, level: int) -> np.ndarray:
        """A whole level as one RGB array (bounded by :data:`MAX_READ_PIXELS`)."""
        self.check_level(level)
        w, h = self.level_dimensions[level]
        return self.read_region((0, 0), (w, h), level=level)

    def _read_padded(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read level pixels, white outside the level, error when nothing overlaps."""
        lw, lh = self.level_dimensions[level]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, lw), min(y + height, lh)
        if x0 >= x1 or y0 >= y1:
            raise SlideReadError(
                f"{self.path}: region at ({x}, {y}) size {width}x{height} of level {level} "
                f"lies outside the slide (level {level} is {lw}x{lh})"
            )
        try:
            inner = self._read_pixels(level, x0, y0, x1 - x0, y1 - y0)
        except (SlideReadError, StorageError):  # a remote read failing is not bad data
            raise
        except Exception as exc:  # backend-specific decoder errors
            raise SlideReadError(
                f"{self.path}: cannot read region at ({x0}, {y0}) size "
                f"{x1 - x0}x{y1 - y0} of level {level}: {exc}"
            ) from exc
        if (x0, y0, x1, y1) == (x, y, x + width, y + height):
            return inner
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        out[y0 - y : y1 - y, x0 - x : x1 - x] = inner
        return out

    def _read_resampled(
        self, level: int, x: float, y: float, src_w: float, src_h: float,
        out_size: tuple[int, int],
    ) -> np.ndarray:
        """Resample the level region ``[x, x+src_w) x [y, y+src_h)`` (fractional level
        pixels) to ``out_size``.

        Only the output pixels whose source overlaps the level are computed (the rest are
        white), in blocks of at most :data:`RESAMPLE_CHUNK_PIXELS` source pixels (whole
        output rows when they fit, else narrower blocks), so memory is bounded by the output
        and the block size whatever the level's size.

        Raises:
            SlideReadError: the output is larger than :data:`MAX_READ_PIXELS`, lies outside
                the level, or one output pixel alone averages more than
                :data:`RESAMPLE_CHUNK_PIXELS` source pixels.
        """
        out_w, out_h = out_size
        if out_w * out_h > MAX_READ_PIXELS:
            raise SlideReadError(f"{self.path}: a {out_w}x{out_h} image is too large for one "
                                 f"read (max {MAX_READ_PIXELS} pixels)")
        sx, sy = src_w / out_w, src_h / out_h
        if abs(sx - 1.0) < 1e-6 and abs(sy - 1.0) < 1e-6:
            return self._read_padded(level, _round(x), _round(y), out_w, out_h)
        lw, lh = self.level_dimensions[level]
        budget = RESAMPLE_CHUNK_PIXELS
        per_pixel = min(sx, lw) * min(sy, lh)  # source decoded for one output pixel
        if per_pixel > budget:
            raise SlideReadError(
                f"{self.path}: each pixel of a {out_w}x{out_h} image would average "
                f"{sx:.0f}x{sy:.0f} source pixels of level {level} (more than {budget} source "
                "pixels at a time); ask for a larger image or use a slide with a pyramid")
        u0, u1 = max(0, math.floor(-x / sx)), min(out_w, math.ceil((lw - x) / sx))
        v0, v1 = max(0, math.floor(-y / sy)), min(out_h, math.ceil((lh - y) / sy))
        if u0 >= u1 or v0 >= v1:
            raise SlideReadError(
                f"{self.path}: region at ({x:.0f}, {y:.0f}) size {src_w:.0f}x{src_h:.0f} of "
                f"level {level} lies outside the slide (level {level} is {lw}x{lh})"
            )
        out = np.full((out_h, out_w, 3), 255, dtype=np.uint8)
        cols = u1 - u0  # whole output rows per block when one row's source fits the budget
        if min((u1 - u0) * sx, lw) * min(max(sy, 1e-9), lh) > budget:
            cols = max(1, int(budget / max(per_pixel, 1e-9)))
        for c0 in range(u0, u1, cols):
            c1 = min(u1, c0 + cols)
            self._resample_columns(level, x, y, (sx, sy), (c0, c1), (v0, v1), out)
        return out

    def _resample_columns(self, level: int, x: float, y: float, scale: tuple[float, float],
                          columns: tuple[int, int], rows: tuple[int, int],
                          out: np.ndarray) -> None:
        """Fill ``out[rows, columns]`` (output pixels) from the level, in strips of rows
        of at most :data:`RESAMPLE_CHUNK_PIXELS` source pixels (see
        :meth:`_read_resampled`). Source bounds are rounded, so adjacent blocks share their
        edges exactly (the sub-pixel offset ignored is below one source pixel)."""
        import cv2

        (sx, sy), (u0, u1), (v0, v1) = scale, columns, rows
        lw, lh = self.level_dimensions[level]
        interp = cv2.INTER_AREA if sx >= 1.0 and sy >= 1.0 else cv2.INTER_LINEAR
        ix0 = min(lw - 1, max(0, _round(x + u0 * sx)))
        ix1 = min(lw, max(ix0 + 1, _round(x + u1 * sx)))
        rows_per_strip = max(1, int(RESAMPLE_CHUNK_PIXELS / (ix1 - ix0) / max(sy, 1e-9)))
        for r0 in range(v0, v1, rows_per_strip):
            r1 = min(v1, r0 + rows_per_strip)
            iy0 = min(lh - 1, max(0, _round(y + r0 * sy)))
            iy1 = min(lh, max(iy0 + 1, _round(y + r1 * sy)))
            src = self._read_padded(level, ix0, iy0, ix1 - ix0, iy1 - iy0)
            out[r0:r1, u0:u1] = cv2.resize(src, (u1 - u0, r1 - r0), interpolation=interp)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, backend={self.backend!r})"



def _round(value: float) -> int:
    """Round half up (Python's ``round`` rounds half to even: 0.5 -> 0 but 1.5 -> 2)."""
    return math.floor(value + 0.5)
