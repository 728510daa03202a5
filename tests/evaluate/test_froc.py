"""CAMELYON16 FROC on synthetic ground truth with known detections."""

from __future__ import annotations

import numpy as np
import pytest
from evaluate_helpers import MPP, annotation_set, disc, heatmap_from_geometry

from exaslide.errors import EvaluationError
from exaslide.evaluate import (
    detections_from_heatmap,
    evaluation_mask,
    froc,
    froc_score,
    match_detections,
    tumour_geometry,
)
from exaslide.synth import make_layout

SIZE = (20000, 20000)


def _slide(lesions, detections, slide_id="s"):
    mask = evaluation_mask(annotation_set(lesions), SIZE, MPP) if lesions else None
    return match_detections(detections, mask, slide_id)


def test_perfect_detections_on_synthetic_layouts_score_one():
    slides = []
    for seed in range(3):
        layout = make_layout(40000, 30000, 4, np.random.default_rng(seed), exclusion_rate=1.0)
        region = layout.tumour_region
        heatmap = heatmap_from_geometry(region, size=(40000, 30000))
        detections = detections_from_heatmap(heatmap, threshold=0.5)
        mask = evaluation_mask(region, (40000, 30000), MPP)
        assert mask.num_lesions >= 1
        slides.append(match_detections(detections, mask, f"s{seed}"))
        assert slides[-1].fp_probs == [] and all(p == 1.0 for p in slides[-1].tp_probs)
    result = froc(slides)
    assert result.score == 1.0 and set(result.sensitivity_at.values()) == {1.0}


def test_only_false_positives_score_zero():
    lesion = disc(5000, 5000, 1000)
    slide = _slide([lesion], [(15000, 15000, 0.9), (1000, 18000, 0.4)])
    assert slide.fp_probs == [0.9, 0.4] and slide.tp_probs == [0.0]
    assert froc([slide]).score == 0.0


def test_itc_is_neither_a_miss_nor_its_detection_a_false_positive():
    lesion, itc = disc(5000, 5000, 1000), disc(15000, 15000, 100)
    with_itc_hit = _slide([lesion, itc], [(5000, 5000, 0.8), (15000, 15000, 0.99)])
    assert with_itc_hit.num_lesions == 1 and with_itc_hit.ignored == 1
    assert with_itc_hit.fp_probs == [] and with_itc_hit.outcomes == ["tp", "itc"]
    missed_itc = _slide([lesion, itc], [(5000, 5000, 0.8)])
    assert froc([with_itc_hit]).score == froc([missed_itc]).score == 1.0


def test_lesion_keeps_its_best_detection_and_dilation_counts():
    lesion = disc(5000, 5000, 1000)  # radius 2000 px; the mask grows by 37.5 um = 150 px
    slide = _slide([lesion], [(5000, 5000, 0.3), (5000, 7100, 0.7), (5000, 7400, 0.2)])
    assert slide.tp_probs == pytest.approx([0.7]) and slide.fp_probs == [0.2]


def test_hand_computed_froc():
    """Three slides: A (lesions L1, L2 and an ITC), B (L3, missed), C (normal).

    FPs 0.7, 0.3 (A), 0.8 (B), 0.5, 0.2 (C); best TPs L1 0.9, L2 0.4, L3 0.
    Average FPs / sensitivity per threshold (high to low): 0.9: 0, 1/3; 0.8: 1/3, 1/3;
    0.7: 2/3, 1/3; 0.5: 1, 1/3; 0.4: 1, 2/3; 0.3: 4/3, 2/3; 0.2: 5/3, 2/3.
    Official rule (first point with FPs >= target): 1/3 at 0.25, 0.5 and 1 (the 0.5
    threshold reaches 1 FP first), 2/3 at 2, 4 and 8 (no point reaches them: the last one).
    """
    l1, l2, itc, l3 = (disc(4000, 4000, 800), disc(14000, 4000, 800),
                       disc(9000, 15000, 100), disc(9000, 9000, 800))
    a = _slide([l1, l2, itc], [(4000, 4000, 0.9), (4100, 4100, 0.6), (14000, 4000, 0.4),
                               (9000, 15000, 0.95), (18000, 18000, 0.7),
                               (1000, 18000, 0.3)], "A")
    b = _slide([l3], [(18000, 1000, 0.8)], "B")
    c = _slide([], [(100, 100, 0.5), (200, 200, 0.2)], "C")
    assert (a.num_lesions, b.num_lesions, c.num_lesions) == (2, 1, 0)
    result = froc([a, b, c])
    assert result.thresholds == [0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9]
    np.testing.assert_allclose(result.average_fps, [5 / 3, 4 / 3, 1, 1, 2 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(result.sensitivities,
                               [2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(list(result.sensitivity_at.values()),
                               [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert result.score == pytest.approx(0.5)
    assert (result.num_slides, result.num_lesions) == (3, 3)


def test_negative_slides_add_false_positives():
    lesion = disc(5000, 5000, 1000)
    tumour = _slide([lesion], [(5000, 5000, 0.9), (15000, 15000, 0.5)])
    alone = froc([tumour])
    assert alone.average_fps[0] == 1.0 and alone.score == 1.0
    negatives = [_slide([], [(1000, 1000, 0.6)], f"n{i}") for i in range(3)]
    more = froc([tumour, *negatives])
    assert more.num_slides == 4
    # 4 FPs over 4 slides at 0.5, 3 at 0.6: the 0.25 target is first reached at 0.6 (3/4)
    assert more.average_fps[:2] == [1.0, 0.75] and more.sensitivity_at[0.25] == 1.0
    assert _slide([], [(1, 1, 0.9)]).fp_probs == [0.9]


def test_score_rules_and_errors():
    fps, sens = [2.0, 1.0, 0.0, 0.0], [1.0, 0.5, 0.25, 0.0]
    assert froc_score(fps, sens, fp_rates=(0.5,)) == 0.5  # first point with >= 0.5 FPs
    assert froc_score(fps, sens, fp_rates=(0.5,), method="linear") == pytest.approx(0.375)
    assert froc_score(fps, sens, fp_rates=(8,)) == 1.0  # beyond the curve: its last point
    with pytest.raises(EvaluationError, match="unknown FROC method"):
        froc_score(fps, sens, method="area")
    with pytest.raises(EvaluationError, match="lesion"):
        froc([_slide([], [(1, 1, 0.9)])])
    zero = froc([_slide([disc(5000, 5000, 1000)], [(5000, 5000, 0.0)])])
    assert zero.thresholds == [] and zero.score == 0.0  # p = 0 is no detection
    assert tumour_geometry(None).is_empty
