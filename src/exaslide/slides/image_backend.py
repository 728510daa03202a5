"""Plain images (PNG, JPEG, BMP, flat TIFF...) as one-level slides, via Pillow.

Meant for low-resolution images such as figures from publications; the whole image is
decoded at open, so Pillow's decompression-bomb limit applies (use a pyramidal TIFF and the
tifffile or OpenSlide backend for large images).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from exaslide.errors import SlideOpenError
from exaslide.slides.base import Slide
from exaslide.slides.pixels import to_rgb


class ImageSlide(Slide):
    """A single image held in memory as level 0."""

    backend = "image"

    @staticmethod
    def can_open(path: str) -> bool:
        """True when Pillow recognises the file (reads only the header)."""
        from PIL import Image

        try:
            with Image.open(path):
                return True
        except Exception:
            return False

    def __init__(self, path: str):
        from PIL import Image

        super().__init__(path)
        try:
            with Image.open(path) as img:
                self._vendor = (img.format or "image").lower()
                self._properties = {"image.format": self._vendor}
                self._pixels = _pil_to_rgb(img)
        except Image.DecompressionBombError as exc:
            raise SlideOpenError(
                f"{path}: too large for the image backend ({exc}); store it as a tiled "
                "pyramidal TIFF"
            ) from exc
        except Exception as exc:
            raise SlideOpenError(f"{path}: Pillow cannot read it: {exc}") from exc

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """One level: the image's ``(width, height)``."""
        h, w = self._pixels.shape[:2]
        return ((w, h),)

    @property
    def associated_images(self) -> Mapping[str, np.ndarray]:
        """None: plain images have no associated images."""
        return {}

    def _read_pixels(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._pixels[y : y + height, x : x + width].copy()


def _pil_to_rgb(img) -> np.ndarray:
    """Any Pillow mode to RGB uint8 (palette and alpha composited on white)."""
    if img.mode == "P":
        img = img.convert("RGBA")
    elif img.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "F"):
        img = img.convert("RGB")
    return to_rgb(np.asarray(img))
