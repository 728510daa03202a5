"""CAMELYON17: slide classes from lesion sizes, patient pN-stages, stage CSVs and kappa.

Rules of the CAMELYON17 evaluation page (camelyon17.grand-challenge.org/Evaluation):

- slide (lymph node) class from its largest lesion's longest diameter: ``negative`` (no
  lesion), ``itc`` (<= 0.2 mm), ``micro`` (<= 2.0 mm), ``macro`` (> 2.0 mm);
- patient pN-stage from its nodes: ``pN0`` no ITC, micro or macro; ``pN0(i+)`` only ITCs;
  ``pN1mi`` micro-metastases but no macro; ``pN1`` metastases in 1-3 nodes, at least one
  macro; ``pN2`` metastases in 4-9 nodes, at least one macro. Nodes with only ITCs are not
  positive nodes ("Lymph nodes containing only ITC are therefore not counted as positive
  lymph nodes"): a node counts when it holds a micro- or macro-metastasis.

The stage CSV is the official format: header ``patient,stage``; ``patient_XXX.zip`` rows
hold the pN-stage, ``patient_XXX_node_Y.tif`` rows the slide class. The score is Cohen's
kappa with quadratic weights over the five stages in the order above, computed on the
``.zip`` rows (the official ``calculate_kappa``).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from exaslide.annotations import AnnotationSet
from exaslide.atomic import write_text
from exaslide.errors import EvaluationError
from exaslide.evaluate.lesion import tumour_geometry

logger = logging.getLogger(__name__)

STAGES = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2")
SLIDE_CLASSES = ("negative", "itc", "micro", "macro")
ITC_MAX_MM = 0.2
MICRO_MAX_MM = 2.0
_STAGE_KEYS = {s.lower(): s for s in STAGES}


# --------------------------------------------------------------------------- slides


def _mpp_xy(mpp: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(mpp, int | float):
        return float(mpp), float(mpp)
    return float(mpp[0]), float(mpp[1])


def longest_chord(points: np.ndarray) -> float:
    """Largest distance between two of ``points`` (``(n, 2)``; 0 for fewer than two), in
    O(n) memory."""
    points = np.asarray(points, dtype=np.float64)
    best = 0.0
    for i in range(len(points) - 1):
        best = max(best, float(((points[i + 1:] - points[i]) ** 2).sum(axis=1).max()))
    return float(np.sqrt(best))


def longest_diameter_um(geometry: BaseGeometry, mpp: float | Sequence[float]) -> float:
    """Largest distance between two points of ``geometry`` (its convex hull's diameter),
    in microns (level-0 pixels scaled by ``mpp``, ``(x, y)`` or one number)."""
    if geometry.is_empty:
        return 0.0
    mx, my = _mpp_xy(mpp)
    scaled = shapely.transform(geometry, lambda xy: xy * np.array([mx, my]))
    hull = shapely.get_coordinates(scaled.convex_hull)
    return longest_chord(np.unique(hull, axis=0))


def lesion_diameters_mm(annotations: AnnotationSet | BaseGeometry,
                        mpp: float | Sequence[float]) -> list[float]:
    """Longest diameter in mm of each lesion: each polygon of tumour minus exclusions
    (overlapping tumour annotations form one lesion), largest first."""
    geometry = tumour_geometry(annotations)
    parts = [p for p in shapely.get_parts(geometry) if not p.is_empty and p.area > 0]
    return sorted((longest_diameter_um(p, mpp) / 1000.0 for p in parts), reverse=True)


def slide_class_from_lesions(lesions: AnnotationSet | BaseGeometry | Iterable[float],
                             mpp: float | Sequence[float] | None = None) -> str:
    """CAMELYON17 slide class from its lesions.

    Args:
        lesions: the slide's annotations (or tumour geometry), or the longest diameters of
            its lesions in mm.
        mpp: level-0 microns per pixel; needed with annotations.

    Returns:
        ``"negative"``, ``"itc"`` (largest <= 0.2 mm), ``"micro"`` (<= 2.0 mm) or ``"macro"``.
    """
    if isinstance(lesions, AnnotationSet | BaseGeometry):
        if mpp is None:
            raise EvaluationError("slide_class_from_lesions: annotations need mpp to measure "
                                  "lesion diameters in mm")
        diameters = lesion_diameters_mm(lesions, mpp)
    else:
        diameters = [float(d) for d in lesions]
    if any(not np.isfinite(d) or d < 0 for d in diameters):
        raise EvaluationError(f"lesion diameters must be finite and >= 0 mm, got {diameters}")
    largest = max((d for d in diameters if d > 0), default=0.0)
    if largest == 0.0:
        return "negative"
    if largest <= ITC_MAX_MM:
        return "itc"
    return "micro" if largest <= MICRO_MAX_MM else "macro"


def pn_stage(slide_classes: Iterable[str]) -> str:
    """A patient's CAMELYON17 pN-stage from its slide (node) classes.

    Raises:
        EvaluationError: an unknown class, or metastases in 10 or more nodes (pN3 is not a
            CAMELYON17 stage).
    """
    classes = [str(c).strip().lower() for c in slide_classes]
    unknown = sorted({c for c in classes if c not in SLIDE_CLASSES})
    if unknown:
        raise EvaluationError(f"unknown slide class(es) {', '.join(map(repr, unknown))}; use "
                              f"{', '.join(SLIDE_CLASSES)}")
    counts = Counter(classes)
    if counts["macro"]:
        positive = counts["macro"] + counts["micro"]  # ITC-only nodes are not positive
        if positive <= 3:
            return "pN1"
        if positive <= 9:
            return "pN2"
        raise EvaluationError(f"{positive} positive nodes: pN3, which CAMELYON17 does not use")
    if counts["micro"]:
        return "pN1mi"
    return "pN0(i+)" if counts["itc"] else "pN0"


# --------------------------------------------------------------------------- CSV


@dataclass
class StageTable:
    """A stage CSV: patient stages and slide classes, keyed without extension.

    Attributes:
        patients: ``{"patient_000": "pN0", ...}`` (from the ``.zip`` rows).
        slides: ``{"patient_000_node_0": "negative", ...}`` (other rows with a class).
        path: the file it was read from, if any.
    """

    patients: dict[str, str] = field(default_factory=dict)
    slides: dict[str, str] = field(default_factory=dict)
    path: str | None = None

    def slides_of(self, patient: str) -> dict[str, str]:
        """The slide classes of one patient (slides named ``<patient>_node_*``)."""
        prefix = f"{patient}_node_"
        return {k: v for k, v in self.slides.items() if k.startswith(prefix)}


def canonical_stage(value: str) -> str | None:
    """The official spelling of a pN-stage (case-insensitive), or None if unknown."""
    return _STAGE_KEYS.get(str(value).strip().lower())


def _stem(name: str) -> str:
    base, ext = os.path.splitext(name)
    return base if ext.lower() in (".zip", ".tif", ".tiff") else name


def _parse_rows(text: str, where: str) -> StageTable:
    table = StageTable(path=where)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header[:2]] != ["patient", "stage"]:
        raise EvaluationError(f"{where}:1: expected the header 'patient,stage', found "
                              f"{header!r}")
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or any(c.strip() for c in row[2:]):
            raise EvaluationError(f"{where}:{line}: expected 'name,stage', found {row!r}")
        name, value = row[0].strip(), row[1].strip()
        key = _stem(name)
        if key in seen:
            raise EvaluationError(f"{where}:{line}: duplicate row {name!r} (first on line "
                                  f"{seen[key]})")
        seen[key] = line
        if name.lower().endswith(".zip"):
            stage = canonical_stage(value)
            if stage is None:
                raise EvaluationError(f"{where}:{line}: unknown stage {value!r} for {name}; "
                                      f"use one of {', '.join(STAGES)}")
            table.patients[key] = stage
        elif value:
            if value.lower() not in SLIDE_CLASSES:
                raise EvaluationError(f"{where}:{line}: unknown slide class {value!r} for "
                                      f"{name}; use one of {', '.join(SLIDE_CLASSES)}")
            table.slides[key] = value.lower()
    return table


def read_stage_csv(path: str | os.PathLike) -> StageTable:
    """Read a CAMELYON17 stage CSV (official format, see the module docstring).

    Stage names are matched case-insensitively and stored in their official spelling;
    slide rows may have an empty class (submissions need not classify slides).

    Raises:
        EvaluationError: a missing file, a wrong header, a malformed or duplicate row, an
            unknown stage or slide class (the message gives file and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot read stage CSV: {exc.strerror or exc}") from exc
    return _parse_rows(text, str(path))


def write_stage_csv(path: str | os.PathLike, patients: Mapping[str, str],
                    slides: Mapping[str, str] | None = None) -> Path:
    """Write a stage CSV in the official format, atomically.

    Args:
        path: output file.
        patients: ``{patient: stage}`` (names with or without ``.zip``).
        slides: ``{slide: class}`` (names with or without ``.tif``), written under their
            patient (slides named ``<patient>_node_*``); others at the end.
    """
    slides = {_stem(k): v for k, v in (slides or {}).items()}
    lines = ["patient,stage"]
    written: set[str] = set()
    for patient, stage in sorted(patients.items(), key=lambda kv: _stem(kv[0])):
        canonical = canonical_stage(stage)
        if canonical is None:
            raise EvaluationError(f"unknown stage {stage!r} for {patient}; use one of "
                                  f"{', '.join(STAGES)}")
        lines.append(f"{_stem(patient)}.zip,{canonical}")
        for slide in sorted(s for s in slides if s.startswith(f"{_stem(patient)}_node_")):
            lines.append(f"{slide}.tif,{slides[slide]}")
            written.add(slide)
    lines += [f"{s}.tif,{c}" for s, c in sorted(slides.items()) if s not in written]
    return write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- kappa


def _table(value: StageTable | str | os.PathLike | Mapping[str, str]) -> StageTable:
    if isinstance(value, StageTable):
        return value
    if isinstance(value, Mapping):
        rows = "\n".join(["patient,stage", *(f"{_stem(k)}.zip,{v}" for k, v in value.items())])
        return _parse_rows(rows, "<stages>")
    return read_stage_csv(value)


def stage_report(reference: StageTable | str | os.PathLike | Mapping[str, str],
                 submission: StageTable | str | os.PathLike | Mapping[str, str]
                 ) -> dict[str, Any]:
    """Agreement of a submission with the reference: kappa, accuracy, confusion matrix.

    Every reference patient must be in the submission; extra submission patients are
    ignored (with a warning), as in the official code.

    Returns:
        ``{"kappa", "accuracy", "patients", "stages", "confusion_matrix"}`` (rows:
        reference stage, columns: submitted stage, in :data:`STAGES` order).
    """
    from sklearn.metrics import confusion_matrix

    ref, sub = _table(reference), _table(submission)
    if not ref.patients:
        raise EvaluationError(f"{ref.path}: no patient (.zip) rows in the reference")
    missing = sorted(p for p in ref.patients if p not in sub.patients)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                           else "")
        raise EvaluationError(f"{sub.path}: {len(missing)} reference patient(s) missing from "
                              f"the submission: {shown}")
    extra = sorted(p for p in sub.patients if p not in ref.patients)
    if extra:
        logger.warning("%s: %d patient(s) not in the reference are ignored (e.g. %s)",
                       sub.path, len(extra), extra[0])
    patients = sorted(ref.patients)
    y_ref = [ref.patients[p] for p in patients]
    y_sub = [sub.patients[p] for p in patients]
    matrix = confusion_matrix(y_ref, y_sub, labels=list(STAGES))
    return {"kappa": quadratic_kappa(y_ref, y_sub),
            "accuracy": float(np.trace(matrix) / len(patients)),
            "patients": len(patients), "stages": list(STAGES),
            "confusion_matrix": matrix.tolist()}


def quadratic_kappa(reference: Sequence[str], submission: Sequence[str]) -> float:
    """Cohen's kappa with quadratic weights over :data:`STAGES` (scikit-learn); 1.0 when
    both sides use one and the same stage only (scikit-learn's 0/0)."""
    from sklearn.metrics import cohen_kappa_score

    if list(reference) == list(submission):  # also covers the one-stage 0/0 case
        return 1.0
    return float(cohen_kappa_score(reference, submission, labels=list(STAGES),
                                   weights="quadratic"))


def stage_kappa(reference_csv: StageTable | str | os.PathLike | Mapping[str, str],
                submission_csv: StageTable | str | os.PathLike | Mapping[str, str]) -> float:
    """The CAMELYON17 score: quadratic-weighted Cohen's kappa of submitted vs reference
    patient stages (see :func:`stage_report` for the checks)."""
    return float(stage_report(reference_csv, submission_csv)["kappa"])


def stages_from_slide_classes(slides: Mapping[str, str]) -> dict[str, str]:
    """Patient pN-stages from slide classes keyed ``<patient>_node_<n>`` (``.tif`` optional)."""
    by_patient: dict[str, list[str]] = {}
    for name, cls in slides.items():
        stem = _stem(name)
        patient, sep, _ = stem.rpartition("_node_")
        if not sep:
            raise EvaluationError(f"slide {name!r} is not named <patient>_node_<n>")
        by_patient.setdefault(patient, []).append(cls)
    return {p: pn_stage(c) for p, c in sorted(by_patient.items())}
