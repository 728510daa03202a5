"""``evaluate_run``: every metric that applies to a folder of heatmaps and a manifest.

For each manifest slide (optionally one split) the heatmap ``<slide_id>.heatmap.npy`` is
read; then

- slide level: the slide's score (:func:`slide_score`) against its manifest label
  (:func:`binary_label`; slides with another label are left out);
- lesion level: detections (:func:`detections_from_heatmap`) against the evaluation mask
  of its annotation. A slide whose annotation has tumour is a tumour slide; a slide without
  tumour annotation is a normal slide when its label is normal, and is left out of the FROC
  when its label says tumour (no ground truth to score against);
- patch level: when a patch prediction CSV is given (columns ``label`` and ``score``).

A slide that cannot be evaluated (missing heatmap, unreadable annotation) is listed with
its reason under ``slides.failed``; the others finish. Outputs in ``out``: ``metrics.json``,
``slide_scores.csv``, ``detections.csv`` and the figures ``slide_roc.png``, ``froc.png``,
``patch_roc.png`` (those that apply).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.atomic import write_text
from exaslide.errors import EvaluationError, ExaslideError
from exaslide.evaluate.detections import DEFAULT_MIN_DISTANCE_UM, detections_from_heatmap
from exaslide.evaluate.froc import FP_RATES, froc
from exaslide.evaluate.heatmap import read_heatmap
from exaslide.evaluate.lesion import (
    SlideLesions,
    evaluation_mask,
    match_detections,
    tumour_geometry,
)
from exaslide.evaluate.metrics import binary_label, patch_metrics, slide_metrics, slide_score
from exaslide.jsonio import finite, to_jsonable, write_json
from exaslide.manifest import ManifestEntry, read_manifest

logger = logging.getLogger(__name__)

SCORE_COLUMNS = ("score", "prob", "probability", "p", "tumour_probability", "tumor_probability")


@dataclass
class EvaluateOptions:
    """Options of :func:`evaluate_run` (saved in ``metrics.json``).

    Attributes:
        detection_threshold: lowest probability of a lesion detection.
        min_distance_um: suppression distance between detections.
        slide_method: slide score, ``"max"`` or ``"p99"``.
        froc_method: ``"official"`` (step rule) or ``"linear"``.
        patch_threshold: patch predicted tumour when ``score >= patch_threshold``.
        mpp: level-0 microns per pixel to use instead of the heatmaps' own.
        split: evaluate only the manifest slides of this split.
        positive_class: the class whose probability the heatmaps must map; a heatmap whose
            metadata names another ``"class"`` is refused (one without the key is taken
            to be of this class).
    """

    detection_threshold: float = 0.5
    min_distance_um: float = DEFAULT_MIN_DISTANCE_UM
    slide_method: str = "max"
    froc_method: str = "official"
    patch_threshold: float = 0.5
    mpp: float | None = None
    split: str | None = None
    positive_class: str = "tumour"


class _WrongClass(EvaluationError):
    """A heatmap of another class: not one slide's problem but the run's (re-raised)."""


def _check_class(heatmap, slide_id: str, expected: str) -> None:
    found = heatmap.meta.get("class")
    if found is not None and str(found) != expected:
        raise _WrongClass(f"{slide_id}: the heatmap maps the probability of class {found!r}, "
                          f"not {expected!r} (made with `exaslide infer --class {found}`?); "
                          f"evaluate heatmaps of {expected!r}, or set positive_class "
                          "(--class) if that class is the positive one")


@dataclass
class _Slide:
    slide_id: str
    label: int | None = None
    score: float | None = None
    lesions: SlideLesions | None = None
    detections: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    note: str | None = None  # why the slide is not in the FROC


def read_patch_predictions(path: str | os.PathLike) -> tuple[list[Any], list[float]]:
    """``(labels, scores)`` of a patch prediction CSV with columns ``label`` and ``score``
    (or ``prob``, ``probability``, ``p``, ``tumour_probability``); other columns ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot read patch predictions: "
                              f"{exc.strerror or exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    score = next((c for c in SCORE_COLUMNS if c in columns), None)
    if "label" not in columns or score is None:
        raise EvaluationError(f"{path}: patch predictions need the columns label and score "
                              f"(or {', '.join(SCORE_COLUMNS[1:])}); found {columns}")
    labels, scores = [], []
    for row in reader:
        row = {k.strip().lower(): v for k, v in row.items() if k is not None}
        try:
            scores.append(float(row[score]))
        except (TypeError, ValueError) as exc:
            raise EvaluationError(f"{path}:{reader.line_num}: score {row[score]!r} is not a "
                                  "number") from exc
        labels.append(row["label"])
    return labels, scores


def _lesions(entry: ManifestEntry, heatmap, record: _Slide, options: EvaluateOptions) -> None:
    from exaslide.annotations import read_annotations

    mpp = options.mpp if options.mpp is not None else heatmap.mpp
    if mpp is None:
        record.note = "no mpp (in the heatmap or --mpp): no lesion evaluation"
        return
    geometry = tumour_geometry(read_annotations(entry.annotation) if entry.annotation else None)
    if geometry.is_empty and record.label != 0:
        record.note = ("no tumour annotation for a slide labelled "
                       f"{entry.label or '(empty)'!r}: left out of the FROC")
        return
    record.detections = detections_from_heatmap(heatmap, options.detection_threshold,
                                                options.min_distance_um, mpp=mpp)
    mask = None if geometry.is_empty else evaluation_mask(geometry, heatmap.level0_size, mpp)
    record.lesions = match_detections(record.detections, mask, entry.slide_id)


def _evaluate_slide(entry: ManifestEntry, heatmaps: Path, options: EvaluateOptions) -> _Slide:
    heatmap = read_heatmap(heatmaps, entry.slide_id)
    _check_class(heatmap, entry.slide_id, options.positive_class)
    record = _Slide(entry.slide_id, binary_label(entry.label) if entry.label else None)
    record.score = slide_score(heatmap, options.slide_method)
    _lesions(entry, heatmap, record, options)
    return record


def _entries(manifest, split: str | None) -> list[ManifestEntry]:
    entries = read_manifest(manifest) if isinstance(manifest, str | os.PathLike) else manifest
    if split is not None:
        entries = [e for e in entries if e.split == split]
    if not entries:
        raise EvaluationError(f"{manifest}: no slide to evaluate"
                              + (f" in split {split!r}" if split else ""))
    return list(entries)


def _slide_section(records: list[_Slide], options: EvaluateOptions) -> dict | None:
    labelled = [r for r in records if r.label is not None]
    if not labelled:
        return None
    section = slide_metrics([r.label for r in labelled], [r.score for r in labelled])
    section["method"] = options.slide_method
    section["unlabelled"] = [r.slide_id for r in records if r.label is None]
    return section


def _lesion_section(records: list[_Slide], options: EvaluateOptions) -> dict | None:
    matched = [r.lesions for r in records if r.lesions is not None]
    if not matched or sum(s.num_lesions for s in matched) == 0:
        return None
    result = froc(matched, FP_RATES, options.froc_method).to_dict()
    result.update({
        "detection_threshold": options.detection_threshold,
        "min_distance_um": options.min_distance_um,
        "tumour_slides": sum(s.is_tumour for s in matched),
        "normal_slides": sum(not s.is_tumour for s in matched),
        "detections": sum(len(r.detections) for r in records),
        "ignored_itc_detections": sum(s.ignored for s in matched),
        "itc_lesions_ignored": True,
        "left_out": [{"slide_id": r.slide_id, "reason": r.note} for r in records if r.note],
    })
    return result


def evaluate_run(heatmaps: str | os.PathLike, manifest: str | os.PathLike | list[ManifestEntry],
                 out: str | os.PathLike, patch_predictions: str | os.PathLike | None = None,
                 options: EvaluateOptions | None = None) -> dict[str, Any]:
    """Evaluate a folder of heatmaps against a manifest; write metrics and figures to ``out``.

    Args:
        heatmaps: folder of ``<slide_id>.heatmap.npy`` / ``.json`` files.
        manifest: manifest CSV (or its entries): slide ids, annotations and labels.
        out: output folder.
        patch_predictions: optional CSV of patch labels and scores.
        options: see :class:`EvaluateOptions`.

    Returns:
        The ``metrics.json`` content.

    Raises:
        EvaluationError: the heatmap folder is missing, no slide to evaluate, or a
            heatmap's metadata names a ``"class"`` other than ``options.positive_class``
            (the message names the slide and the class).
    """
    options = options or EvaluateOptions()
    heatmaps, out = Path(heatmaps), Path(out)
    if not heatmaps.is_dir():
        raise EvaluationError(f"{heatmaps}: no such heatmap folder (run `exaslide infer` "
                              "first, or check --heatmaps)")
    records, failed = [], []
    for entry in _entries(manifest, options.split):
        try:
            records.append(_evaluate_slide(entry, heatmaps, options))
        except _WrongClass:
            raise
        except (ExaslideError, OSError) as exc:
            logger.warning("%s: %s", entry.slide_id, exc)
            failed.append({"slide_id": entry.slide_id, "error": str(exc)})
    metrics: dict[str, Any] = {
        "options": asdict(options),
        "inputs": {"heatmaps": str(heatmaps), "manifest": str(manifest) if isinstance(
            manifest, str | os.PathLike) else None,
            "patch_predictions": str(patch_predictions) if patch_predictions else None},
        "slides": {"evaluated": len(records), "failed": failed},
        "patch": patch_metrics(*read_patch_predictions(patch_predictions),
                               threshold=options.patch_threshold) if patch_predictions else None,
        "slide": _slide_section(records, options),
        "lesion": _lesion_section(records, options),
    }
    metrics["files"] = _write_outputs(out, metrics, records, patch_predictions)
    write_json(out / "metrics.json", finite(to_jsonable(metrics)))
    return metrics


def _write_outputs(out: Path, metrics: dict, records: list[_Slide],
                   patch_predictions) -> list[str]:
    from exaslide.evaluate.plots import plot_froc, plot_roc

    out.mkdir(parents=True, exist_ok=True)
    files = ["metrics.json", "slide_scores.csv", "detections.csv"]
    rows = ["slide_id,label,score"] + [
        f"{r.slide_id},{'' if r.label is None else r.label},{r.score!r}" for r in records]
    write_text(out / "slide_scores.csv", "\n".join(rows) + "\n")
    write_text(out / "detections.csv", _detections_csv(records))
    slide, lesion = metrics["slide"], metrics["lesion"]
    if slide and slide["roc"]:
        plot_roc(slide["roc"]["fpr"], slide["roc"]["tpr"], out / "slide_roc.png",
                 auc=slide["roc_auc"], title="Slide-level ROC")
        files.append("slide_roc.png")
    if lesion:
        curve = lesion["curve"]
        plot_froc(curve["average_fps"], curve["sensitivities"], out / "froc.png",
                  score=lesion["score"])
        files.append("froc.png")
    if metrics["patch"] and metrics["patch"]["roc_auc"] is not None:
        _plot_patch_roc(patch_predictions, out / "patch_roc.png", metrics["patch"]["roc_auc"])
        files.append("patch_roc.png")
    return files


def _plot_patch_roc(path, target: Path, auc: float) -> None:
    from sklearn.metrics import roc_curve

    from exaslide.evaluate.metrics import _binary_labels
    from exaslide.evaluate.plots import plot_roc

    labels, scores = read_patch_predictions(path)
    fpr, tpr, _ = roc_curve(_binary_labels(labels, str(path)), scores)
    plot_roc(fpr, tpr, target, auc=auc, title="Patch-level ROC")


def _detections_csv(records: list[_Slide]) -> str:
    lines = ["slide_id,x,y,p,outcome,lesion"]
    for r in records:
        outcomes = r.lesions.outcomes if r.lesions else [""] * len(r.detections)
        labels = r.lesions.lesion_labels if r.lesions else [""] * len(r.detections)
        for (x, y, p), outcome, label in zip(r.detections.tolist(), outcomes, labels,
                                             strict=True):
            lines.append(f"{r.slide_id},{x:.1f},{y:.1f},{p!r},{outcome},{label}")
    return "\n".join(lines) + "\n"

