"""The end-to-end demo: synthetic cohort -> masks -> patches -> training -> heatmaps ->
CAMELYON-style evaluation -> ``report.html`` and ``metrics.json``.

Everything runs on built-in synthetic slides (purple tumours with crowded nuclei, known
polygons), so the result can be checked: a model that learnt the tumour reaches a patch
AUC near 1 on the held-out slides. Sized to finish in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exaslide.demo import slide_level

#: Slides per split and class: (train, val, test) for tumour slides and for normal slides.
SPLIT_COUNTS = (("train", 3), ("val", 1), ("test", 2))


@dataclass
class DemoOptions:
    """Sizes of the demo (defaults: 12 slides, about a minute on 2 cores)."""

    slides: int = 12
    width: int = 4096
    height: int = 3072
    seed: int = 7
    epochs: int = 4
    patch_size: int = 64  #: pixels, read at ``mpp``
    mpp: float = 2.0
    stride: int = 32  #: grid step in patch pixels (half-overlapping patches)
    batch_size: int = 64
    workers: int = 2  #: Dask workers for extraction
    patients: int = slide_level.PATIENTS  #: synthetic CAMELYON17 patients (x 5 nodes)


def assign_splits(rows: list[dict[str, str]]) -> None:
    """Stratified splits: per class, 3/6 train, 1/6 val, 2/6 test (deterministic)."""
    for label in ("tumour", "normal"):
        members = [r for r in rows if r["label"] == label]
        n = len(members)
        counts = [max(1, round(n * c / 6)) for _, c in SPLIT_COUNTS]
        counts[0] = max(1, n - sum(counts[1:]))
        names = [s for (s, _), k in zip(SPLIT_COUNTS, counts, strict=True) for _ in range(k)]
        for row, split in zip(members, names, strict=False):
            row["split"] = split


def run_demo(out_dir: str | Path, options: DemoOptions | None = None,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step into ``out_dir``; returns the content of ``metrics.json``."""
    options = options or DemoOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def step(name: str, message: str):
        say(f"[{len(timings) + 1}/12] {message}")
        timings[name] = time.perf_counter()

    step("cohort", f"synthetic cohort: {options.slides} slides, half with tumours")
    manifest = _cohort(out / "cohort", options)
    entries = _entries(manifest)
    step("masks", "label masks and the three-panel figure of one test slide")
    figure = _figure(entries, out / "masks")
    step("extract", "patch index (grid over tissue) on a Dask LocalCluster")
    _extract(entries, out / "patches", options)
    step("train", f"training small-cnn for {options.epochs} epochs")
    result = _train(out, options)
    step("predict", "patch predictions on the held-out test slides")
    predictions = _patch_predictions(out, result.model_path)
    step("infer", "whole-slide heatmaps of the test slides")
    test = [e for e in entries if e.split == "test"]
    _heatmaps(result.model_path, test, out / "heatmaps", _cell(options))
    step("evaluate", "patch AUC, slide AUC, lesion FROC")
    evaluation = _evaluate(out, test, predictions)
    step("retrieval", "patch embeddings, vector index, image-to-image retrieval")
    retrieval = _patch_retrieval(out, result.model_path)
    step("captions", "captioned figures: joint image-text space, text-to-image search")
    captions = _caption_retrieval(out, options.seed)
    step("mil", "ABMIL on the CNN's patch features: slide-level tumour vs normal")
    mil = slide_level.mil(out, manifest, options.seed)
    tumour_test = next(e for e in test if e.label == "tumour")
    slide_level.attention_figure(out, tumour_test.slide_id, tumour_test.path)
    step("encoder", "a registry encoder (ResNet-50 to layer 3, random weights) on patches")
    encoder = slide_level.encoder_features(out, options.seed, tumour_test.slide_id)
    step("patients", f"CAMELYON17: {options.patients} synthetic patients x 5 nodes, "
                     "slide classes, pN stage, kappa")
    staging = slide_level.patients(out, result.model_path, options.seed,
                                   _cell(options, slide_mpp=slide_level.PATIENT_MPP),
                                   options.patients)
    timings["end"] = time.perf_counter()
    names = list(timings)
    seconds = {n: timings[names[i + 1]] - timings[n] for i, n in enumerate(names[:-1])}
    metrics = {
        "patch_auc": evaluation["patch"]["roc_auc"] if evaluation["patch"] else None,
        "slide_auc": (evaluation["slide"] or {}).get("roc_auc"),
        "froc": (evaluation["lesion"] or {}).get("score"),
        "retrieval_precision_at_10": retrieval["precision_at_k"],
        "text_to_image_recall_at_10": captions["text_to_image"][10],
        "mil_slide_auc": mil["mil_slide_auc"],
        "stage_kappa": staging["stage_kappa"],
        "patch": evaluation["patch"], "slide": evaluation["slide"],
        "lesion": _without_curve(evaluation["lesion"]),
        "training": {"best_epoch": result.best_epoch, "best_val_auc": result.best_val_auc,
                     "history": result.history},
        "retrieval": retrieval, "captions": captions, "mil": mil["mil"],
        "encoder": encoder, "camelyon17": staging,
        "seconds": seconds, "options": asdict(options),
    }
    from exaslide.demo.report import write_report
    from exaslide.jsonio import write_json

    write_json(out / "metrics.json", metrics)
    write_report(out, metrics, figure=figure, test_slides=[e.slide_id for e in test])
    return metrics


def _cohort(folder: Path, options: DemoOptions) -> Path:
    from exaslide.atomic import write_text
    from exaslide.synth import SynthSpec, make_cohort

    manifest = make_cohort(folder, options.slides, tumour_fraction=0.5, seed=options.seed,
                           base=SynthSpec(width=options.width, height=options.height,
                                          tumours=3))
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assign_splits(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(manifest, buffer.getvalue())
    return manifest


def _entries(manifest: Path):
    from exaslide.manifest import read_manifest

    return read_manifest(manifest)


def _figure(entries, folder: Path) -> Path:
    from exaslide.masks.run import MaskOptions, mask_slide

    entry = next(e for e in entries if e.split == "test" and e.label == "tumour")
    mask_slide(entry.path, entry.annotation, folder, entry.slide_id, MaskOptions(mpp=8.0))
    return folder / f"{entry.slide_id}_figure.png"


def _extract(entries, folder: Path, options: DemoOptions) -> None:
    from exaslide.patches import ExtractOptions, PatchSpec, SamplingOptions, run_extraction

    extract = ExtractOptions(spec=PatchSpec(size=options.patch_size, level=None,
                                            mpp=options.mpp),
                             sampling=SamplingOptions(stride=options.stride, min_tissue=0.5,
                                                      seed=options.seed))
    outcomes = run_extraction(entries, folder, extract, workers=options.workers)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        from exaslide.errors import ExaslideError

        raise ExaslideError(f"demo extraction failed on {failed[0].slide_id}: "
                            f"{failed[0].error}")


def _train(out: Path, options: DemoOptions):
    from exaslide.train import TrainConfig, train

    config = TrainConfig(data=str(out / "patches"), out=str(out / "train"),
                         model="small-cnn", patch_size=None, epochs=options.epochs,
                         batch_size=options.batch_size, workers=0, lr=1e-3,
                         seed=options.seed, patience=None,
                         augment={"flip_rot90": True, "hed": {"sigma": 0.03, "bias": 0.03}})
    return train(config)


def _patch_predictions(out: Path, model_path: Path) -> Path:
    import pyarrow.compute as pc
    import torch

    from exaslide.atomic import write_text
    from exaslide.augment import to_float
    from exaslide.data import SlidePatchDataset, make_loader
    from exaslide.models import load_model

    model, meta = load_model(model_path)
    model.eval()
    dataset = SlidePatchDataset(out / "patches", filter=pc.field("split") == "test",
                                classes=meta["classes"])
    tumour = meta["classes"].index("tumour")
    rows = ["key,slide_id,label,score"]
    with torch.inference_mode():
        for images, labels, info in make_loader(dataset, batch_size=256, workers=0):
            scores = torch.softmax(model(to_float(images, meta["mean"], meta["std"])), 1)
            for key, slide, label, score in zip(info["key"], info["slide_id"], labels.tolist(),
                                                scores[:, tumour].tolist(), strict=True):
                rows.append(f"{key},{slide},{dataset.classes[label]},{score:.6f}")
    path = out / "patch_predictions.csv"
    write_text(path, "\n".join(rows) + "\n")
    return path


def _heatmaps(model_path: Path, entries, folder: Path, stride: int) -> None:
    from exaslide.infer import infer_slide
    from exaslide.models import load_model

    model, meta = load_model(model_path)
    for entry in entries:
        infer_slide(model, meta, entry.path, folder, slide_id=entry.slide_id, stride=stride,
                    progress=False)


def _evaluate(out: Path, test, predictions: Path) -> dict[str, Any]:
    from exaslide.evaluate import evaluate_run

    return evaluate_run(out / "heatmaps", test, out / "evaluation", predictions)


def _patch_retrieval(out: Path, model_path: Path) -> dict[str, Any]:
    """Embed every patch with the trained model, index the training/validation patches'
    vectors (exact search), and query with the test slides' patches: precision@10 by
    label (hits from the query's own slide excluded). Writes a gallery of one tumour
    query."""
    from exaslide.retrieval.embed import embed_patches
    from exaslide.retrieval.gallery import hit_image, write_gallery
    from exaslide.retrieval.index import build_index
    from exaslide.retrieval.metrics import evaluate_retrieval
    from exaslide.retrieval.store import read_embeddings

    store = embed_patches(model_path, out / "patches", out / "embeddings", workers=0,
                          progress=False)
    index = build_index(store, out / "index", kind="flat")
    result = evaluate_retrieval(index, store, k=10, split="test")
    embeddings = read_embeddings(store)
    rows = embeddings.table.to_pylist()
    query = next((i for i, r in enumerate(rows)
                  if r["split"] == "test" and r["label"] == "tumour"), 0)
    hits = [h for h in index.search(embeddings.vectors[query][None], 20)[0]
            if h.meta.get("split") != "test"][:8]
    query_hit = index.search(embeddings.vectors[query][None], 1)[0][0]
    write_gallery(hit_image(index, query_hit), hits, out / "retrieval_gallery.png",
                  [hit_image(index, h) for h in hits])
    return result


def _caption_retrieval(out: Path, seed: int, count: int = 300,
                       held_out: int = 50) -> dict[str, Any]:
    """Synthetic captioned figures: train projection heads on all but ``held_out`` pairs
    with the CLIP loss, report recall@1/5/10 both ways on the held-out pairs (and the
    random baseline), and write a gallery of a text query."""
    from exaslide.retrieval.gallery import write_gallery
    from exaslide.retrieval.index import Hit
    from exaslide.retrieval.multimodal import (
        image_features,
        read_figure_collection,
        recall_at_k,
        train_projection,
    )
    from exaslide.retrieval.search import read_image
    from exaslide.retrieval.text import TextEncoder
    from exaslide.synth.figures import make_figures

    figures = read_figure_collection(make_figures(out / "figures", count, seed=seed,
                                                  size=(96, 128)))
    images = image_features(figures)
    encoder = TextEncoder()
    texts = encoder.encode([f.caption for f in figures])
    train = slice(0, count - held_out)
    test = slice(count - held_out, count)
    heads = train_projection(images[train], texts[train], seed=seed)
    image_vecs, text_vecs = heads.embed_image(images[test]), heads.embed_text(texts[test])
    recall = recall_at_k(image_vecs, text_vecs)
    query = "metastatic tumour, immunohistochemistry, high magnification"
    scores = heads.embed_image(images) @ heads.embed_text(encoder.encode([query]))[0]
    best = scores.argsort()[::-1][:8]
    hits = [Hit(score=float(scores[i]), id=int(i),
                meta={"figure_id": figures[i].figure_id, **figures[i].labels})
            for i in best]
    write_gallery(None, hits, out / "text_query_gallery.png",
                  [read_image(figures[i].path) for i in best])
    return {"query": query, "held_out_pairs": held_out,
            "text_to_image": recall["text_to_image"], "image_to_text": recall["image_to_text"],
            "random": recall["random"]}


def _cell(options: DemoOptions, slide_mpp: float = 0.5) -> int:
    """Heatmap cell side in level-0 pixels: half a patch footprint (synthetic slides are
    0.5 um/px at level 0)."""
    return max(1, round(options.patch_size * options.mpp / slide_mpp / 2))


def _without_curve(lesion: dict | None) -> dict | None:
    if not lesion:
        return lesion
    return {k: v for k, v in lesion.items() if k != "curve"}
