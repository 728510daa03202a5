"""The CAMELYON16 FROC curve and score (challenge task 2, lesion-level detection).

As in the official evaluation code (computationalpathologygroup/Camelyon16
``Evaluation_FROC.py``, ``computeFROC``, and its later ``compute_froc`` / ``compute_score``):

- thresholds: every distinct detection probability of all slides, 0.0 excluded;
- at threshold ``t``: false positives = FP detections with ``p >= t`` summed over slides,
  divided by the number of slides (tumour and normal); sensitivity = lesions whose best
  detection has ``p >= t`` divided by all lesions to detect (ITCs excluded);
- a last point ``(0 FPs, sensitivity 0)`` closes the curve;
- score: mean sensitivity at 0.25, 0.5, 1, 2, 4 and 8 average FPs per slide. The official
  ``compute_score`` takes, for each target, the first operating point (thresholds from the
  highest down) whose average FP count is ``>= target`` (``bisect_left``), and the lowest
  threshold's point when no point reaches the target: a step rule, no interpolation
  (``method="official"``). ``method="linear"`` interpolates linearly instead (``np.interp``,
  as MONAI's ``compute_froc_score``).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from exaslide.errors import EvaluationError
from exaslide.evaluate.lesion import SlideLesions

FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
METHODS = ("official", "linear")


@dataclass
class FrocResult:
    """An FROC curve and its score.

    Attributes:
        thresholds: probability thresholds, increasing (the closing point has none).
        average_fps: average false positives per slide at each threshold, then 0.
        sensitivities: lesion sensitivity at each threshold, then 0.
        score: mean sensitivity at ``fp_rates``.
        sensitivity_at: ``{fp_rate: sensitivity}``.
        num_slides: slides evaluated (tumour and normal).
        num_lesions: lesions to detect (ITCs excluded).
        method: how sensitivities at the FP rates were read off the curve.
    """

    thresholds: list[float]
    average_fps: list[float]
    sensitivities: list[float]
    score: float
    sensitivity_at: dict[float, float] = field(default_factory=dict)
    num_slides: int = 0
    num_lesions: int = 0
    method: str = "official"

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {
            "score": self.score, "method": self.method,
            "sensitivity_at": {str(k): v for k, v in self.sensitivity_at.items()},
            "num_slides": self.num_slides, "num_lesions": self.num_lesions,
            "curve": {"thresholds": self.thresholds, "average_fps": self.average_fps,
                      "sensitivities": self.sensitivities},
        }


def froc_curve(fp_probs: Sequence[float], tp_probs: Sequence[float], num_slides: int,
               num_lesions: int) -> tuple[list[float], list[float], list[float]]:
    """``(thresholds, average_fps, sensitivities)`` from pooled detection probabilities.

    Args:
        fp_probs: probabilities of all false-positive detections of all slides.
        tp_probs: per lesion to detect, its best detection probability (0.0 if missed).
        num_slides: number of slides evaluated.
        num_lesions: number of lesions to detect.
    """
    if num_slides <= 0 or num_lesions <= 0:
        raise EvaluationError(f"an FROC needs slides and lesions to detect; got {num_slides} "
                              f"slide(s) and {num_lesions} lesion(s) (ITCs do not count)")
    fps = np.sort(np.asarray(fp_probs, dtype=np.float64))
    tps = np.sort(np.asarray(tp_probs, dtype=np.float64))
    thresholds = np.unique(np.concatenate([fps, tps]))
    thresholds = thresholds[thresholds != 0.0]
    # count of values >= t in a sorted array: len - searchsorted(left)
    fp_counts = len(fps) - np.searchsorted(fps, thresholds, side="left")
    tp_counts = len(tps) - np.searchsorted(tps, thresholds, side="left")
    average_fps = [*(fp_counts / num_slides).tolist(), 0.0]
    sensitivities = [*(tp_counts / num_lesions).tolist(), 0.0]
    return thresholds.tolist(), average_fps, sensitivities


def sensitivities_at(average_fps: Sequence[float], sensitivities: Sequence[float],
                     fp_rates: Sequence[float] = FP_RATES,
                     method: str = "official") -> list[float]:
    """Sensitivity of the curve at each average-FP rate (see the module docstring)."""
    if method not in METHODS:
        raise EvaluationError(f"unknown FROC method {method!r}; use one of {', '.join(METHODS)}")
    fps_r = list(reversed([float(v) for v in average_fps]))
    sens_r = list(reversed([float(v) for v in sensitivities]))
    if not fps_r:
        return [0.0] * len(fp_rates)
    if method == "linear":
        return np.interp(fp_rates, fps_r, sens_r).tolist()
    last = len(sens_r) - 1
    return [sens_r[min(bisect.bisect_left(fps_r, rate), last)] for rate in fp_rates]


def froc_score(average_fps: Sequence[float], sensitivities: Sequence[float],
               fp_rates: Sequence[float] = FP_RATES, method: str = "official") -> float:
    """The CAMELYON16 score: mean sensitivity at ``fp_rates`` average FPs per slide."""
    values = sensitivities_at(average_fps, sensitivities, fp_rates, method)
    return float(np.mean(values))


def froc(slides: Sequence[SlideLesions], fp_rates: Sequence[float] = FP_RATES,
         method: str = "official") -> FrocResult:
    """The FROC curve and score of matched slides (see :func:`match_detections`).

    Raises:
        EvaluationError: no slides, or no lesion to detect in any of them.
    """
    fp_probs = [p for s in slides for p in s.fp_probs]
    tp_probs = [p for s in slides for p in s.tp_probs]
    num_lesions = sum(s.num_lesions for s in slides)
    thresholds, average_fps, sens = froc_curve(fp_probs, tp_probs, len(slides), num_lesions)
    at = sensitivities_at(average_fps, sens, fp_rates, method)
    return FrocResult(thresholds, average_fps, sens, float(np.mean(at)),
                      dict(zip((float(r) for r in fp_rates), at, strict=True)),
                      len(slides), num_lesions, method)
