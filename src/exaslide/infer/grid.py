"""The cell grid of a heatmap, and which cells hold tissue.

Cells are squares of ``cell`` level-0 pixels from the slide's top-left corner: cell
``(r, c)`` covers ``[c*cell, (c+1)*cell) x [r*cell, (r+1)*cell)``, and there are
``ceil(W / cell)`` columns and ``ceil(H / cell)`` rows. A cell's value is the model's output
for the patch centred on the cell centre, whose side is the patch footprint (the patch
size in level-0 pixels). A cell is computed when at least ``min_tissue`` of its patch is
tissue on a low-resolution tissue mask (:func:`exaslide.masks.tissue.detect_tissue`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from exaslide.masks.tissue import TissueParams, detect_tissue
from exaslide.patches.spec import PatchSpec
from exaslide.slides.base import Slide

#: Resolution of the tissue mask (um/px) when the slide has one (as ``exaslide mask``).
TISSUE_MPP = 8.0
#: Longest side of the tissue image when the slide has no resolution metadata.
TISSUE_SIDE = 2048
#: The tissue image never exceeds this side (bounded memory on any slide).
MAX_TISSUE_SIDE = 4096


@dataclass
class CellGrid:
    """The cells of one slide's heatmap and the patches to compute.

    Attributes:
        cell: cell side in level-0 pixels (the grid stride).
        footprint: patch side in level-0 pixels.
        rows, cols: heatmap shape.
        index_r, index_c: row and column of every cell to compute, in raster order.
        xs, ys: level-0 top-left corner of each of those cells' patches.
        tissue_fraction: tissue share of each of those patches.
        image: the low-resolution RGB image the tissue was detected on.
        tissue: its boolean tissue mask.
    """

    cell: int
    footprint: float
    rows: int
    cols: int
    index_r: np.ndarray
    index_c: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    tissue_fraction: np.ndarray
    image: np.ndarray
    tissue: np.ndarray

    def __len__(self) -> int:
        return len(self.xs)


def tissue_downsample(slide: Slide, footprint: float) -> float:
    """Level-0 pixels per tissue-mask pixel: about :data:`TISSUE_MPP` um/px (a quarter of a
    patch at most, so each patch spans a few mask pixels), never more than
    :data:`MAX_TISSUE_SIDE` pixels a side."""
    width, height = slide.dimensions
    target = TISSUE_MPP / slide.mpp[0] if slide.mpp else max(width, height) / TISSUE_SIDE
    target = min(target, footprint / 4.0)
    return max(target, max(width, height) / MAX_TISSUE_SIDE, 1.0)


def plan_grid(slide: Slide, spec: PatchSpec, stride: int | None = None,
              min_tissue: float = 0.1, tissue: TissueParams | None = None) -> CellGrid:
    """Lay the cell grid over ``slide`` and keep the cells whose patch holds tissue.

    Args:
        slide: the open slide.
        spec: the model's patch size and resolution.
        stride: cell side in level-0 pixels (default: the patch footprint, rounded: the
            patches tile the slide without overlap).
        min_tissue: smallest tissue share of a patch for its cell to be computed (a patch
            with no tissue at all never is).
        tissue: tissue-detection parameters.
    """
    spec.validate()
    footprint = float(spec.footprint(slide))
    cell = int(stride) if stride else max(1, round(footprint))
    if cell < 1:
        raise ValueError(f"stride must be at least 1 level-0 pixel, got {stride}")
    width, height = slide.dimensions
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    downsample = tissue_downsample(slide, footprint)
    image = slide.read_downsampled(downsample)
    scale_x, scale_y = width / image.shape[1], height / image.shape[0]
    mask_mpp = slide.mpp[0] * scale_x if slide.mpp else None
    mask = detect_tissue(image, mpp=mask_mpp, params=tissue)
    fraction = _patch_tissue(mask, cell, footprint, rows, cols, (scale_x, scale_y))
    keep = (fraction > 0) & (fraction >= min_tissue)
    index_r, index_c = np.nonzero(keep)  # raster order
    half = footprint / 2.0
    xs = np.floor((index_c + 0.5) * cell - half + 0.5).astype(np.int64)
    ys = np.floor((index_r + 0.5) * cell - half + 0.5).astype(np.int64)
    return CellGrid(cell=cell, footprint=footprint, rows=rows, cols=cols, index_r=index_r,
                    index_c=index_c, xs=xs, ys=ys, tissue_fraction=fraction[keep],
                    image=image, tissue=mask)


def _patch_tissue(mask: np.ndarray, cell: int, footprint: float, rows: int, cols: int,
                  scale: tuple[float, float]) -> np.ndarray:
    """Tissue share of the patch of every cell, ``(rows, cols)`` (outside the slide counts
    as no tissue), from a summed-area table of the mask."""
    h, w = mask.shape
    table = np.zeros((h + 1, w + 1), np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)

    def bounds(n: int, step: float, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo = (np.arange(n) + 0.5) * cell - footprint / 2.0
        a = np.floor(lo / step).astype(np.int64)
        b = np.maximum(np.ceil((lo + footprint) / step).astype(np.int64), a + 1)
        return np.clip(a, 0, limit), np.clip(b, 0, limit), b - a

    x0, x1, span_x = bounds(cols, scale[0], w)
    y0, y1, span_y = bounds(rows, scale[1], h)
    inside = (table[np.ix_(y1, x1)] - table[np.ix_(y0, x1)] - table[np.ix_(y1, x0)]
              + table[np.ix_(y0, x0)])
    return inside / np.outer(span_y, span_x).astype(np.float64)
