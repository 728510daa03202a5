"""Tissue detection on a low-resolution RGB image.

The method (the usual one for H&E slides, as in CLAM and tiatoolbox's Otsu masker):

0. Working resolution: an image finer than ``work_mpp`` (8 um/px) is first reduced to it
   (area interpolation) and the result is scaled back (nearest neighbour). At 0.25-1
   um/px the gaps between fibres and nuclei would otherwise break tissue into specks,
   and the result would depend on the mask's resolution.
1. Saturation: ``S = max(R,G,B) - min(R,G,B)`` (HSV saturation without the division,
   which amplifies noise in dark and bright background). Glass is grey or white, so it has
   low saturation; stained tissue has high saturation.
2. Threshold: Otsu's threshold on ``S`` (or a fixed ``threshold``), never below
   ``min_saturation`` so that an empty slide does not become all tissue.
   Very dark pixels (``max(R,G,B) < dark_threshold``: pen marks, out-of-focus black) and
   near-white pixels (``min(R,G,B) > white_threshold``) are not tissue.
3. Morphology: opening then closing with a disc of ``kernel_um`` microns (or
   ``kernel_px`` pixels when the image has no resolution), then holes smaller than
   ``max_hole_um2`` are filled.
4. Components smaller than ``min_area_um2`` (or ``min_area_px``) are removed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from exaslide.errors import MaskError
from exaslide.slides.pixels import channel_min_max


@dataclass(frozen=True)
class TissueParams:
    """Parameters of :func:`detect_tissue`; defaults suit H&E at 8-32 um/px."""

    work_mpp: float = 8.0  #: detect at this resolution (um/px) when the image is finer
    threshold: float | None = None  #: fixed saturation threshold (0-255); None = Otsu
    min_saturation: float = 15.0  #: lower bound on the threshold (Otsu on glass is noise)
    dark_threshold: int = 30  #: max(R,G,B) below this is not tissue (pen, dirt)
    white_threshold: int = 235  #: min(R,G,B) above this is not tissue (glass)
    kernel_um: float = 16.0  #: disc diameter for opening/closing, in microns
    kernel_px: int = 3  #: disc diameter when the image has no resolution
    min_area_um2: float = 10_000.0  #: smallest tissue component kept, um^2 (0.1 mm side)
    min_area_px: int = 64  #: same when the image has no resolution
    max_hole_um2: float = 20_000.0  #: holes smaller than this are filled, um^2

    def to_dict(self) -> dict:
        """The parameters as a JSON-ready dict (saved next to outputs)."""
        return asdict(self)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """``max(R,G,B) - min(R,G,B)`` as uint8."""
    low, high = channel_min_max(rgb)
    return high - low


def detect_tissue(
    rgb: np.ndarray, mpp: float | None = None, params: TissueParams | None = None
) -> np.ndarray:
    """A boolean tissue mask for an RGB image.

    Args:
        rgb: ``(H, W, 3)`` uint8 image, typically a whole slide level of a few thousand
            pixels a side.
        mpp: microns per pixel of ``rgb``; sizes in ``params`` are in microns when given.
        params: detection parameters (defaults: :class:`TissueParams`).

    Raises:
        MaskError: the image is not ``(H, W, 3)`` uint8.
    """
    import cv2

    params = params or TissueParams()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise MaskError(f"tissue detection needs an (H, W, 3) uint8 image, got "
                        f"{rgb.shape} {rgb.dtype}")
    if mpp and mpp < params.work_mpp * 0.99:
        h, w = rgb.shape[:2]
        scale = mpp / params.work_mpp
        small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
        found = _detect(small, mpp * w / small.shape[1], params)
        return cv2.resize(found.astype(np.uint8), (w, h),
                          interpolation=cv2.INTER_NEAREST).astype(bool)
    return _detect(rgb, mpp, params)


def _detect(rgb: np.ndarray, mpp: float | None, params: TissueParams) -> np.ndarray:
    import cv2

    low, high = channel_min_max(rgb)
    sat = high - low
    not_dark = high >= params.dark_threshold
    candidate = not_dark & (low <= params.white_threshold)
    if params.threshold is not None:
        thr = float(params.threshold)
    else:  # Otsu between glass and tissue: over every pixel but the dark ones
        values = sat[not_dark] if not_dark.any() else sat.ravel()
        thr, _ = cv2.threshold(values.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = max(float(thr), params.min_saturation)
    mask = ((sat > thr) & candidate).astype(np.uint8)
    px_area = mpp * mpp if mpp else None
    diameter = _odd(params.kernel_um / mpp) if mpp else _odd(params.kernel_px)
    if diameter > 1:  # pad with background so that closing does not grow along the border
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter))
        padded = np.pad(mask, diameter)
        padded = cv2.morphologyEx(padded, cv2.MORPH_OPEN, disc)
        padded = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, disc)
        mask = np.ascontiguousarray(padded[diameter:-diameter, diameter:-diameter])
    max_hole = params.max_hole_um2 / px_area if px_area else 0
    if max_hole > 0:
        holes = _small_components(1 - mask, max_hole, keep_border=True)
        mask[holes] = 1
    min_area = params.min_area_um2 / px_area if px_area else params.min_area_px
    mask[_small_components(mask, min_area)] = 0
    return mask.astype(bool)


def _odd(size: float) -> int:
    """Nearest odd integer >= 1 (kernel sizes must be odd)."""
    n = max(1, round(size))
    return n if n % 2 else n + 1


def _small_components(mask: np.ndarray, min_area: float, keep_border: bool = False) -> np.ndarray:
    """Pixels of 8-connected components of ``mask`` smaller than ``min_area`` pixels.

    With ``keep_border`` components touching the image border are never "small" (used for
    holes: background connected to the border is not a hole).
    """
    import cv2

    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < min_area
    small[0] = False  # label 0 is the complement
    if keep_border:
        h, w = mask.shape
        x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
        touches = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
        small &= ~touches
    if not small.any() or math.isinf(min_area):
        return np.zeros(mask.shape, dtype=bool)
    return small[labels]
