"""CAMELYON17 slide (lymph node) classes from tumour-probability heatmaps.

The approach that won CAMELYON17: each slide's heatmap (written by ``exaslide infer``,
read with :func:`exaslide.heatmaps.read_heatmap`) is summarised by a fixed vector of
features (:data:`FEATURE_NAMES`), and a scikit-learn random forest or gradient-boosting
classifier maps them to ``negative`` / ``itc`` / ``micro`` / ``macro``.

Features (all in physical units, from the heatmap's cell size and level-0 mpp):

- over the tissue (the finite cells): ``max_prob``, ``mean_prob``, ``p99_prob``,
  ``tissue_area_um2`` and ``expected_tumour_area_um2`` (sum of probability x cell area);
- at each threshold of :data:`THRESHOLDS` (prefix ``t50_``, ``t90_``), over the
  8-connected regions of cells with probability >= threshold: ``regions`` (their number),
  ``largest_area_um2`` (the largest region's area), ``largest_major_axis_um`` (its
  scikit-image major axis length, :func:`exaslide.evaluate.lesion.major_axis_lengths`),
  ``max_diameter_um`` (the longest diameter of any region: the largest distance between
  two of its cell centres plus one cell), ``total_area_um2`` and ``tumour_fraction``
  (total area / tissue area).

Without training data, :func:`rule_slide_class` applies the definitions directly: the
longest region diameter at one threshold against the 0.2 / 2.0 mm limits.

A trained classifier is saved as ``slide_classifier.joblib`` (with its ``.sha256``
sidecar, :mod:`exaslide.integrity`) and ``slide_classifier.json`` (written last: the
feature set, classes and training summary). Loading refuses a model of another feature
set or format version. The ``.joblib`` file is a pickle: load only models you trust.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.errors import EvaluationError
from exaslide.evaluate.camelyon17 import SLIDE_CLASSES, slide_class_from_lesions
from exaslide.heatmaps import Heatmap

logger = logging.getLogger(__name__)

FEATURE_SET = "camelyon17-heatmap-v1"  #: changes whenever a feature changes
FORMAT = "exaslide-slide-classifier"
FORMAT_VERSION = 1
THRESHOLDS = (0.5, 0.9)
ESTIMATORS = ("random-forest", "gradient-boosting")
MODEL_FILE = "slide_classifier.joblib"
META_FILE = "slide_classifier.json"
_GLOBAL_FEATURES = ("max_prob", "mean_prob", "p99_prob", "tissue_area_um2",
                    "expected_tumour_area_um2")
_REGION_FEATURES = ("regions", "largest_area_um2", "largest_major_axis_um", "max_diameter_um",
                    "total_area_um2", "tumour_fraction")
FEATURE_NAMES = _GLOBAL_FEATURES + tuple(f"t{round(t * 100)}_{name}" for t in THRESHOLDS
                                         for name in _REGION_FEATURES)
_TOLERANCE = 1e-3  # probabilities a little outside [0, 1] (float rounding) are accepted


# --------------------------------------------------------------------------- features


def _cell_um(heatmap: Heatmap, mpp: float | Sequence[float] | None) -> tuple[float, float]:
    """``(x, y)`` side of one heatmap cell in microns."""
    value = mpp if mpp is not None else heatmap.mpp
    if value is None:
        raise EvaluationError(f"{heatmap.path or heatmap.slide_id}: the heatmap has no mpp, "
                              "needed to measure regions in microns; pass mpp (--mpp)")
    mx, my = (value, value) if isinstance(value, int | float) else value
    if not all(math.isfinite(float(v)) and float(v) > 0 for v in (mx, my)):
        raise EvaluationError(f"mpp must be a positive number, got {value!r}")
    return heatmap.cell * float(mx), heatmap.cell * float(my)


def _probabilities(heatmap: Heatmap) -> np.ndarray:
    """The map with NaN outside tissue, checked to hold probabilities."""
    probs = np.asarray(heatmap.probabilities, dtype=np.float64)
    finite = probs[np.isfinite(probs)]
    if finite.size and (finite.min() < -_TOLERANCE or finite.max() > 1 + _TOLERANCE):
        raise EvaluationError(f"{heatmap.path or heatmap.slide_id}: values from "
                              f"{finite.min():.3g} to {finite.max():.3g} are not probabilities "
                              "(expected 0..1; a heatmap of logits?)")
    probs = np.where(np.isinf(probs), np.nan, probs)
    return np.clip(probs, 0.0, 1.0)


@dataclass
class Regions:
    """Connected regions of heatmap cells at or above a threshold.

    Attributes:
        count: number of 8-connected regions.
        areas_um2: area of each region (label order).
        major_axes_um: scikit-image major axis length of each region, in microns.
        max_diameter_um: longest diameter of any region (0 without regions).
    """

    count: int
    areas_um2: np.ndarray
    major_axes_um: np.ndarray
    max_diameter_um: float


def _feret_um(rows: np.ndarray, cols: np.ndarray, cell: tuple[float, float]) -> float:
    """Largest distance between two cell centres of a region, plus one cell."""
    import shapely
    from scipy.spatial.distance import pdist

    points = np.unique(np.column_stack([cols * cell[0], rows * cell[1]]), axis=0)
    extra = (cell[0] + cell[1]) / 2
    if len(points) == 1:
        return extra
    hull = shapely.get_coordinates(shapely.multipoints(points).convex_hull)
    return float(pdist(hull).max()) + extra


def _max_diameter(labels: np.ndarray, count: int, cell: tuple[float, float]) -> float:
    """The longest region diameter; regions are visited by decreasing bounding-box
    diagonal, which bounds their diameter, so most are never measured."""
    from scipy import ndimage

    boxes = ndimage.find_objects(labels, count)
    bounds = []
    for label, box in enumerate(boxes, start=1):
        h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
        bounds.append((math.hypot((h - 1) * cell[1], (w - 1) * cell[0])
                       + (cell[0] + cell[1]) / 2, label, box))
    best = 0.0
    for bound, label, box in sorted(bounds, key=lambda b: -b[0]):
        if bound <= best:
            break
        rows, cols = np.nonzero(labels[box] == label)
        best = max(best, _feret_um(rows + box[0].start, cols + box[1].start, cell))
    return best


def heatmap_regions(heatmap: Heatmap, threshold: float = 0.5, *,
                    mpp: float | Sequence[float] | None = None) -> Regions:
    """The 8-connected regions of cells with probability >= ``threshold``.

    Args:
        heatmap: a heatmap (:func:`exaslide.heatmaps.read_heatmap`).
        threshold: lowest probability of a tumour cell.
        mpp: level-0 microns per pixel, overriding the heatmap's own.

    Raises:
        EvaluationError: no mpp, or values that are not probabilities.
    """
    from scipy import ndimage

    from exaslide.evaluate.lesion import major_axis_lengths

    cell = _cell_um(heatmap, mpp)
    probs = _probabilities(heatmap)
    with np.errstate(invalid="ignore"):
        mask = np.nan_to_num(probs, nan=-1.0) >= threshold
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return Regions(0, np.zeros(0), np.zeros(0), 0.0)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:] * cell[0] * cell[1]
    axes = major_axis_lengths(labels, count) * math.sqrt(cell[0] * cell[1])
    return Regions(count, areas.astype(np.float64), axes, _max_diameter(labels, count, cell))


def heatmap_features(heatmap: Heatmap, *, mpp: float | Sequence[float] | None = None
                     ) -> dict[str, float]:
    """The features of one heatmap, keyed and ordered as :data:`FEATURE_NAMES`.

    A heatmap without tissue (all NaN) gives zeros.

    Raises:
        EvaluationError: no mpp (in the heatmap or given), or values outside 0..1.
    """
    cell = _cell_um(heatmap, mpp)
    probs = _probabilities(heatmap)
    tissue = probs[np.isfinite(probs)]
    cell_area = cell[0] * cell[1]
    features = dict.fromkeys(FEATURE_NAMES, 0.0)
    if tissue.size:
        features.update(max_prob=float(tissue.max()), mean_prob=float(tissue.mean()),
                        p99_prob=float(np.percentile(tissue, 99)),
                        tissue_area_um2=float(tissue.size * cell_area),
                        expected_tumour_area_um2=float(tissue.sum() * cell_area))
    for threshold in THRESHOLDS:
        regions = heatmap_regions(heatmap, threshold, mpp=mpp)
        prefix = f"t{round(threshold * 100)}_"
        if regions.count == 0:
            continue
        largest = int(np.argmax(regions.areas_um2))
        total = float(regions.areas_um2.sum())
        features.update({
            f"{prefix}regions": float(regions.count),
            f"{prefix}largest_area_um2": float(regions.areas_um2[largest]),
            f"{prefix}largest_major_axis_um": float(regions.major_axes_um[largest]),
            f"{prefix}max_diameter_um": regions.max_diameter_um,
            f"{prefix}total_area_um2": total,
            f"{prefix}tumour_fraction": total / features["tissue_area_um2"]
            if features["tissue_area_um2"] else 0.0,
        })
    return features


def largest_diameter_mm(heatmap: Heatmap, threshold: float = 0.5, *,
                        mpp: float | Sequence[float] | None = None) -> float:
    """Longest diameter in mm of the heatmap's regions at ``threshold`` (0 without any)."""
    return heatmap_regions(heatmap, threshold, mpp=mpp).max_diameter_um / 1000.0


def rule_slide_class(heatmap: Heatmap, threshold: float = 0.5, *,
                     mpp: float | Sequence[float] | None = None) -> str:
    """The slide class without a trained model: the CAMELYON17 definitions
    (:func:`exaslide.evaluate.camelyon17.slide_class_from_lesions`) applied to the longest
    region diameter at ``threshold`` (``negative`` without regions, ``itc`` up to 0.2 mm,
    ``micro`` up to 2.0 mm, ``macro`` beyond).

    The regions of a heatmap are the lesions grown by the blur of the patch footprint, so
    this rule is exact only on sharp maps; a trained :class:`SlideClassifier` learns the
    offset."""
    return slide_class_from_lesions([largest_diameter_mm(heatmap, threshold, mpp=mpp)])


def feature_matrix(rows: Sequence[Mapping[str, float]]) -> np.ndarray:
    """Rows of features (dicts of :data:`FEATURE_NAMES`) as an ``(n, features)`` array."""
    try:
        return np.array([[float(r[name]) for name in FEATURE_NAMES] for r in rows],
                        dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))
    except KeyError as exc:
        raise EvaluationError(f"feature {exc.args[0]!r} missing: features must come from "
                              f"heatmap_features ({FEATURE_SET})") from exc


def check_slide_class(value: str, where: str) -> str:
    """``value`` as one of :data:`SLIDE_CLASSES` (case-insensitive), or an error naming
    ``where``."""
    cls = str(value).strip().lower()
    if cls not in SLIDE_CLASSES:
        raise EvaluationError(f"{where}: unknown slide class {value!r}; use one of "
                              f"{', '.join(SLIDE_CLASSES)}")
    return cls


# --------------------------------------------------------------------------- classifier


def _estimator(name: str, seed: int):
    if name == "random-forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=200, min_samples_leaf=1, random_state=seed,
                                      n_jobs=1)
    if name == "gradient-boosting":
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(n_estimators=150, max_depth=3, learning_rate=0.1,
                                          random_state=seed)
    raise EvaluationError(f"unknown estimator {name!r}; use one of {', '.join(ESTIMATORS)}")


@dataclass
class SlideClassifier:
    """A fitted slide classifier over :data:`FEATURE_NAMES`.

    Attributes:
        estimator: the fitted scikit-learn classifier.
        classes: the classes it was trained on (a subset of :data:`SLIDE_CLASSES`).
        meta: what ``slide_classifier.json`` holds (estimator, seed, training summary...).
    """

    estimator: Any
    classes: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Probabilities ``(n, 4)`` in :data:`SLIDE_CLASSES` order (0 for classes absent
        from training)."""
        if not rows:
            return np.zeros((0, len(SLIDE_CLASSES)))
        proba = self.estimator.predict_proba(feature_matrix(rows))
        out = np.zeros((len(rows), len(SLIDE_CLASSES)))
        for j, cls in enumerate(self.estimator.classes_):
            out[:, SLIDE_CLASSES.index(str(cls))] = proba[:, j]
        return out

    def predict(self, rows: Sequence[Mapping[str, float]]) -> list[str]:
        """The most probable class of each row of features."""
        proba = self.predict_proba(rows)
        return [SLIDE_CLASSES[i] for i in np.argmax(proba, axis=1)]

    def predict_heatmap(self, heatmap: Heatmap, *,
                        mpp: float | Sequence[float] | None = None) -> str:
        """The class of one heatmap."""
        return self.predict([heatmap_features(heatmap, mpp=mpp)])[0]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``slide_classifier.joblib`` (+ ``.sha256``) then ``slide_classifier.json``
        into ``folder``, each atomically. Returns the JSON path."""
        return _save(self, Path(folder))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> SlideClassifier:
        """Read a classifier saved by :meth:`save`.

        Raises:
            EvaluationError: not a classifier folder, another feature set or format
                version, a corrupt or mismatched ``.joblib`` file.
        """
        return _load(Path(folder))


def _save(classifier: SlideClassifier, folder: Path) -> Path:
    import joblib
    import sklearn

    from exaslide import __version__
    from exaslide.integrity import atomic_write, file_digest
    from exaslide.jsonio import write_json

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / MODEL_FILE) as tmp:
        joblib.dump(classifier.estimator, tmp)
        digest = file_digest(tmp)
    meta = {**classifier.meta, "format": FORMAT, "format_version": FORMAT_VERSION,
            "feature_set": FEATURE_SET, "feature_names": list(FEATURE_NAMES),
            "thresholds": list(THRESHOLDS), "classes": list(classifier.classes),
            "model_file": MODEL_FILE, "model_sha256": digest,
            "sklearn_version": sklearn.__version__, "exaslide_version": __version__}
    classifier.meta = meta
    return write_json(folder / META_FILE, meta, allow_nan=False)


def _read_meta(folder: Path) -> dict[str, Any]:
    import json

    path = folder / META_FILE
    if not path.is_file():
        raise EvaluationError(f"{folder}: no {META_FILE}: not a slide classifier (train one "
                              "with `exaslide stage train`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: cannot read the classifier metadata: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise EvaluationError(f"{path}: not an exaslide slide classifier (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    version, features = meta.get("format_version"), meta.get("feature_set")
    if version != FORMAT_VERSION or features != FEATURE_SET or \
            meta.get("feature_names") != list(FEATURE_NAMES):
        raise EvaluationError(f"{path}: a classifier of feature set {features!r} (format "
                              f"{version!r}); this exaslide computes {FEATURE_SET!r} (format "
                              f"{FORMAT_VERSION}): retrain it with `exaslide stage train`")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or \
            any(c not in SLIDE_CLASSES for c in classes):
        raise EvaluationError(f"{path}: classes {classes!r} are not slide classes "
                              f"({', '.join(SLIDE_CLASSES)})")
    return meta


#: Set to 1 to load model pickles whatever their owner and permissions.
TRUST_ENV = "EXASLIDE_TRUST_MODELS"


def check_trusted(path: Path) -> None:
    """A pickle runs code when it is loaded: load one only when this user (or root) owns it
    and nobody else may have written it, unless :data:`TRUST_ENV` is ``1``.

    Raises:
        EvaluationError: another owner, or writable by group or others.
    """
    if os.environ.get(TRUST_ENV) == "1" or not hasattr(os, "getuid"):
        return
    found = path.stat()
    if found.st_uid not in (os.getuid(), 0) or found.st_mode & 0o022:
        raise EvaluationError(
            f"{path}: owned by another user or writable by others; a model file is a pickle, "
            "which runs code when loaded: check where it came from, then copy it into a "
            f"folder of your own (or set {TRUST_ENV}=1)")


def _load(folder: Path) -> SlideClassifier:
    import joblib
    import sklearn

    from exaslide.integrity import file_digest, verify

    meta = _read_meta(folder)
    path = folder / MODEL_FILE
    remedy = "retrain it with `exaslide stage train`"
    if not path.is_file():
        raise EvaluationError(f"{path}: missing; the folder holds only the metadata: {remedy}")
    verify(path, EvaluationError, remedy)
    if file_digest(path) != meta.get("model_sha256"):
        raise EvaluationError(f"{path}: not the model {META_FILE} describes (sha256 differs): "
                              f"a file copied from another training? {remedy}")
    check_trusted(path)
    try:
        estimator = joblib.load(path)
    except Exception as exc:  # unpickling raises anything
        raise EvaluationError(f"{path}: cannot load the model: {type(exc).__name__}: "
                              f"{exc}; {remedy}") from exc
    found = [str(c) for c in getattr(estimator, "classes_", [])]
    if found != meta["classes"] or not hasattr(estimator, "predict_proba"):
        raise EvaluationError(f"{path}: a model of classes {found}, the metadata says "
                              f"{meta['classes']}: {remedy}")
    if meta.get("sklearn_version") != sklearn.__version__:
        logger.warning("%s: trained with scikit-learn %s, loaded with %s; retrain if its "
                       "predictions look wrong", path, meta.get("sklearn_version"),
                       sklearn.__version__)
    return SlideClassifier(estimator, tuple(meta["classes"]), meta)


def _cross_validation(estimator_name: str, seed: int, x: np.ndarray, y: np.ndarray,
                      groups: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Stratified k-fold (k <= 5) predictions on the training set, when every class has at
    least two slides: accuracy and confusion matrix. With ``groups`` (each slide's
    patient), a patient's nodes never sit on both sides of a fold."""
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.utils.class_weight import compute_sample_weight

    smallest = min(Counter(y.tolist()).values())
    splits = min(5, smallest, len(set(groups)) if groups is not None else smallest)
    if splits < 2:
        return None
    if groups is not None:
        folds = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
        split = folds.split(x, y, np.asarray(groups))
    else:
        folds = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
        split = folds.split(x, y)
    predicted = np.empty(len(y), dtype=object)
    for train, test in split:
        model = _estimator(estimator_name, seed)
        model.fit(x[train], y[train], sample_weight=compute_sample_weight("balanced", y[train]))
        predicted[test] = model.predict(x[test])
    return {"folds": folds.n_splits,
            "accuracy": float(np.mean(predicted == y)),
            "classes": list(SLIDE_CLASSES),
            "confusion_matrix": confusion_matrix(y, predicted.astype(str),
                                                 labels=list(SLIDE_CLASSES)).tolist()}


def train_slide_classifier(rows: Sequence[Mapping[str, float]], labels: Sequence[str], *,
                           estimator: str = "random-forest", seed: int = 0,
                           cross_validate: bool = True,
                           groups: Sequence[str] | None = None) -> SlideClassifier:
    """Fit a slide classifier on features (:func:`heatmap_features`) and known classes.

    Classes are weighted inversely to their frequency. With ``cross_validate`` and at
    least two slides per class, ``meta["cross_validation"]`` holds the accuracy and
    confusion matrix of stratified k-fold predictions (grouped by ``groups``, each
    slide's patient, when given: no patient on both sides of a fold).

    Raises:
        EvaluationError: fewer than two slides or classes, unknown class names, mismatched
            lengths, an unknown estimator.
    """
    from sklearn.utils.class_weight import compute_sample_weight

    if len(rows) != len(labels):
        raise EvaluationError(f"{len(rows)} feature rows but {len(labels)} labels")
    y = np.array([check_slide_class(c, "training labels") for c in labels], dtype=object)
    counts = Counter(y.tolist())
    if len(rows) < 2 or len(counts) < 2:
        raise EvaluationError(f"training needs slides of at least two classes; got "
                              f"{dict(counts) or 'no slides'}")
    x = feature_matrix(rows)
    model = _estimator(estimator, seed)
    model.fit(x, y.astype(str), sample_weight=compute_sample_weight("balanced", y))
    classes = tuple(str(c) for c in model.classes_)
    meta: dict[str, Any] = {
        "estimator": estimator, "seed": seed, "slides": len(rows),
        "class_counts": {c: counts.get(c, 0) for c in SLIDE_CLASSES},
        "training_accuracy": float(np.mean(model.predict(x) == y.astype(str))),
    }
    if cross_validate:
        meta["cross_validation"] = _cross_validation(estimator, seed, x, y.astype(str),
                                                     groups)
    return SlideClassifier(model, classes, meta)


def slide_class_report(reference: Mapping[str, str], predicted: Mapping[str, str]
                       ) -> dict[str, Any]:
    """Agreement of predicted slide classes with the reference, on the slides of both:
    ``{"slides", "accuracy", "kappa", "classes", "confusion_matrix"}`` (rows: reference,
    columns: predicted, in :data:`SLIDE_CLASSES` order; quadratic-weighted kappa)."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    common = sorted(set(reference) & set(predicted))
    if not common:
        raise EvaluationError("no slide has both a reference and a predicted class")
    ref = [check_slide_class(reference[s], s) for s in common]
    pred = [check_slide_class(predicted[s], s) for s in common]
    kappa = 1.0 if ref == pred else float(cohen_kappa_score(
        ref, pred, labels=list(SLIDE_CLASSES), weights="quadratic"))
    return {"slides": len(common),
            "accuracy": float(np.mean(np.array(ref) == np.array(pred))),
            "kappa": kappa, "classes": list(SLIDE_CLASSES),
            "confusion_matrix": confusion_matrix(ref, pred,
                                                 labels=list(SLIDE_CLASSES)).tolist()}
