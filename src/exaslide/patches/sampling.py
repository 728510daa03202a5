"""Patch samplers: full grid coverage and random per class, with label rules.

Both samplers work on the slide's label mask (:func:`exaslide.masks.make_label_mask`)
computed at ``mask_resolution`` mask pixels per patch side (8 by default, so a 256-px
level-0 patch is measured on a 32x downsampled mask). A patch's ``tissue_fraction`` and
``tumour_fraction`` are the fractions of its mask pixels that are tissue (normal or
tumour) and tumour, read from integral images, so millions of candidate positions cost a
few array operations.

Labels (``label_rule``):

- ``centre``: ``tumour`` when the mask pixel under the patch centre is tumour, otherwise
  ``normal``;
- ``fraction``: ``tumour`` when ``tumour_fraction >= tumour_threshold``, otherwise
  ``normal``.

Patches with ``tissue_fraction < min_tissue`` are rejected: tissue detection excludes glass
(white) and near-black pixels, so this is the blank / white / black test at sampling time
(extraction adds a pixel test, see :mod:`exaslide.patches.reader`).
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from exaslide.masks import TUMOUR, LabelMask, TissueParams, make_label_mask
from exaslide.patches.spec import PatchSpec, SamplingOptions
from exaslide.slides.base import Slide

logger = logging.getLogger(__name__)

CLASSES = ("tumour", "normal")
#: Largest label mask used for sampling (32 M pixels: about 0.4 GB with its integral
#: images); beyond it the mask gets coarser than ``mask_resolution`` per patch.
MAX_MASK_PIXELS = 1 << 25


@dataclass
class SampledPatches:
    """Patch positions of one slide with their measurements.

    Attributes:
        x, y: top-left corners in level-0 pixels (int64), sorted by (y, x).
        label: ``"tumour"`` or ``"normal"`` per patch.
        tissue_fraction, tumour_fraction: measured on the label mask (float32).
        footprint: patch side in level-0 pixels.
        requested, found: per class, for the random sampler (empty for the grid).
        mask: the label mask the patches were measured on.
    """

    x: np.ndarray
    y: np.ndarray
    label: np.ndarray
    tissue_fraction: np.ndarray
    tumour_fraction: np.ndarray
    footprint: float
    requested: dict[str, int] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)
    mask: LabelMask | None = None

    def __len__(self) -> int:
        return len(self.x)

    def counts(self) -> dict[str, int]:
        """Patches per label."""
        return {c: int((self.label == c).sum()) for c in CLASSES}


def _integral(flags: np.ndarray) -> np.ndarray:
    """The summed-area table of a boolean mask, padded with a zero row and column
    (OpenCV's ``integral``, ~4x the two NumPy cumsums; NumPy where counts could pass
    int32)."""
    if flags.size < 2**31 - 1 and max(flags.shape) < 2**30:
        import cv2

        return cv2.integral(flags.view(np.uint8), sdepth=cv2.CV_32S)
    return np.pad(flags.cumsum(0, dtype=np.int64).cumsum(1, dtype=np.int64),
                  ((1, 0), (1, 0)))


class _Coverage:
    """Integral images of the label mask: tissue and tumour fractions of any box."""

    def __init__(self, mask: LabelMask, footprint: float):
        self.labels = mask.labels
        self.d = mask.downsample
        self.f = footprint
        self.tissue = _integral(mask.labels > 0)
        self.tumour = _integral(mask.labels == TUMOUR)

    def _box(self, x: np.ndarray, y: np.ndarray):
        h, w = self.labels.shape
        x0 = np.clip(np.floor(x / self.d + 0.5).astype(np.int64), 0, w)
        y0 = np.clip(np.floor(y / self.d + 0.5).astype(np.int64), 0, h)
        x1 = np.clip(np.floor((x + self.f) / self.d + 0.5).astype(np.int64), 0, w)
        y1 = np.clip(np.floor((y + self.f) / self.d + 0.5).astype(np.int64), 0, h)
        x1, y1 = np.maximum(x1, np.minimum(x0 + 1, w)), np.maximum(y1, np.minimum(y0 + 1, h))
        return x0, y0, x1, y1

    def fractions(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x0, y0, x1, y1 = self._box(x, y)
        area = np.maximum((x1 - x0) * (y1 - y0), 1)

        def total(ii):
            return ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]

        return ((total(self.tissue) / area).astype(np.float32),
                (total(self.tumour) / area).astype(np.float32))

    def centre_is_tumour(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        h, w = self.labels.shape
        cx = np.clip(((x + self.f / 2) / self.d).astype(np.int64), 0, w - 1)
        cy = np.clip(((y + self.f / 2) / self.d).astype(np.int64), 0, h - 1)
        return self.labels[cy, cx] == TUMOUR


def label_mask_for_patches(slide: Slide, annotations, spec: PatchSpec,
                           options: SamplingOptions,
                           tissue: TissueParams | None = None) -> LabelMask:
    """The label mask at ``options.mask_resolution`` pixels per patch side, coarser when
    that would exceed :data:`MAX_MASK_PIXELS` (small patches on huge slides)."""
    w0, h0 = slide.dimensions
    downsample = max(1.0, spec.footprint(slide) / options.mask_resolution,
                     math.sqrt(w0 * h0 / MAX_MASK_PIXELS))
    return make_label_mask(slide, annotations, downsample=downsample, tissue=tissue)


def sample_patches(slide: Slide, annotations, spec: PatchSpec, options: SamplingOptions,
                   *, key: str = "", tissue: TissueParams | None = None,
                   region=None) -> SampledPatches:
    """Choose and label the patches of one slide.

    Args:
        slide: an open slide.
        annotations: its :class:`~exaslide.annotations.AnnotationSet`, or ``None``.
        spec: patch size and resolution.
        options: sampler, label rule, thresholds, seed.
        key: mixed into the random seed so that slides of a cohort differ (the slide id).
        tissue: tissue-detection parameters.
        region: optional shapely geometry (level-0 pixels); the grid keeps only patches
            whose centre is inside it.
    """
    spec.validate()
    options.validate()
    footprint = spec.footprint(slide)
    mask = label_mask_for_patches(slide, annotations, spec, options, tissue)
    coverage = _Coverage(mask, footprint)
    if options.sampler == "grid":
        result = _grid(slide, spec, options, coverage, footprint, region)
    else:
        rng = np.random.default_rng([options.seed, zlib.crc32(key.encode())])
        result = _random(slide, options, coverage, footprint, rng)
    result.mask = mask
    return result


def _label(options: SamplingOptions, coverage: _Coverage, x, y, tumour_fraction):
    if options.label_rule == "centre":
        is_tumour = coverage.centre_is_tumour(x, y)
    else:
        is_tumour = tumour_fraction >= options.tumour_threshold
    return np.where(is_tumour, "tumour", "normal")


def _grid(slide, spec, options, coverage, footprint, region) -> SampledPatches:
    w0, h0 = slide.dimensions
    step = (options.stride or spec.size) * footprint / spec.size
    nx = max(0, math.floor((w0 - footprint) / step + 1e-9) + 1)
    ny = max(0, math.floor((h0 - footprint) / step + 1e-9) + 1)
    ys, xs = np.meshgrid(np.floor(np.arange(ny) * step + 0.5).astype(np.int64),
                         np.floor(np.arange(nx) * step + 0.5).astype(np.int64), indexing="ij")
    x, y = xs.ravel(), ys.ravel()
    tissue_fraction, tumour_fraction = coverage.fractions(x, y)
    keep = tissue_fraction >= options.min_tissue
    if region is not None:
        import shapely

        keep &= shapely.contains_xy(region, x + footprint / 2, y + footprint / 2)
    x, y = x[keep], y[keep]
    tissue_fraction, tumour_fraction = tissue_fraction[keep], tumour_fraction[keep]
    label = _label(options, coverage, x, y, tumour_fraction)
    return SampledPatches(x, y, label, tissue_fraction, tumour_fraction, footprint)


def _random(slide, options, coverage, footprint, rng) -> SampledPatches:
    labels = coverage.labels
    parts, found = [], {}
    for name, value in (("tumour", TUMOUR), ("normal", 1)):
        rows, cols = np.nonzero(labels == value)
        order = rng.permutation(len(rows))  # at most one patch centre per mask pixel
        kept = [_candidates(slide, options, coverage, footprint, rng, name, rows[:0], cols[:0])]
        batch = 4 * options.per_class  # try in batches until the quota or the class is used up
        for start in range(0, len(order), batch):
            picked = _candidates(slide, options, coverage, footprint, rng, name,
                                 rows[order[start : start + batch]],
                                 cols[order[start : start + batch]])
            kept.append(picked)
            if sum(len(p[0]) for p in kept) >= options.per_class:
                break
        columns = [np.concatenate(c)[: options.per_class] for c in zip(*kept, strict=True)]
        found[name] = len(columns[0])
        if found[name] < options.per_class:
            logger.info("%s: %d of %d %s patches (the class has less area)", slide.path,
                        found[name], options.per_class, name)
        parts.append(columns)
    x, y, label, tissue_fraction, tumour_fraction = (np.concatenate(c) for c in zip(*parts,
                                                                                   strict=True))
    order = np.lexsort((x, y))  # raster order: what extraction reads fastest
    return SampledPatches(x[order], y[order], label[order], tissue_fraction[order],
                          tumour_fraction[order], footprint,
                          {c: options.per_class for c in CLASSES}, found)


def _candidates(slide, options, coverage, footprint, rng, name, rows, cols):
    """Patches centred (with a sub-pixel jitter) on the given mask pixels that the label
    rule gives class ``name`` and that have enough tissue."""
    w0, h0 = slide.dimensions
    d = coverage.d
    jitter = rng.random((len(rows), 2))
    cx, cy = (cols + jitter[:, 0]) * d, (rows + jitter[:, 1]) * d
    x = np.clip(np.floor(cx - footprint / 2 + 0.5), 0, max(0, w0 - footprint)).astype(np.int64)
    y = np.clip(np.floor(cy - footprint / 2 + 0.5), 0, max(0, h0 - footprint)).astype(np.int64)
    tissue_fraction, tumour_fraction = coverage.fractions(x, y)
    label = _label(options, coverage, x, y, tumour_fraction)
    keep = (label == name) & (tissue_fraction >= options.min_tissue)
    return x[keep], y[keep], label[keep], tissue_fraction[keep], tumour_fraction[keep]
