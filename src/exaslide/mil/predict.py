"""``predict_mil``: a trained MIL model over every slide of a feature store.

Outputs in ``out``: ``predictions.csv`` (``slide_id``, ``p_<class>`` per class,
``predicted``), ``heatmaps/<slide_id>.heatmap.npy|json`` (:mod:`exaslide.mil.heatmaps`)
and ``predict.json`` (the model, the store, the slides that failed with their one-line
errors). A slide whose bag cannot be used (no patches, a corrupt part) is reported and
the others go on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exaslide.mil.errors import MILError

logger = logging.getLogger(__name__)


@dataclass
class PredictResult:
    """What :func:`predict_mil` wrote."""

    out: Path
    rows: list[dict[str, Any]]  #: slide_id, probs (per class)
    classes: list[str]
    failed: list[dict[str, str]] = field(default_factory=list)  #: slide_id, error
    heatmaps: int = 0
    heatmap_failures: list[str] = field(default_factory=list)


def write_heatmaps(model, store, slide_ids: list[str], folder: Path, *,
                   probs: dict[str, list[float]], slide_paths: dict[str, str | None],
                   classes: list[str], score: str = "attention", device="cpu"
                   ) -> dict[str, Any]:
    """A heatmap of per-patch scores for each slide of ``slide_ids`` that has
    ``probs``; ``{"written": n, "failed": ["<slide>: <error>", ...]}``."""
    from exaslide.errors import ExaslideError
    from exaslide.mil.heatmaps import write_score_heatmap
    from exaslide.models.features import unwrap

    model = unwrap(model).eval()
    kind = "instance" if model.score_kind == "instance" or score == "instance" else \
        "attention"
    written, failed = 0, []
    for slide_id in slide_ids:
        if slide_id not in probs:
            continue
        try:
            scores = model.patch_scores(store.bag(slide_id, device=device), kind)
            values = scores.float().cpu().numpy()
            if kind == "attention":
                values = values * (1.0 - float(probs[slide_id][0]))
            write_score_heatmap(folder, store, slide_id, values,
                                slide_path=slide_paths.get(slide_id), classes=classes,
                                model=model.exaslide_name, score=kind)
            written += 1
        except (ExaslideError, OSError) as exc:
            failed.append(f"{slide_id}: {' '.join(str(exc).split())}")
            logger.info("no heatmap for %s", failed[-1])  # the caller reports it
    return {"written": written, "failed": failed}


def predict_mil(model_path: str | os.PathLike, features: str | os.PathLike,
                out: str | os.PathLike, *, manifest: str | os.PathLike | None = None,
                device: str = "auto", heatmaps: bool = True,
                score: str = "attention") -> PredictResult:
    """Predict every slide of the store ``features`` with the MIL model file
    ``model_path``.

    Args:
        manifest: optional cohort manifest whose slide paths place the heatmaps (else the
            paths the extraction recorded).
        device: auto, cpu, cuda, cuda:N or mps.
        heatmaps: write per-patch heatmaps.
        score: ``"attention"`` or ``"instance"`` (CLAM-SB; mean-pool always shows
            instance scores).

    Raises:
        MILError: a file that is not a MIL model, features of another dimension, a store
            without slides.
    """
    from exaslide.mil.bags import FeatureStore, Slide
    from exaslide.mil.loop import predict
    from exaslide.mil.weights import load_mil_model
    from exaslide.runtime import resolve_device

    dev = resolve_device(device)
    model, meta = load_mil_model(model_path, dev)
    store = FeatureStore(features)
    store.check_dim(model.in_dim, f"model {model_path} ({meta['model']})")
    if not store.slide_ids:
        raise MILError(f"{store.folder}: the store holds no slide yet")
    classes = list(meta.get("classes") or [f"class{i}" for i in range(model.n_classes)])
    slides = [Slide(s, -1, "", s, None) for s in store.slide_ids]
    rows = predict(model, store, slides, device=dev)
    good = [{"slide_id": r["slide_id"], "probs": r["probs"]} for r in rows if "probs" in r]
    failed = [{"slide_id": r["slide_id"], "error": r["error"]} for r in rows if "error" in r]
    out = Path(out)
    result = PredictResult(out, good, classes, failed)
    if heatmaps:
        done = write_heatmaps(model, store, [r["slide_id"] for r in good], out / "heatmaps",
                              probs={r["slide_id"]: r["probs"] for r in good},
                              slide_paths=_manifest_paths(manifest), classes=classes,
                              score=score, device=dev)
        result.heatmaps, result.heatmap_failures = done["written"], done["failed"]
    _write(result, model_path, store, meta)
    store.warn_unchecked()
    return result


def _manifest_paths(manifest) -> dict[str, str | None]:
    if manifest is None:
        return {}
    from exaslide.manifest import read_manifest

    return {e.slide_id: os.fspath(e.path) for e in read_manifest(manifest)}


def _write(result: PredictResult, model_path, store, meta: dict) -> None:
    from exaslide.jsonio import write_json
    from exaslide.mil.metrics import write_predictions

    result.out.mkdir(parents=True, exist_ok=True)
    write_predictions(result.out / "predictions.csv", result.rows, result.classes)
    write_json(result.out / "predict.json", {
        "model": str(model_path), "model_name": meta.get("model"),
        "features": str(store.folder), "classes": result.classes,
        "slides": len(result.rows), "failed": result.failed,
        "heatmaps": {"written": result.heatmaps, "failed": result.heatmap_failures}})
