"""Evaluation: patch and slide ROC, CAMELYON16 lesion FROC, CAMELYON17 pN-stage kappa.

Heatmaps on disk (:mod:`exaslide.evaluate.heatmap`) are the interface with inference;
:func:`evaluate_run` computes every metric that applies to a folder of them. See
``docs/evaluation.md`` for the protocols and constants.

Example:
    >>> from exaslide.evaluate import read_heatmap, detections_from_heatmap
    >>> heatmap = read_heatmap("heatmaps", "test_001")  # doctest: +SKIP
    >>> detections = detections_from_heatmap(heatmap, threshold=0.5)  # doctest: +SKIP
"""

from exaslide.evaluate.camelyon17 import (
    SLIDE_CLASSES,
    STAGES,
    StageTable,
    lesion_diameters_mm,
    longest_diameter_um,
    pn_stage,
    read_stage_csv,
    slide_class_from_lesions,
    stage_kappa,
    stage_report,
    stages_from_slide_classes,
    write_stage_csv,
)
from exaslide.evaluate.detections import detections_from_heatmap
from exaslide.evaluate.froc import FP_RATES, FrocResult, froc, froc_curve, froc_score
from exaslide.evaluate.heatmap import Heatmap, read_heatmap, write_heatmap
from exaslide.evaluate.lesion import (
    EvaluationMask,
    SlideLesions,
    evaluation_mask,
    major_axis_lengths,
    match_detections,
    tumour_geometry,
)
from exaslide.evaluate.metrics import binary_label, patch_metrics, slide_metrics, slide_score
from exaslide.evaluate.plots import plot_froc, plot_roc
from exaslide.evaluate.run import EvaluateOptions, evaluate_run, read_patch_predictions

__all__ = [
    "FP_RATES", "SLIDE_CLASSES", "STAGES", "EvaluateOptions", "EvaluationMask", "FrocResult",
    "Heatmap", "SlideLesions", "StageTable", "binary_label", "detections_from_heatmap",
    "evaluate_run", "evaluation_mask", "froc", "froc_curve", "froc_score",
    "lesion_diameters_mm", "longest_diameter_um", "major_axis_lengths", "match_detections",
    "patch_metrics", "plot_froc", "plot_roc", "pn_stage", "read_heatmap",
    "read_patch_predictions", "read_stage_csv", "slide_class_from_lesions", "slide_metrics",
    "slide_score", "stage_kappa", "stage_report", "stages_from_slide_classes",
    "tumour_geometry", "write_heatmap", "write_stage_csv",
]
