"""Open any whole-slide image through one interface.

>>> from exaslide.slides import open_slide
>>> with open_slide("slide.svs") as slide:           # doctest: +SKIP
...     patch = slide.read_region((1000, 2000), (256, 256), mpp=0.5)

Backends: ``openslide`` (every vendor format), ``tifffile`` (TIFF, SVS, OME-TIFF, QPTIFF,
multi-channel fluorescence) and ``image`` (PNG, JPEG and other plain images).
"""

from exaslide.slides.base import Slide
from exaslide.slides.open import BACKEND_NAMES, backend_class, open_slide

__all__ = ["BACKEND_NAMES", "Slide", "backend_class", "open_slide"]
