"""The end-to-end demo: synthetic cohort -> masks -> patches -> training -> heatmaps ->
CAMELYON-style evaluation -> ``report.html`` and ``metrics.json``.

Everything runs on built-in synthetic slides (purple tumours with crowded nuclei, known
polygons), so the result can be checked: a model that learnt the tumour reaches a patch
AUC near 1 on the held-out slides. Sized to finish in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
        say(f"[{len(timings) + 1}/7] {message}")
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
    timings["end"] = time.perf_counter()
    names = list(timings)
    seconds = {n: timings[names[i + 1]] - timings[n] for i, n in enumerate(names[:-1])}
    metrics = {
        "patch_auc": evaluation["patch"]["roc_auc"] if evaluation["patch"] else None,
        "slide_auc": (evaluation["slide"] or {}).get("roc_auc"),
        "froc": (evaluation["lesion"] or {}).get("score"),
        "patch": evaluation["patch"], "slide": evaluation["slide"],
        "lesion": _without_curve(evaluation["lesion"]),
        "training": {"best_epoch": result.best_epoch, "best_val_auc": result.best_val_auc,
                     "history": result.history},
        "seconds": seconds, "options": asdict(options),
    }
    from exaslide.atomic import write_text
    from exaslide.demo.report import write_report

    write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=_plain) + "\n")
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


def _cell(options: DemoOptions, slide_mpp: float = 0.5) -> int:
    """Heatmap cell side in level-0 pixels: half a patch footprint (synthetic slides are
    0.5 um/px at level 0)."""
    return max(1, round(options.patch_size * options.mpp / slide_mpp / 2))


def _without_curve(lesion: dict | None) -> dict | None:
    if not lesion:
        return lesion
    return {k: v for k, v in lesion.items() if k != "curve"}


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)
