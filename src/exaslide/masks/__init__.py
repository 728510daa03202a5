"""Tissue detection, exact polygon rasterisation and tumour / normal-tissue label masks."""

from exaslide.masks.label import (
    BACKGROUND,
    CLASS_NAMES,
    NORMAL,
    TUMOUR,
    LabelMask,
    annotation_area_um2,
    make_label_mask,
)
from exaslide.masks.raster import fill_polygon, rasterize
from exaslide.masks.tissue import TissueParams, detect_tissue

__all__ = [
    "BACKGROUND", "CLASS_NAMES", "NORMAL", "TUMOUR", "LabelMask", "TissueParams",
    "annotation_area_um2", "detect_tissue", "fill_polygon", "make_label_mask", "rasterize",
]
