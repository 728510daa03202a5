"""Tissue contours as level-0 polygons, from exaslide's tissue detection."""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from exaslide.masks.tissue import TissueParams, detect_tissue
from exaslide.slides.base import Slide

#: Resolution of the tissue detection, in microns per pixel (the detector's own).
TISSUE_MPP = 8.0
#: Longest side of the detection image (slides without a resolution, or huge ones).
MAX_SIDE = 4096
#: Longest side of the detection image for a slide without a resolution.
NO_MPP_SIDE = 2048


def tissue_polygons(slide: Slide, *, mpp: float = TISSUE_MPP,
                    params: TissueParams | None = None) -> list[BaseGeometry]:
    """The slide's tissue as level-0 polygons (with holes), detected at ``mpp`` um/px
    (a 2,048-px-wide image when the slide has no resolution; at most 4,096 px a side).

    Vertices are the centres of the boundary pixels of the detection mask, so contours
    lie up to half a detection pixel (4 um at 8 um/px) inside the mask's pixel edges.
    """
    w0, h0 = slide.dimensions
    downsample = mpp / slide.mpp[0] if slide.mpp else max(w0, h0) / NO_MPP_SIDE
    downsample = max(downsample, max(w0, h0) / MAX_SIDE, 1.0)
    image = slide.read_downsampled(downsample)
    mask_mpp = slide.mpp[0] * w0 / image.shape[1] if slide.mpp else None
    found = detect_tissue(image, mask_mpp, params)
    return mask_polygons(found, w0 / image.shape[1], h0 / image.shape[0])


def mask_polygons(mask: np.ndarray, scale_x: float = 1.0, scale_y: float = 1.0
                  ) -> list[BaseGeometry]:
    """Polygons (holes kept) of a boolean mask; pixel ``(r, c)``'s centre maps to
    ``((c + 0.5) * scale_x, (r + 0.5) * scale_y)``. Made valid; empty ones dropped."""
    import cv2

    contours, hierarchy = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8),
                                           cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    links = hierarchy[0]

    def ring(i: int) -> np.ndarray:
        points = contours[i].reshape(-1, 2).astype(np.float64) + 0.5
        return points * (scale_x, scale_y)

    polygons: list[BaseGeometry] = []
    for i, (_, _, child, parent) in enumerate(links):
        if parent != -1 or len(contours[i]) < 3:
            continue
        holes = []
        while child != -1:
            if len(contours[child]) >= 3:
                holes.append(ring(child))
            child = links[child][0]
        fixed = shapely.make_valid(Polygon(ring(i), holes))
        if not fixed.is_empty and fixed.area > 0:
            polygons.append(fixed)
    return polygons
