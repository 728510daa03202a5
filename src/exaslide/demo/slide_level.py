"""The demo's slide-level steps: MIL on patch features, a registry encoder on random
weights, and the CAMELYON17 task on synthetic patients (slide classes, pN stage, kappa).

Each function takes the demo's output folder and returns the part of ``metrics.json`` it
produced; :mod:`exaslide.demo.pipeline` calls them after the patch-level steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Patients of the synthetic CAMELYON17 cohort (x 5 nodes): 10 puts one patient of every
#: pN stage in the test split (see :func:`exaslide.synth.patients.make_patients`).
PATIENTS = 10
#: The patient slides: small (2 mm lesions must fit), at the demo CNN's resolution.
PATIENT_SIDE = 1792
PATIENT_MPP = 2.0


def mil(out: Path, manifest: Path, seed: int) -> dict[str, Any]:
    """ABMIL on the trained CNN's patch features (``out/embeddings``), tumour vs normal,
    trained on the train split, early-stopped on val, scored on test; attention maps of
    the test slides in ``out/mil/heatmaps/`` (the heatmap format of ``exaslide infer``)."""
    from exaslide.mil import MILConfig, train_mil

    result = train_mil(MILConfig(features=str(out / "embeddings"), manifest=str(manifest),
                                 out=str(out / "mil"), model="abmil", epochs=20,
                                 device="cpu", seed=seed))
    metrics = result.metrics
    return {"mil_slide_auc": metrics.get("slide_auc"), "mil": metrics,
            "warnings": list(result.warnings)}


def encoder_features(out: Path, seed: int, slide_id: str) -> dict[str, Any]:
    """Embed a sample of one test slide's patches with a registry encoder on random
    weights (ResNet-50 truncated after layer 3, read at its own 224 px at 0.5 um/px):
    the path a foundation model takes, without its weights."""
    import time

    import pyarrow.compute as pc

    from exaslide.retrieval.embed import embed_patches
    from exaslide.retrieval.store import read_embeddings

    rows = (pc.field("slide_id") == slide_id) & \
        (pc.bit_wise_and(pc.field("x"), 511) == 0) & (pc.bit_wise_and(pc.field("y"), 511) == 0)
    started = time.perf_counter()
    store = embed_patches(None, out / "patches", out / "encoder_features", filter=rows,
                          encoder="resnet50-trunc", weights="random", workers=0,
                          batch_size=16, progress=False)
    found = read_embeddings(store)
    return {"encoder": "resnet50-trunc (random weights)", "patches": len(found),
            "dim": int(found.vectors.shape[1]),
            "seconds": round(time.perf_counter() - started, 1)}


def patients(out: Path, model_path: Path, seed: int, cell: int,
             count: int = PATIENTS) -> dict[str, Any]:
    """Synthetic patients (5 lymph nodes each, lesions sized by the CAMELYON17
    definitions), heatmaps of every node with the demo CNN, a slide classifier trained on
    the train patients' heatmaps, and the test patients' pN stages scored by quadratic
    kappa against the reference."""
    from dataclasses import replace

    from exaslide.evaluate.camelyon17 import stage_report
    from exaslide.evaluate.slide_classes import slide_class_report
    from exaslide.evaluate.staging import StageOptions, predict_stages, train_from_heatmaps
    from exaslide.infer import infer_slide
    from exaslide.manifest import read_manifest
    from exaslide.models import load_model
    from exaslide.synth.patients import PATIENT_SPEC, make_patients

    spec = replace(PATIENT_SPEC, width=PATIENT_SIDE, height=PATIENT_SIDE, mpp=PATIENT_MPP)
    folder = out / "patients"
    entries = read_manifest(make_patients(folder, count, base=spec, seed=seed))
    model, meta = load_model(model_path)
    heatmaps = out / "patient_heatmaps"
    for entry in entries:
        infer_slide(model, meta, entry.path, heatmaps, slide_id=entry.slide_id, stride=cell,
                    progress=False)
    stage_model = out / "stage_model"
    train_from_heatmaps(heatmaps, entries, stage_model, StageOptions(split="train"))
    predicted = predict_stages(heatmaps, out / "stage_submission.csv", model=stage_model,
                               manifest=entries, options=StageOptions(split="test"))
    report = stage_report(folder / "stage_test.csv", out / "stage_submission.csv")
    reference = {e.slide_id: e.extra["slide_class"] for e in entries if e.split == "test"}
    slides = slide_class_report(reference, predicted.slide_classes)
    return {"stage_kappa": report["kappa"], "stage": report, "slide_classes": slides,
            "patients": count, "nodes": len(entries)}


def attention_figure(out: Path, slide_id: str, slide_path) -> Path:
    """``mil_attention.png``: the test slide's CNN heatmap and its ABMIL attention map
    (scaled to the slide's MIL score), side by side over the slide."""
    import numpy as np

    from exaslide.heatmaps import read_heatmap
    from exaslide.infer.outputs import overlay_image
    from exaslide.masks.outputs import save_png
    from exaslide.slides import open_slide

    with open_slide(slide_path) as slide:
        thumbnail = slide.thumbnail(512)
    panels = []
    for folder in (out / "heatmaps", out / "mil" / "heatmaps"):
        heat = read_heatmap(folder, slide_id)
        panels.append(overlay_image(thumbnail, heat.probabilities, heat.cell,
                                    tuple(heat.meta["level0_size"]), max_side=512))
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 8), (0, 0)), constant_values=255)
              for p in panels]
    return save_png(out / "mil_attention.png", np.concatenate(padded, axis=1))
