"""CAMELYON17 end to end over a folder of heatmaps: train the slide classifier on slides
of known class, predict every node's class, stage every patient and write the official
submission CSV.

- :func:`train_from_heatmaps`: heatmaps + a manifest with a ``slide_class`` column ->
  a saved :class:`~exaslide.evaluate.slide_classes.SlideClassifier`.
- :func:`predict_stages`: heatmaps (+ optional manifest, for the slide list, a split and
  a ``patient`` column) + a classifier, or the rule without one -> slide classes, patient
  pN-stages (:func:`~exaslide.evaluate.camelyon17.pn_stage`) and the stage CSV
  (:func:`~exaslide.evaluate.camelyon17.write_stage_csv`), which
  ``exaslide evaluate stage`` scores.

A slide whose heatmap is missing or unreadable is reported (``failed``) and the others go
on; its patient is staged from the nodes that were classified (listed in
``incomplete``). A heatmap that maps another class than the positive one stops the run.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exaslide.atomic import write_text
from exaslide.errors import EvaluationError, ExaslideError
from exaslide.evaluate.camelyon17 import (
    SLIDE_CLASSES,
    pn_stage,
    slide_class_from_lesions,
    write_stage_csv,
)
from exaslide.evaluate.slide_classes import (
    ESTIMATORS,
    SlideClassifier,
    check_slide_class,
    heatmap_features,
    heatmap_regions,
    train_slide_classifier,
)
from exaslide.heatmaps import NPY_SUFFIX, Heatmap, read_heatmap
from exaslide.manifest import ManifestEntry, read_manifest

logger = logging.getLogger(__name__)

CLASS_COLUMN = "slide_class"
PATIENT_COLUMN = "patient"


@dataclass(frozen=True)
class StageOptions:
    """Options of :func:`train_from_heatmaps` and :func:`predict_stages`.

    Attributes:
        mpp: level-0 microns per pixel, overriding the heatmaps' own.
        positive_class: the class the heatmaps must map (their ``class`` metadata).
        split: use only the manifest slides of this split.
        threshold: probability threshold of the rule (prediction without a model).
        estimator: ``"random-forest"`` or ``"gradient-boosting"`` (training).
        seed: random seed of the estimator and the cross-validation folds.
    """

    mpp: float | None = None
    positive_class: str = "tumour"
    split: str | None = None
    threshold: float = 0.5
    estimator: str = "random-forest"
    seed: int = 0


class WrongClassError(EvaluationError):
    """A heatmap of another class than the positive one: the run's problem, not one
    slide's."""


def heatmap_slide_ids(folder: str | os.PathLike) -> list[str]:
    """Ids of the slides with a heatmap in ``folder`` (sorted)."""
    path = Path(folder)
    if not path.is_dir():
        raise EvaluationError(f"{path}: no such heatmap folder (run `exaslide infer` first)")
    ids = sorted(p.name[: -len(NPY_SUFFIX)] for p in path.glob(f"*{NPY_SUFFIX}"))
    if not ids:
        raise EvaluationError(f"{path}: no {NPY_SUFFIX} heatmap in this folder")
    return ids


def collect_features(heatmaps: str | os.PathLike, slide_ids: Sequence[str], *,
                     mpp: float | None = None, positive_class: str = "tumour",
                     measure: Callable[[Heatmap], dict[str, float]] | None = None
                     ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Features of each slide's heatmap: ``(features by slide, error by failed slide)``.

    ``measure`` replaces :func:`heatmap_features` (called with the heatmap; ``mpp`` is then
    the measure's business).

    Raises:
        WrongClassError: a heatmap whose metadata names another class.
    """
    features, failed = {}, {}
    for slide_id in slide_ids:
        try:
            heatmap = read_heatmap(heatmaps, slide_id)
            found = heatmap.meta.get("class")
            if found is not None and str(found) != positive_class:
                raise WrongClassError(
                    f"{slide_id}: the heatmap maps the probability of class {found!r}, not "
                    f"{positive_class!r} (made with `exaslide infer --class {found}`?); use "
                    f"heatmaps of {positive_class!r}, or --class {found} if that is the "
                    "tumour class")
            features[slide_id] = measure(heatmap) if measure is not None \
                else heatmap_features(heatmap, mpp=mpp)
        except WrongClassError:
            raise
        except (ExaslideError, OSError) as exc:
            failed[slide_id] = " ".join(str(exc).split())
            logger.warning("%s: %s", slide_id, failed[slide_id])
    return features, failed


def _entries(manifest: str | os.PathLike | Sequence[ManifestEntry], split: str | None
             ) -> list[ManifestEntry]:
    entries = read_manifest(manifest) if isinstance(manifest, str | os.PathLike) \
        else list(manifest)
    if split is not None:
        entries = [e for e in entries if e.split == split]
    if not entries:
        raise EvaluationError(f"{manifest}: no slide" + (f" in split {split!r}" if split
                                                         else ""))
    return entries


@dataclass
class TrainResult:
    """What :func:`train_from_heatmaps` did.

    Attributes:
        classifier: the fitted classifier (also saved).
        path: its ``slide_classifier.json``.
        slides: slides it was trained on.
        failed: ``{slide_id: error}`` of slides whose heatmap could not be used.
        warnings: slides left out (no class given).
    """

    classifier: SlideClassifier
    path: Path
    slides: int
    failed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _training_labels(entries: list[ManifestEntry], where: str
                     ) -> tuple[dict[str, str], list[str]]:
    if not any(CLASS_COLUMN in e.extra for e in entries):
        raise EvaluationError(f"{where}: no {CLASS_COLUMN} column: training needs each "
                              f"slide's class ({', '.join(SLIDE_CLASSES)}); `exaslide synth "
                              "--cohort N --patients` writes one")
    labels, left_out = {}, []
    for e in entries:
        value = e.extra.get(CLASS_COLUMN, "").strip()
        if not value:
            left_out.append(e.slide_id)
            continue
        labels[e.slide_id] = check_slide_class(value, f"{where}: slide {e.slide_id}")
    warnings = [f"{len(left_out)} slide(s) without a {CLASS_COLUMN} left out (e.g. "
                f"{left_out[0]})"] if left_out else []
    return labels, warnings


def train_from_heatmaps(heatmaps: str | os.PathLike,
                        manifest: str | os.PathLike | Sequence[ManifestEntry],
                        out_dir: str | os.PathLike, options: StageOptions | None = None
                        ) -> TrainResult:
    """Fit the slide classifier on the heatmaps of the manifest's slides (optionally one
    split) and their ``slide_class`` column; save it into ``out_dir``.

    Raises:
        EvaluationError: no ``slide_class`` column, an unknown class, fewer than two
            classes among the usable slides, a heatmap of another class.
    """
    options = options or StageOptions()
    if options.estimator not in ESTIMATORS:
        raise EvaluationError(f"unknown estimator {options.estimator!r}; use one of "
                              f"{', '.join(ESTIMATORS)}")
    entries = _entries(manifest, options.split)
    labels, warnings = _training_labels(entries, str(manifest))
    features, failed = collect_features(heatmaps, list(labels), mpp=options.mpp,
                                        positive_class=options.positive_class)
    used = [s for s in labels if s in features]
    patients = {e.slide_id: e.extra.get("patient") or e.slide_id for e in entries}
    classifier = train_slide_classifier([features[s] for s in used], [labels[s] for s in used],
                                        estimator=options.estimator, seed=options.seed,
                                        groups=[patients.get(s, s) for s in used])
    classifier.meta.update(positive_class=options.positive_class, split=options.split,
                           failed_slides=sorted(failed))
    path = classifier.save(out_dir)
    return TrainResult(classifier, path, len(used), failed, warnings)


@dataclass
class StagePrediction:
    """What :func:`predict_stages` found.

    Attributes:
        method: ``"model"`` or ``"rule"``.
        slide_classes: ``{slide_id: class}`` of the classified slides.
        probabilities: ``{slide_id: [p_negative, p_itc, p_micro, p_macro]}`` (model only).
        diameters_mm: ``{slide_id: longest region diameter at the rule's threshold}``
            (rule only).
        slide_patients: ``{slide_id: patient}``.
        stages: ``{patient: pN-stage}``.
        failed: ``{slide_id or patient: error}``.
        incomplete: ``{patient: [failed slides]}`` of patients staged without all nodes.
        path: the stage CSV written, if any.
    """

    method: str
    slide_classes: dict[str, str] = field(default_factory=dict)
    probabilities: dict[str, list[float]] = field(default_factory=dict)
    diameters_mm: dict[str, float] = field(default_factory=dict)
    slide_patients: dict[str, str] = field(default_factory=dict)
    stages: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    incomplete: dict[str, list[str]] = field(default_factory=dict)
    path: Path | None = None


def _slides_and_patients(heatmaps, manifest, split) -> tuple[list[str], dict[str, str]]:
    """Slide ids to predict and their patients (manifest ``patient`` column, else the
    ``<patient>_node_<n>`` name)."""
    if manifest is None:
        if split is not None:
            raise EvaluationError("a split needs a manifest (--manifest)")
        ids, given = heatmap_slide_ids(heatmaps), {}
    else:
        entries = _entries(manifest, split)
        ids = [e.slide_id for e in entries]
        given = {e.slide_id: e.extra.get(PATIENT_COLUMN, "").strip() for e in entries}
    patients = {}
    for slide_id in ids:
        patient = given.get(slide_id) or slide_id.rpartition("_node_")[0]
        if patient:
            patients[slide_id] = patient
    return ids, patients


def _classify(result: StagePrediction, features: dict[str, dict[str, float]],
              model: SlideClassifier | None) -> None:
    ids = list(features)
    if model is not None:
        proba = model.predict_proba([features[s] for s in ids])
        for slide_id, row in zip(ids, proba, strict=True):
            result.probabilities[slide_id] = [float(p) for p in row]
            result.slide_classes[slide_id] = SLIDE_CLASSES[int(row.argmax())]
        return
    for slide_id in ids:
        diameter = features[slide_id]["diameter_mm"]
        result.diameters_mm[slide_id] = diameter
        result.slide_classes[slide_id] = slide_class_from_lesions([diameter])


def _rule_measure(options: StageOptions) -> Callable[[Heatmap], dict[str, float]]:
    """The rule's one number: the longest region diameter (mm) at its threshold."""
    if not 0.0 < options.threshold <= 1.0:
        raise EvaluationError(f"threshold must be in (0, 1], got {options.threshold}")

    def measure(heatmap: Heatmap) -> dict[str, float]:
        regions = heatmap_regions(heatmap, options.threshold, mpp=options.mpp)
        return {"diameter_mm": regions.max_diameter_um / 1000.0}

    return measure


def predict_stages(heatmaps: str | os.PathLike, out_csv: str | os.PathLike | None = None, *,
                   model: SlideClassifier | str | os.PathLike | None = None,
                   manifest: str | os.PathLike | Sequence[ManifestEntry] | None = None,
                   options: StageOptions | None = None,
                   predictions_csv: str | os.PathLike | None = None) -> StagePrediction:
    """Classify every slide, stage every patient and write the submission CSV.

    Args:
        heatmaps: folder of ``<slide_id>.heatmap.npy/.json`` (``exaslide infer``).
        out_csv: the stage CSV to write (official format), or None.
        model: a :class:`SlideClassifier` or its folder; None applies
            :func:`~exaslide.evaluate.slide_classes.rule_slide_class` at
            ``options.threshold``.
        manifest: the slides to predict (all heatmaps of the folder without one), their
            split and ``patient`` column.
        options: see :class:`StageOptions`.
        predictions_csv: optional per-slide CSV (slide_id, patient, slide_class,
            probabilities or diameter, error).

    Raises:
        EvaluationError: no heatmap folder, an unusable model, a heatmap of another class.
    """
    options = options or StageOptions()
    if model is not None and not isinstance(model, SlideClassifier):
        model = SlideClassifier.load(model)
    ids, patients = _slides_and_patients(heatmaps, manifest, options.split)
    result = StagePrediction("model" if model is not None else "rule", slide_patients=patients)
    for slide_id in ids:
        if slide_id not in patients:
            result.failed[slide_id] = ("cannot tell its patient: name it <patient>_node_<n> or "
                                       "give a manifest with a patient column")
    todo = [s for s in ids if s in patients]
    measure = None if model is not None else _rule_measure(options)
    features, failed = collect_features(heatmaps, todo, mpp=options.mpp,
                                        positive_class=options.positive_class, measure=measure)
    result.failed.update(failed)
    _classify(result, features, model)
    _stage(result, todo)
    if out_csv is not None:
        slides = {s: result.slide_classes.get(s, "") for s in todo}
        result.path = write_stage_csv(out_csv, result.stages, slides)
    if predictions_csv is not None:
        write_predictions(predictions_csv, result)
    return result


def stages_from_slide_classes_csv(predictions: str | os.PathLike,
                                  out_csv: str | os.PathLike | None = None, *,
                                  manifest: str | os.PathLike | Sequence[ManifestEntry]
                                  | None = None, split: str | None = None
                                  ) -> StagePrediction:
    """Patient pN stages from slide classes predicted elsewhere: a CSV with ``slide_id``
    and ``predicted`` (what ``exaslide mil predict`` / ``mil train`` write for the
    4-class CAMELYON17 task) or ``slide_class``; patients from the manifest's
    ``patient`` column, else the ``<patient>_node_<n>`` names. Writes the submission
    CSV when ``out_csv`` is given.

    Raises:
        EvaluationError: an unreadable CSV, no class column, an unknown class name.
    """
    where = os.fspath(predictions)
    try:
        with open(predictions, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvaluationError(f"{where}: cannot read the predictions: {exc}") from exc
    column = next((c for c in ("predicted", "slide_class") if rows and c in rows[0]), None)
    if column is None or "slide_id" not in rows[0]:
        raise EvaluationError(f"{where}: expected columns slide_id and predicted (or "
                              "slide_class)")
    classes = {r["slide_id"]: check_slide_class(r[column], f"{where}: {r['slide_id']}")
               for r in rows}
    ids, patients = (list(classes), {}) if manifest is None else \
        _slides_and_patients(None, manifest, split)
    ids = [s for s in ids if s in classes]
    result = StagePrediction("predictions", slide_patients={
        s: patients.get(s) or s.rpartition("_node_")[0] for s in ids})
    for slide_id, patient in list(result.slide_patients.items()):
        if not patient:
            del result.slide_patients[slide_id]
            result.failed[slide_id] = ("cannot tell its patient: name it <patient>_node_<n> "
                                       "or give a manifest with a patient column")
    result.slide_classes = {s: classes[s] for s in result.slide_patients}
    todo = list(result.slide_patients)
    _stage(result, todo)
    if out_csv is not None:
        result.path = write_stage_csv(out_csv, result.stages, dict(result.slide_classes))
    return result


def _stage(result: StagePrediction, slide_ids: list[str]) -> None:
    by_patient: dict[str, list[str]] = {}
    for slide_id in slide_ids:
        by_patient.setdefault(result.slide_patients[slide_id], []).append(slide_id)
    for patient, slides in sorted(by_patient.items()):
        classes = [result.slide_classes[s] for s in slides if s in result.slide_classes]
        missing = [s for s in slides if s not in result.slide_classes]
        if not classes:
            result.failed[patient] = "no node of this patient could be classified"
            continue
        if missing:
            result.incomplete[patient] = missing
        try:
            result.stages[patient] = pn_stage(classes)
        except EvaluationError as exc:
            result.failed[patient] = str(exc)


def write_predictions(path: str | os.PathLike, result: StagePrediction) -> Path:
    """The per-slide CSV of a prediction: ``slide_id,patient,slide_class`` then
    ``p_negative..p_macro`` (model) or ``diameter_mm`` (rule), and ``error``."""
    extra = [f"p_{c}" for c in SLIDE_CLASSES] if result.method == "model" else ["diameter_mm"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide_id", "patient", "slide_class", *extra, "error"])
    slides = sorted(set(result.slide_patients) | set(result.slide_classes)
                    | {s for s in result.failed if s not in result.stages})
    for slide_id in slides:
        if result.method == "model":
            values = [f"{p:.6f}" for p in result.probabilities.get(slide_id, [])] or [""] * 4
        else:
            diameter = result.diameters_mm.get(slide_id)
            values = ["" if diameter is None else f"{diameter:.4f}"]
        writer.writerow([slide_id, result.slide_patients.get(slide_id, ""),
                         result.slide_classes.get(slide_id, ""), *values,
                         result.failed.get(slide_id, "")])
    return write_text(path, buffer.getvalue())
