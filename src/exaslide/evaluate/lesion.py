"""CAMELYON16 lesion ground truth: the evaluation mask, its ITC labels and detection hits.

This follows the official CAMELYON16 evaluation (``Evaluation_FROC.py`` of
computationalpathologygroup/Camelyon16, ``computeEvaluationMask``, ``computeITCList``,
``compute_FP_TP_Probs``), with the tumour mask rasterised from the annotations instead of
read from a mask TIFF:

1. tumour = union of ``tumour`` annotations minus union of ``exclusion`` annotations,
   rasterised exactly (pixel-centre rule, :mod:`exaslide.masks.raster`) at downsample 32
   (level 5) on a ``ceil(W / 32) x ceil(H / 32)`` grid;
2. Euclidean distance transform of the non-tumour pixels; keep ``distance < 75 / (mpp *
   32 * 2)`` (the tumour grown by 37.5 um: "75 um is the equivalent size of 5 tumour
   cells", halved as in the official code);
3. fill holes, label connected components with 8-connectivity;
4. a component is an isolated tumour cell cluster (ITC) when its major axis length
   (scikit-image ``regionprops`` definition: ``4 * sqrt(largest eigenvalue)`` of the
   covariance of its pixel coordinates) is below ``275 / (mpp * 32)`` pixels (200 um plus
   the 75 um of dilation).

A detection at level-0 ``(x, y)`` falls in mask pixel ``(floor(y / 32), floor(x / 32))``
(the original code's integer division; points outside the mask count as outside every
lesion). Inside a non-ITC lesion it is a true positive for that lesion, which keeps its
highest probability; inside an ITC it is ignored; elsewhere it is a false positive. On a
slide without tumour every detection is a false positive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from exaslide.annotations import EXCLUSION, TUMOUR, AnnotationSet
from exaslide.errors import EvaluationError
from exaslide.masks.raster import rasterize

EVALUATION_LEVEL = 5
EVALUATION_DOWNSAMPLE = 2 ** EVALUATION_LEVEL  #: 32
DILATION_UM = 75.0  #: "5 tumour cells"; the mask grows by half of it
ITC_DIAMETER_UM = 200.0  #: longest diameter of an ITC
ITC_MAJOR_AXIS_UM = ITC_DIAMETER_UM + DILATION_UM  #: 275 um, on the dilated mask


def tumour_geometry(annotations: AnnotationSet | BaseGeometry | None) -> BaseGeometry:
    """Tumour minus exclusions of an annotation set (a geometry is returned as is)."""
    if annotations is None:
        return Polygon()
    if isinstance(annotations, BaseGeometry):
        return annotations
    tumour = annotations.union(TUMOUR)
    exclusion = annotations.union(EXCLUSION)
    if tumour.is_empty or exclusion.is_empty:
        return tumour
    return shapely.difference(tumour, exclusion)


def _mpp_x(mpp: float | Sequence[float] | None) -> float:
    if mpp is None:
        raise EvaluationError("the lesion-level (FROC) evaluation needs the slide's resolution "
                              "(mpp); the heatmap metadata has none: pass mpp (--mpp)")
    value = float(mpp) if isinstance(mpp, int | float) else float(mpp[0])
    if not (math.isfinite(value) and value > 0):
        raise EvaluationError(f"mpp must be a positive number, got {mpp!r}")
    return value


@dataclass
class EvaluationMask:
    """The labelled, dilated lesion mask of one slide at the evaluation downsample.

    Only the window around the lesions is stored: ``labels[i, j]`` is mask pixel
    ``(offset[0] + i, offset[1] + j)``; every pixel outside the window is 0.

    Attributes:
        labels: int32 lesion labels (0 background, 1..n lesions) of the window.
        offset: ``(row, col)`` of the window's top-left pixel in the full mask.
        shape: ``(rows, cols)`` of the full mask.
        itc: labels of the ITC lesions.
        downsample: level-0 pixels per mask pixel (32).
        mpp: level-0 microns per pixel used for the distances.
        major_axes: major axis length in mask pixels of each label (index label - 1).
    """

    labels: np.ndarray
    offset: tuple[int, int]
    shape: tuple[int, int]
    itc: frozenset[int]
    downsample: float
    mpp: float
    major_axes: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def max_label(self) -> int:
        """Number of labelled components (ITCs included)."""
        return int(self.labels.max()) if self.labels.size else 0

    @property
    def num_lesions(self) -> int:
        """Number of lesions to detect (components that are not ITCs)."""
        return self.max_label - len(self.itc)

    def label_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Lesion label under level-0 points ``(x, y)``; 0 outside lesions or the slide."""
        cols = np.floor(np.asarray(x, dtype=np.float64) / self.downsample).astype(np.int64)
        rows = np.floor(np.asarray(y, dtype=np.float64) / self.downsample).astype(np.int64)
        rows, cols = rows - self.offset[0], cols - self.offset[1]
        height, width = self.labels.shape
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        out = np.zeros(rows.shape, dtype=np.int64)
        out[inside] = self.labels[rows[inside], cols[inside]]
        return out


def major_axis_lengths(labels: np.ndarray, count: int) -> np.ndarray:
    """``regionprops(...).major_axis_length`` of labels ``1..count``, with numpy.

    ``4 * sqrt(lambda_max)`` where ``lambda_max`` is the largest eigenvalue of the
    population covariance (divided by the pixel count) of the row/column coordinates of the
    label's pixels.
    """
    if count == 0:
        return np.zeros(0)
    rows, cols = np.nonzero(labels)
    lab = labels[rows, cols]
    rows, cols = rows.astype(np.float64), cols.astype(np.float64)
    n = np.bincount(lab, minlength=count + 1)[1:].astype(np.float64)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(lab, weights=values, minlength=count + 1)[1:] / n

    mr, mc = mean(rows), mean(cols)
    dr, dc = rows - mr[lab - 1], cols - mc[lab - 1]  # centred first: no cancellation
    var_r, var_c, cov = mean(dr * dr), mean(dc * dc), mean(dr * dc)
    half_trace = (var_r + var_c) / 2
    root = np.sqrt(((var_r - var_c) / 2) ** 2 + cov ** 2)
    return 4 * np.sqrt(np.maximum(half_trace + root, 0.0))


def evaluation_mask(annotations: AnnotationSet | BaseGeometry, level0_size: Sequence[int],
                    mpp: float | Sequence[float], *,
                    downsample: float = EVALUATION_DOWNSAMPLE) -> EvaluationMask:
    """The official CAMELYON16 evaluation mask of a slide (see the module docstring).

    Args:
        annotations: the slide's annotations (tumour minus exclusion is used) or the tumour
            geometry itself, in level-0 pixels.
        level0_size: the slide's level-0 ``(width, height)``.
        mpp: level-0 microns per pixel (a number or ``(x, y)``; x is used, as officially).
        downsample: level-0 pixels per mask pixel (32 = level 5).

    Returns:
        The labelled mask with its ITC labels.
    """
    mpp_x = _mpp_x(mpp)
    width, height = (int(v) for v in level0_size)
    shape = (math.ceil(height / downsample), math.ceil(width / downsample))
    geometry = tumour_geometry(annotations)
    empty = EvaluationMask(np.zeros((0, 0), np.int32), (0, 0), shape, frozenset(), downsample,
                           mpp_x)
    if geometry.is_empty:
        return empty
    threshold = DILATION_UM / (mpp_x * downsample * 2)
    minx, miny, maxx, maxy = geometry.bounds
    margin = math.ceil(threshold) + 2
    r0 = max(0, math.floor(miny / downsample) - margin)
    c0 = max(0, math.floor(minx / downsample) - margin)
    r1 = min(shape[0], math.ceil(maxy / downsample) + margin)
    c1 = min(shape[1], math.ceil(maxx / downsample) + margin)
    if r0 >= r1 or c0 >= c1:
        return empty
    tumour = rasterize(geometry, (r1 - r0, c1 - c0), origin=(c0 * downsample, r0 * downsample),
                       downsample=downsample)
    if not tumour.any():
        return EvaluationMask(np.zeros(tumour.shape, np.int32), (r0, c0), shape, frozenset(),
                              downsample, mpp_x)
    labels = _label_dilated(tumour, threshold)
    count = int(labels.max())
    axes = major_axis_lengths(labels, count)
    itc_threshold = ITC_MAJOR_AXIS_UM / (mpp_x * downsample)
    itc = frozenset(int(i) + 1 for i in np.flatnonzero(axes < itc_threshold))
    return EvaluationMask(labels, (r0, c0), shape, itc, downsample, mpp_x, axes)


def _label_dilated(tumour: np.ndarray, threshold: float) -> np.ndarray:
    """Distance < threshold from tumour, holes filled, 8-connected labels (int32).

    The window has at least one background pixel of margin beyond the dilation wherever it
    does not touch the slide border, so holes and components are those of the full mask.
    """
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(~tumour)
    filled = ndimage.binary_fill_holes(distance < threshold)
    labels, _ = ndimage.label(filled, structure=np.ones((3, 3), dtype=bool))
    return labels.astype(np.int32, copy=False)


@dataclass
class SlideLesions:
    """Detections of one slide matched against its evaluation mask.

    Attributes:
        slide_id: the slide.
        fp_probs: probabilities of the false-positive detections.
        tp_probs: per lesion to detect (non-ITC, in label order), the highest probability
            of a detection inside it; 0.0 when missed.
        num_lesions: lesions to detect (ITCs excluded).
        ignored: detections inside ITCs (neither true nor false positives).
        is_tumour: whether the slide has tumour ground truth.
        outcomes: per detection, ``"tp"``, ``"fp"`` or ``"itc"`` (input order).
        lesion_labels: per detection, the label hit (0 for none).
    """

    slide_id: str
    fp_probs: list[float]
    tp_probs: list[float]
    num_lesions: int
    ignored: int = 0
    is_tumour: bool = False
    outcomes: list[str] = field(default_factory=list)
    lesion_labels: list[int] = field(default_factory=list)


def _as_detections(detections) -> np.ndarray:
    array = np.asarray(detections, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 3))
    if array.ndim != 2 or array.shape[1] != 3:
        raise EvaluationError(f"detections must be (x, y, p) rows; got shape {array.shape}")
    return array


def match_detections(detections, mask: EvaluationMask | None, slide_id: str = "") -> SlideLesions:
    """Sort detections ``(x, y, p)`` (level-0 pixels) into true and false positives.

    Args:
        detections: an ``(n, 3)`` array or a sequence of ``(x, y, p)``.
        mask: the slide's evaluation mask, or None for a slide without tumour.
        slide_id: stored in the result.
    """
    dets = _as_detections(detections)
    x, y, p = dets[:, 0], dets[:, 1], dets[:, 2]
    if mask is None or mask.max_label == 0:
        return SlideLesions(slide_id, p.tolist(), [], 0, 0, mask is not None,
                            ["fp"] * len(p), [0] * len(p))
    hit = mask.label_at(x, y)
    best = np.zeros(mask.max_label + 1)
    outcomes = []
    for label, prob in zip(hit.tolist(), p.tolist(), strict=True):
        if label == 0:
            outcomes.append("fp")
        elif label in mask.itc:
            outcomes.append("itc")
        else:
            outcomes.append("tp")
            best[label] = max(best[label], prob)
    keep = [i for i in range(1, mask.max_label + 1) if i not in mask.itc]
    fp = p[hit == 0].tolist()
    return SlideLesions(slide_id, fp, best[keep].tolist(), mask.num_lesions,
                        outcomes.count("itc"), True, outcomes, hit.tolist())
