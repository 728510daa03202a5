"""Label masks: background / normal tissue / tumour at any level or resolution.

Classes (the values stored in every mask file):

- ``0`` background: no tissue and no tumour annotation.
- ``1`` normal tissue: detected tissue outside the tumour class.
- ``2`` tumour: inside an annotation labelled ``tumour`` and outside every annotation
  labelled ``exclusion`` (CAMELYON16 ``_2``), whether or not tissue was detected there.

Pixels follow the grid convention of :mod:`exaslide.masks.raster` (pixel centres).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import shapely

from exaslide.errors import MaskError
from exaslide.masks.raster import fill_polygon
from exaslide.masks.tissue import TissueParams, detect_tissue
from exaslide.slides.base import MAX_READ_PIXELS, Slide

logger = logging.getLogger(__name__)

BACKGROUND, NORMAL, TUMOUR = 0, 1, 2
CLASS_NAMES = {BACKGROUND: "background", NORMAL: "normal", TUMOUR: "tumour"}


@dataclass
class LabelMask:
    """A label mask with the slide image it was computed from.

    Attributes:
        labels: ``(H, W)`` uint8 array of 0 / 1 / 2.
        tissue: ``(H, W)`` bool tissue detection (before tumour is painted over it).
        image: ``(H, W, 3)`` RGB slide image at the same resolution.
        downsample: level-0 pixels per mask pixel.
        mpp: microns per mask pixel ``(x, y)``, or ``None`` without slide resolution.
        level: the slide level read, when the mask was requested by level.
        unused_labels: annotation labels that are neither tumour nor exclusion.
        outside: names of area annotations entirely outside the slide (ignored).
        partly_outside: names of area annotations that cross the slide's border (clipped).
    """

    labels: np.ndarray
    tissue: np.ndarray
    image: np.ndarray
    downsample: float
    mpp: tuple[float, float] | None
    level: int | None = None
    unused_labels: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    partly_outside: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Pixel count per class name."""
        values = np.bincount(self.labels.ravel(), minlength=3)
        return {CLASS_NAMES[k]: int(values[k]) for k in CLASS_NAMES}

    def areas_um2(self) -> dict[str, float] | None:
        """Area per class in um^2 (pixel count x pixel area), or ``None`` without mpp."""
        if self.mpp is None:
            return None
        pixel = self.mpp[0] * self.mpp[1]
        return {name: n * pixel for name, n in self.counts().items()}


def make_label_mask(
    slide: Slide,
    annotations=None,
    *,
    level: int | None = None,
    mpp: float | None = None,
    downsample: float | None = None,
    tissue: TissueParams | None = None,
) -> LabelMask:
    """Compute the label mask of a slide at one level or resolution.

    Args:
        slide: an open slide.
        annotations: an :class:`~exaslide.annotations.AnnotationSet` (or ``None`` for a
            slide without annotations: tissue becomes normal tissue).
        level: the level to compute the mask at; or
        mpp: the resolution in microns per pixel (e.g. 8.0); or
        downsample: level-0 pixels per mask pixel (works without slide resolution).
        tissue: tissue-detection parameters.

    Raises:
        MaskError: not exactly one of ``level`` / ``mpp`` / ``downsample``, or a mask too
            large to hold.
    """
    if sum(v is not None for v in (level, mpp, downsample)) != 1:
        raise MaskError("give exactly one of level=, mpp= or downsample= for the mask "
                        "resolution")
    w0, h0 = slide.dimensions
    if level is not None:
        slide.check_level(level)
        downsample = slide.level_downsamples[level]
        width, height = slide.level_dimensions[level]
    else:
        if mpp is not None:
            slide.best_level(mpp=mpp)  # validates mpp against the slide's levels
            downsample = mpp / slide.mpp[0]
        width, height = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
    if width * height > MAX_READ_PIXELS // 4:
        raise MaskError(
            f"{slide.path}: a {width}x{height} mask is too large; choose a coarser level "
            f"or mpp ({slide.describe_levels()})"
        )
    image = slide.read_level(level) if level is not None else \
        slide.read_downsampled(downsample)
    mask_mpp = (slide.mpp[0] * downsample, slide.mpp[1] * downsample) if slide.mpp else None
    tissue_mask = detect_tissue(image, mask_mpp[0] if mask_mpp else None, tissue)
    labels = tissue_mask.astype(np.uint8) * NORMAL
    result = LabelMask(labels, tissue_mask, image, downsample, mask_mpp, level)
    if annotations is not None:
        tumour = _fill_label(annotations, "tumour", labels.shape, downsample)
        tumour &= ~_fill_label(annotations, "exclusion", labels.shape, downsample)
        labels[tumour] = TUMOUR
        _check_annotations(result, annotations, slide)
    return result


def _check_annotations(result: LabelMask, annotations, slide: Slide) -> None:
    """Record and log annotations the mask cannot use: unmapped labels, outside the slide."""
    areas = [a for a in annotations if a.is_area and not a.geometry.is_empty]
    result.unused_labels = sorted({a.label or "(none)" for a in areas
                                   if a.label not in ("tumour", "exclusion")})
    if result.unused_labels:
        logger.warning("%s: annotations labelled %s are not used in the mask; map their "
                       "groups to tumour or exclusion with a label map", slide.path,
                       ", ".join(result.unused_labels))
    frame = shapely.box(0, 0, *slide.dimensions)
    for a in areas:
        if not a.geometry.intersects(frame):
            result.outside.append(a.name)
        elif not frame.contains(a.geometry):
            result.partly_outside.append(a.name)
    if result.outside or result.partly_outside:
        logger.warning("%s: %d annotation(s) lie entirely outside the %dx%d slide (ignored) "
                       "and %d cross its border (clipped); check that the annotation file "
                       "belongs to this slide", slide.path, len(result.outside),
                       *slide.dimensions, len(result.partly_outside))


def _fill_label(annotations, label: str, shape: tuple[int, int], downsample: float) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for ann in annotations:
        if ann.label == label and ann.is_area:
            fill_polygon(mask, ann.geometry, downsample=downsample, value=True)
    return mask


def annotation_area_um2(annotations, mpp: tuple[float, float] | None,
                        dimensions: tuple[int, int] | None = None) -> float | None:
    """Exact area of (tumour minus exclusion) from the geometries, in um^2, within the
    slide's ``dimensions`` when given (what the mask can show)."""
    if annotations is None or mpp is None:
        return None
    tumour = shapely.union_all([a.geometry for a in annotations
                                if a.label == "tumour" and a.is_area])
    excluded = shapely.union_all([a.geometry for a in annotations
                                  if a.label == "exclusion" and a.is_area])
    region = shapely.difference(tumour, excluded)
    if dimensions is not None:
        region = shapely.intersection(region, shapely.box(0, 0, *dimensions))
    return float(region.area * mpp[0] * mpp[1])
