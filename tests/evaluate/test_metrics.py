"""Patch- and slide-level metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from exaslide.errors import EvaluationError
from exaslide.evaluate import binary_label, patch_metrics, slide_metrics, slide_score


def test_patch_metrics_hand_computed():
    labels = [1, 1, 0, 0, 1, 0]
    scores = [0.9, 0.4, 0.35, 0.1, 0.8, 0.7]
    m = patch_metrics(labels, scores)
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (2, 1, 1, 2)
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 / 3) and m["precision"] == pytest.approx(2 / 3)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(8 / 9)
    assert (m["n"], m["positives"], m["negatives"]) == (6, 3, 3)
    strict = patch_metrics(labels, scores, threshold=0.85)
    assert (strict["tp"], strict["fp"]) == (1, 0)


def test_one_class_gives_no_auc_and_no_crash():
    m = patch_metrics(["normal"] * 3, [0.1, 0.7, 0.2])
    assert m["roc_auc"] is None and m["sensitivity"] is None
    assert m["specificity"] == pytest.approx(2 / 3) and m["f1"] == 0.0
    s = slide_metrics(["tumour", "tumour"], [0.3, 0.9])
    assert s["roc_auc"] is None and s["roc"] is None and s["positives"] == 2


def test_slide_metrics_hand_computed():
    s = slide_metrics(["tumour", "normal", "Tumor", "normal"], [0.8, 0.8, 0.6, 0.2])
    assert s["roc_auc"] == pytest.approx(2.5 / 4)
    assert s["roc"]["fpr"] == [0.0, 0.5, 0.5, 1.0]
    assert s["roc"]["tpr"] == [0.0, 0.5, 1.0, 1.0]
    assert s["roc"]["thresholds"][0] is None and s["roc"]["thresholds"][1:] == [0.8, 0.6, 0.2]


def test_slide_score_methods():
    probs = np.full((10, 10), np.nan, np.float32)
    probs[:5] = np.linspace(0, 1, 50).reshape(5, 10)
    assert slide_score(probs) == pytest.approx(1.0)
    assert slide_score(probs, "p99") == pytest.approx(np.percentile(np.linspace(0, 1, 50), 99))
    assert slide_score(np.full((2, 2), np.nan)) == 0.0
    with pytest.raises(EvaluationError, match="unknown slide score"):
        slide_score(probs, "mean")


def test_label_parsing_and_input_errors():
    assert [binary_label(v) for v in (1, 0, True, "Tumour", "normal", "macro", "x")] == \
        [1, 0, 1, 1, 0, 1, None]
    with pytest.raises(EvaluationError, match="neither tumour nor normal"):
        patch_metrics(["tumour", "maybe"], [0.1, 0.2])
    with pytest.raises(EvaluationError, match="2 labels but 1 scores"):
        patch_metrics([0, 1], [0.1])
    with pytest.raises(EvaluationError, match="NaN"):
        slide_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(EvaluationError, match="nothing to evaluate"):
        patch_metrics([], [])
