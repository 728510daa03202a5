"""Write synthetic pyramidal whole-slide images with known ground truth.

The slide is a tiled JPEG TIFF (YCbCr 4:2:0, 256 x 256 tiles by default) whose pyramid levels are
successive pages, so OpenSlide opens it as a multi-level ``generic-tiff`` with its
resolution (mpp) set. Its tumours are written as CAMELYON16-style ASAP XML (group ``_0``
tumour, ``_2`` exclusion).

Memory stays bounded whatever the size: level 0 is painted one strip of tile rows at a time
(rasterising the ground-truth polygons in that strip), each strip is also box-averaged into
the next level, which is spooled to a temporary raw file and then written the same way.
Peak memory is a few strips plus the textures and grows with the width only (about 4.5 KB
per column: ~300 MB for a 50,000-pixel-wide slide, ~1.2 GB at the maximum side,
:data:`MAX_SIDE`). Disk needs the TIFF plus two spooled levels (about 0.35 bytes per
level-0 pixel at quality 90: ~14 GB for 200,000 x 200,000); a slide that does not fit in
the free space of its folder is refused before anything is written
(:func:`check_disk_space`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from exaslide.atomic import atomic_path
from exaslide.errors import ExaslideError
from exaslide.masks.raster import rasterize
from exaslide.synth.shapes import Layout, make_layout
from exaslide.synth.texture import make_texture

logger = logging.getLogger(__name__)

TEXTURE_SIZE = 1024

#: Largest width or height of a synthetic slide, in pixels. Memory grows with the width
#: times the tile side (a strip of tile rows is painted at a time), so this bounds it
#: (~1.2 GB with 256-pixel tiles; larger tiles allow proportionally narrower slides); it
#: allows realistic slides (CAMELYON16's largest are about 220,000 x 100,000).
MAX_SIDE = 250_000
MAX_TUMOURS = 1000  #: most tumours per synthetic slide


class SynthError(ExaslideError, ValueError):
    """Synthetic-slide parameters that cannot be used: impossible values, a slide larger
    than :data:`MAX_SIDE` or than the free disk space."""


@dataclass(frozen=True)
class SynthSpec:
    """Parameters of one synthetic slide."""

    width: int = 8192
    height: int = 6144
    tumours: int = 3
    seed: int = 0
    mpp: float = 0.5  #: microns per pixel at level 0
    tile: int = 256  #: tile side in pixels
    quality: int = 90  #: JPEG quality
    level_factor: int = 4  #: downsample between successive levels
    top_level_max: int = 512  #: add levels until the coarsest one's longer side fits in this
    exclusion_rate: float = 0.5  #: chance that a tumour holds an exclusion island

    def validate(self) -> None:
        """Raise :class:`SynthError` (a ``ValueError``) for impossible parameters, and for
        a width or height above :data:`MAX_SIDE`."""
        if self.width < 256 or self.height < 256:
            raise SynthError(f"slide must be at least 256x256, got {self.width}x{self.height}")
        if max(self.width, self.height) > MAX_SIDE:
            raise SynthError(f"a {self.width} x {self.height} slide is too large: width and "
                             f"height can be at most {MAX_SIDE} pixels (memory grows with the "
                             "width, disk and time with the area); choose a smaller "
                             "--width/--height")
        if not 0 <= self.tumours <= MAX_TUMOURS:
            raise SynthError(f"tumours must be from 0 to {MAX_TUMOURS}, got {self.tumours}")
        if self.tile % 16 or self.tile < 16:
            raise SynthError("tile must be a positive multiple of 16")
        if self.tile * self.width > 256 * MAX_SIDE:
            raise SynthError(f"tile {self.tile} with width {self.width}: a strip of tile "
                             f"rows would hold {self.tile * self.width} pixels, at most "
                             f"{256 * MAX_SIDE} are allowed (memory); use smaller tiles")
        if self.level_factor < 2 or self.tile % self.level_factor:
            raise SynthError("level_factor must be >= 2 and divide the tile size")
        if not 1 <= self.quality <= 100 or not self.mpp > 0:
            raise SynthError("quality must be 1-100 and mpp positive")


@dataclass
class SynthSlide:
    """A written synthetic slide and its ground truth."""

    path: Path
    annotation_path: Path | None
    spec: SynthSpec
    layout: Layout
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)


def level_sizes(spec: SynthSpec) -> list[tuple[int, int]]:
    """Pyramid level sizes: each level is the previous one divided by ``level_factor``,
    until the coarsest level's longer side is at most ``top_level_max``."""
    sizes = [(spec.width, spec.height)]
    while max(sizes[-1]) > spec.top_level_max and \
            min(sizes[-1]) // spec.level_factor >= 16:
        w, h = sizes[-1]
        sizes.append((w // spec.level_factor, h // spec.level_factor))
    return sizes


def _jpeg_bytes_per_pixel(quality: int) -> float:
    """A generous JPEG size per pixel of these textures (measured: 0.04 at quality 50,
    0.12 at 90, 0.21 at 95, 0.63 at 100)."""
    return 0.08 if quality <= 75 else 0.16 if quality <= 90 else 0.28 if quality <= 95 \
        else 0.8


def estimated_disk_bytes(spec: SynthSpec) -> int:
    """Disk a slide needs while it is written: the TIFF (every level) and the two raw
    levels spooled at the same time."""
    sizes = level_sizes(spec)
    pixels = sum(w * h for w, h in sizes)
    spooled = sum(w * h * 3 for w, h in sizes[1:3])
    return int(pixels * _jpeg_bytes_per_pixel(spec.quality)) + spooled


def check_disk_space(folder: str | os.PathLike, needed: int,
                     free: int | None = None) -> None:
    """Raise :class:`SynthError` when ``needed`` bytes exceed the free space of
    ``folder`` (or of its nearest existing parent; ``free`` overrides the measure)."""
    import shutil

    where = Path(folder).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free if free is None else free
    if needed > free:
        raise SynthError(f"{folder}: writing needs about {needed / 1e9:.1f} GB of disk (the "
                         f"TIFF and its spooled levels) but {free / 1e9:.1f} GB are free; "
                         "choose a smaller --width/--height or another folder")


class _Painter:
    """Paints level-0 strips from the layout and the class textures."""

    def __init__(self, spec: SynthSpec, layout: Layout):
        self.spec, self.layout = spec, layout
        self.tumour_region = layout.tumour_region
        self.textures = [make_texture(k, TEXTURE_SIZE, spec.mpp, spec.seed)
                         for k in ("background", "normal", "tumour")]

    def _repeat(self, kind: int, y0: int, rows: int) -> np.ndarray:
        """Texture ``kind`` repeated over a strip (rows ``y0..y0+rows``, full width)."""
        ys = np.arange(y0, y0 + rows) % TEXTURE_SIZE
        band = self.textures[kind][ys]
        reps = -(-self.spec.width // TEXTURE_SIZE)
        return np.ascontiguousarray(np.tile(band, (1, reps, 1))[:, : self.spec.width])

    def strip(self, y0: int, rows: int) -> np.ndarray:
        """Level-0 pixels of rows ``y0..y0+rows``: background, normal tissue or tumour."""
        width = self.spec.width
        shape = (rows, width)
        tissue = rasterize(self.layout.tissue, shape, origin=(0, y0))
        tumour = rasterize(self.tumour_region, shape, origin=(0, y0))
        out = self._repeat(0, y0, rows)
        for kind, where in ((1, tissue & ~tumour), (2, tumour)):
            if where.any():
                np.copyto(out, self._repeat(kind, y0, rows), where=where[..., None])
        return out


def _tiles(strip: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """Cut a strip (at most ``tile`` rows) into full-size tiles, padding with white."""
    width = strip.shape[1]
    for x in range(0, width, tile):
        t = strip[:, x : x + tile]
        if t.shape[0] != tile or t.shape[1] != tile:
            padded = np.full((tile, tile, 3), 255, np.uint8)
            padded[: t.shape[0], : t.shape[1]] = t
            t = padded
        yield t


def _downsample(strip: np.ndarray, factor: int, width: int) -> np.ndarray:
    """Box-average a strip by the integer ``factor`` to ``width`` columns."""
    import cv2

    rows = strip.shape[0] // factor
    if rows == 0:  # a last strip thinner than the factor: its rows fall off the level
        return np.empty((0, width, 3), np.uint8)
    crop = strip[: rows * factor, : width * factor]
    return cv2.resize(crop, (width, rows), interpolation=cv2.INTER_AREA)


def _level_tiles(source: Callable[[int, int], np.ndarray], size: tuple[int, int],
                 spec: SynthSpec, spool) -> Iterator[np.ndarray]:
    """Yield a level's tiles row by row; spool its downsample for the next level."""
    width, height = size
    for y0 in range(0, height, spec.tile):
        strip = source(y0, min(spec.tile, height - y0))
        if spool is not None:
            spool.write(_downsample(strip, spec.level_factor, width // spec.level_factor)
                        .tobytes())
        yield from _tiles(strip, spec.tile)


def _raw_source(spool, width: int) -> Callable[[int, int], np.ndarray]:
    """Read rows back from a spooled level (an open binary file of packed RGB rows)."""
    row_bytes = width * 3

    def read(y0: int, rows: int) -> np.ndarray:
        data = os.pread(spool.fileno(), rows * row_bytes, y0 * row_bytes)
        return np.frombuffer(data, np.uint8).reshape(rows, width, 3)

    return read


def write_synthetic_slide(path: str | os.PathLike, spec: SynthSpec | None = None,
                          progress: Callable[[int], None] | None = None) -> SynthSlide:
    """Write a synthetic slide to ``path`` (``.tif``) and its ASAP XML beside it.

    The XML is written first and the TIFF last, each atomically, so an existing TIFF
    always has its annotation. Spooled levels live in anonymous temporary files in the
    output folder, which the OS frees even if the process is killed.

    Args:
        path: output TIFF path; the annotation is ``<stem>.xml`` in the same folder
            (not written when the slide has no tumour).
        spec: slide parameters (defaults: :class:`SynthSpec`).
        progress: called with the number of tiles written after each strip.

    Returns:
        The paths, the spec and the ground-truth layout.

    Raises:
        SynthError: invalid parameters, a side above :data:`MAX_SIDE`, or less free disk
            than :func:`estimated_disk_bytes` (checked before anything is written).
    """
    spec = spec or SynthSpec()
    spec.validate()
    path = Path(path)
    check_disk_space(path.parent, estimated_disk_bytes(spec))
    path.parent.mkdir(parents=True, exist_ok=True)
    layout = make_layout(spec.width, spec.height, spec.tumours,
                         np.random.default_rng(spec.seed), spec.exclusion_rate)
    annotation_path = _write_annotations(path.with_suffix(".xml"), layout) \
        if spec.tumours else None
    sizes = level_sizes(spec)
    with atomic_path(path) as out:
        _write_pyramid(out, spec, sizes, _Painter(spec, layout).strip, progress)
    return SynthSlide(path, annotation_path, spec, layout, sizes)


def _write_pyramid(out: Path, spec: SynthSpec, sizes: list[tuple[int, int]],
                   source: Callable[[int, int], np.ndarray],
                   progress: Callable[[int], None] | None) -> None:
    """Write every level as a page; each level's downsample is spooled for the next."""
    import tifffile

    description = json.dumps({"exaslide_synthetic": asdict(spec)})
    spools = []  # level k+1 is spooled while level k is written, read while k+1 is written
    try:
        with tifffile.TiffWriter(out, bigtiff=spec.width * spec.height * 3 > 2**31) as tif:
            for level, size in enumerate(sizes):
                spool = None
                if level + 1 < len(sizes):
                    spool = tempfile.TemporaryFile(dir=out.parent)  # noqa: SIM115
                    spools.append(spool)
                tiles = _level_tiles(source, size, spec, spool)
                if progress is not None:
                    tiles = _counting(tiles, progress)
                mpp = spec.mpp * spec.width / size[0]
                tif.write(tiles, shape=(size[1], size[0], 3), dtype=np.uint8,
                          tile=(spec.tile, spec.tile), photometric="rgb",
                          compression="jpeg", compressionargs={"level": spec.quality},
                          resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER",
                          subfiletype=1 if level else 0, metadata=None,
                          description=description if level == 0 else None)
                if spool is not None:
                    spool.flush()
                    source = _raw_source(spool, size[0] // spec.level_factor)
                if len(spools) > 1:  # the level just written no longer needs its source
                    spools.pop(0).close()
    finally:
        for spool in spools:
            spool.close()


def _counting(tiles: Iterator[np.ndarray], progress: Callable[[int], None]):
    for tile in tiles:
        yield tile
        progress(1)


def _write_annotations(path: Path, layout: Layout) -> Path:
    from exaslide.annotations import Annotation, write_annotations

    items = [
        Annotation(geometry=poly, label="tumour", group="_0", name=f"Annotation {i}",
                   kind="polygon", source=poly, color="#F4FA58")
        for i, poly in enumerate(layout.tumours)
    ] + [
        Annotation(geometry=poly, label="exclusion", group="_2", name=f"Exclusion {i}",
                   kind="polygon", source=poly, color="#64FE2E")
        for i, poly in enumerate(layout.exclusions)
    ]
    return write_annotations(items, path, format="asap")
