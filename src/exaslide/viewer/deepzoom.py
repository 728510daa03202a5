"""Deep Zoom (DZI) tiles of an exaslide :class:`~exaslide.slides.Slide`, with exactly the
geometry of OpenSlide's ``openslide.deepzoom.DeepZoomGenerator`` (``limit_bounds=False``).

Deep Zoom level ``L`` of ``n`` has downsample ``2**(n-1-L)`` relative to level 0 (level 0
is 1x1 pixel, level ``n-1`` the full slide). A tile ``(col, row)`` is ``tile_size`` pixels
plus ``overlap`` pixels on every side that has a neighbour. Its pixels are read from the
slide level OpenSlide would read (the coarsest level whose downsample is at most the Deep
Zoom one, no tolerance) with :meth:`Slide.read_region`, and shrunk to the tile's size with
Pillow's Lanczos ``thumbnail`` when the level is finer, as OpenSlide does.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"


@dataclass(frozen=True)
class TileRead:
    """What one tile needs: the slide ``level`` to read, the level-0 ``location`` and the
    ``read_size`` at that level, and the tile's output ``size`` (all ``(x, y)`` pairs)."""

    level: int
    location: tuple[int, int]
    read_size: tuple[int, int]
    size: tuple[int, int]


class DeepZoom:
    """The Deep Zoom pyramid of a slide.

    Args:
        slide: an open exaslide slide (read from several threads at once).
        tile_size: tile side without overlap (254, as OpenSlide's default).
        overlap: pixels added on each side that has a neighbouring tile (1).
        quality: JPEG quality of :meth:`tile_jpeg`.
    """

    def __init__(self, slide, tile_size: int = 254, overlap: int = 1, quality: int = 75):
        if tile_size < 1 or overlap < 0:
            raise ValueError(f"tile_size must be >= 1 and overlap >= 0, got {tile_size}, "
                             f"{overlap}")
        self.slide = slide
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        self.quality = int(quality)
        self.level_dimensions = deepzoom_levels(slide.dimensions)
        self.level_tiles = tuple((math.ceil(w / self.tile_size), math.ceil(h / self.tile_size))
                                 for w, h in self.level_dimensions)
        self.level_count = len(self.level_dimensions)
        # the slide level read for each Deep Zoom level, and the scale within it
        self._slide_level = []
        self._scale = []
        for dz_level in range(self.level_count):
            downsample = 2.0 ** (self.level_count - 1 - dz_level)
            level = slide.best_level(downsample=downsample, rtol=0.0)
            self._slide_level.append(level)
            self._scale.append(downsample / slide.level_downsamples[level])

    def dzi(self, image_format: str = "jpeg") -> str:
        """The ``.dzi`` XML document (as ``DeepZoomGenerator.get_dzi``)."""
        return dzi_document(self.slide.dimensions, self.tile_size, self.overlap,
                            image_format)

    def has_tile(self, level: int, col: int, row: int) -> bool:
        """True when ``(level, col, row)`` is a tile of this pyramid."""
        if not 0 <= level < self.level_count:
            return False
        cols, rows = self.level_tiles[level]
        return 0 <= col < cols and 0 <= row < rows

    def tile_read(self, level: int, col: int, row: int) -> TileRead:
        """The read behind tile ``(col, row)`` of Deep Zoom ``level`` (OpenSlide's
        ``_get_tile_info``).

        Raises:
            ValueError: the tile does not exist.
        """
        if not self.has_tile(level, col, row):
            raise ValueError(f"no tile ({col}, {row}) at Deep Zoom level {level}")
        t, o = self.tile_size, self.overlap
        cols, rows = self.level_tiles[level]
        zw, zh = self.level_dimensions[level]
        slide_level = self._slide_level[level]
        scale = self._scale[level]
        level_downsample = self.slide.level_downsamples[slide_level]
        lw, lh = self.slide.level_dimensions[slide_level]
        tl = (o if col else 0, o if row else 0)
        br = (o if col < cols - 1 else 0, o if row < rows - 1 else 0)
        size = (min(t, zw - t * col) + tl[0] + br[0], min(t, zh - t * row) + tl[1] + br[1])
        lx, ly = scale * (t * col - tl[0]), scale * (t * row - tl[1])
        location = (int(level_downsample * lx), int(level_downsample * ly))
        read_size = (int(min(math.ceil(scale * size[0]), lw - math.ceil(lx))),
                     int(min(math.ceil(scale * size[1]), lh - math.ceil(ly))))
        return TileRead(slide_level, location, read_size, size)

    def tile_pixels(self, level: int, col: int, row: int) -> np.ndarray:
        """Tile ``(col, row)`` of ``level`` as an ``(h, w, 3)`` uint8 RGB array."""
        from PIL import Image

        read = self.tile_read(level, col, row)
        pixels = self.slide.read_region(read.location, read.read_size, level=read.level)
        if read.read_size == read.size:
            return pixels
        image = Image.fromarray(pixels)
        image.thumbnail(read.size, Image.Resampling.LANCZOS)
        return np.asarray(image)

    def tile_jpeg(self, level: int, col: int, row: int) -> bytes:
        """Tile ``(col, row)`` of ``level`` encoded as JPEG."""
        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(self.tile_pixels(level, col, row)).save(out, "JPEG",
                                                                quality=self.quality)
        return out.getvalue()


def deepzoom_levels(dimensions: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """``(width, height)`` of every Deep Zoom level, from 1x1 to ``dimensions``."""
    width, height = int(dimensions[0]), int(dimensions[1])
    levels = [(width, height)]
    while levels[-1] != (1, 1):
        w, h = levels[-1]
        levels.append((max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))))
    return tuple(reversed(levels))


def dzi_document(dimensions: tuple[int, int], tile_size: int, overlap: int,
                 image_format: str = "jpeg") -> str:
    """The ``.dzi`` XML document of a ``(width, height)`` image (needs no open slide)."""
    width, height = dimensions
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image TileSize="{tile_size}" Overlap="{overlap}" '
            f'Format="{image_format}" xmlns="{DZI_NAMESPACE}">'
            f'<Size Width="{width}" Height="{height}" /></Image>')
