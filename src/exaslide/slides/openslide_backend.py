"""OpenSlide backend: every vendor format OpenSlide reads (SVS, NDPI, MRXS, SCN, Philips
TIFF, Ventana BIF, DICOM, generic tiled TIFF...). The library comes from ``openslide-bin``,
so no system package is needed."""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Mapping

import numpy as np

from exaslide.errors import SlideOpenError
from exaslide.slides.base import LazyImages, Slide
from exaslide.slides.pixels import rgba_to_rgb
from exaslide.slides.tile_cache import TileCache

logger = logging.getLogger(__name__)


class OpenSlideSlide(Slide):
    """A slide read through OpenSlide."""

    backend = "openslide"

    @staticmethod
    def can_open(path: str) -> bool:
        """True when OpenSlide recognises the file's format (a cheap header check)."""
        import openslide

        try:
            return openslide.OpenSlide.detect_format(path) is not None
        except Exception:
            return False

    accepts_tile_cache = True

    def __init__(self, path: str, tile_cache: TileCache | None = None):
        """Open ``path``. With a ``tile_cache``, OpenSlide's own tile cache gets the same
        byte budget (one OpenSlide cache per :class:`TileCache`, shared by the handles
        that share it); OpenSlide keeps no counters, so :attr:`tile_cache` stays ``None``.
        Without one, OpenSlide's default per-handle cache is used."""
        import openslide

        super().__init__(path)
        try:
            self._osr = openslide.OpenSlide(path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideOpenError(f"{path}: format not supported by OpenSlide") from exc
        except openslide.OpenSlideError as exc:
            raise SlideOpenError(f"{path}: OpenSlide cannot open it: {exc}") from exc
        try:
            self.check_dimensions()
        except SlideOpenError:
            self._osr.close()
            raise
        #: Bytes of the OpenSlide cache set from ``tile_cache`` (``None``: OpenSlide's default).
        self.openslide_cache_bytes: int | None = None
        if tile_cache is not None:
            self._set_cache(tile_cache)
        props = self._osr.properties
        self._properties = dict(props)
        self._vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
        mx, my = props.get(openslide.PROPERTY_NAME_MPP_X), props.get(openslide.PROPERTY_NAME_MPP_Y)
        self._mpp = (float(mx), float(my or mx)) if mx else None
        power = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        self._objective_power = float(power) if power else None

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of every level, as OpenSlide reports them."""
        return tuple(tuple(d) for d in self._osr.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """OpenSlide's own downsamples (it averages the x and y ratios, as the base does)."""
        return tuple(self._osr.level_downsamples)

    @property
    def associated_images(self) -> Mapping[str, np.ndarray]:
        """OpenSlide's associated images (label, macro, thumbnail...), composited on white."""
        images = self._osr.associated_images
        return LazyImages(list(images), lambda name: rgba_to_rgb(np.asarray(images[name])))

    def _read_pixels(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        d = self.level_downsamples[level]
        location = (math.floor(x * d + 0.5), math.floor(y * d + 0.5))
        region = self._osr.read_region(location, level, (width, height))
        return rgba_to_rgb(np.asarray(region))

    def _set_cache(self, tile_cache: TileCache) -> None:
        import openslide

        try:
            cache = _OPENSLIDE_CACHES.get(tile_cache)
            if cache is None:
                cache = _OPENSLIDE_CACHES[tile_cache] = openslide.OpenSlideCache(
                    tile_cache.max_bytes)
            self._osr.set_cache(cache)
            self.openslide_cache_bytes = tile_cache.max_bytes
        except (AttributeError, openslide.OpenSlideError) as exc:  # OpenSlide < 4.0
            logger.debug("OpenSlide cannot take a cache: %s", exc)

    def close(self) -> None:
        """Close the OpenSlide handle."""
        self._osr.close()


#: One OpenSlide cache per TileCache, so handles sharing a TileCache share its budget.
_OPENSLIDE_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
