"""Shared viewer fixtures: an exaslide output folder built from one odd-sized synthetic
slide (manifest + annotations, a heatmap with uncomputed cells and a MIL attention map, a
label mask, a patch index with predictions, FROC detections, a tiny retrieval index, and a
corrupt slide), and a real viewer server on 127.0.0.1 serving it from a background
thread."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SLIDE_ID = "odd slide"  # not URL-safe: served as "odd_slide"
SERVED_ID = "odd_slide"
WIDTH, HEIGHT = 3001, 2011
CELL = 128
INDEX_PATCH, INDEX_LEVEL, INDEX_STEP = 32, 1, 256  # 32 px at level 1 = 64 level-0 px


@dataclass
class ViewerData:
    """The output folder and what it holds."""

    root: Path
    slide_path: Path
    annotation: Path
    heatmap: np.ndarray
    served_id: str = SERVED_ID
    source_id: str = SLIDE_ID


def _write_heatmap(root: Path) -> np.ndarray:
    from exaslide.heatmaps import write_heatmap

    rows, cols = -(-HEIGHT // CELL), -(-WIDTH // CELL)
    rng = np.random.default_rng(0)
    probabilities = rng.random((rows, cols)).astype(np.float32)
    probabilities[0, :] = np.nan  # not computed: transparent
    probabilities[:, -1] = np.nan
    write_heatmap(root / "heatmaps", SLIDE_ID, probabilities,
                  {"level0_size": [WIDTH, HEIGHT], "origin": [0, 0], "cell": CELL,
                   "mpp": [0.5, 0.5], "classes": ["normal", "tumour"], "model": "test"})
    # a MIL attention map too: the page shows one heatmap at a time, the first
    write_heatmap(root / "mil" / "heatmaps", SLIDE_ID, rng.random((rows, cols)) / 10,
                  {"level0_size": [WIDTH, HEIGHT], "origin": [0, 0], "cell": CELL,
                   "mpp": [0.5, 0.5], "classes": ["normal", "tumour"], "model": "abmil",
                   "score": "attention"})
    return probabilities


def _write_mask(root: Path) -> None:
    from exaslide.masks.outputs import write_pyramid_tiff

    down = 16
    labels = np.zeros((-(-HEIGHT // down), -(-WIDTH // down)), np.uint8)
    labels[20:80, 30:120] = 1
    labels[40:60, 50:70] = 2
    (root / "masks").mkdir()
    write_pyramid_tiff(root / "masks" / f"{SLIDE_ID}_mask.tif", labels, (8.0, 8.0))
    (root / "masks" / f"{SLIDE_ID}_summary.json").write_text(
        json.dumps({"mask": {"width": labels.shape[1], "height": labels.shape[0],
                             "downsample": float(down)}}))


def _write_patches(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    coords = [(x, y) for y in range(0, 1024, 256) for x in range(0, 1024, 256)]
    keys = [f"p{x}_{y}" for x, y in coords]
    (root / "patches" / "index").mkdir(parents=True)
    pq.write_table(pa.table({"key": keys, "slide_id": [SLIDE_ID] * len(coords),
                             "x": [x for x, _ in coords], "y": [y for _, y in coords],
                             "footprint": [256.0] * len(coords),
                             "label": ["tumour" if x >= 512 else "normal" for x, _ in coords]}),
                   root / "patches" / "index" / f"{SLIDE_ID}.parquet")
    with open(root / "patch_predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "slide_id", "label", "score"])
        for i, key in enumerate(keys):
            writer.writerow([key, SLIDE_ID, "tumour" if i % 2 else "normal", i / len(keys)])
    (root / "evaluation").mkdir()
    with open(root / "evaluation" / "detections.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide_id", "x", "y", "p", "outcome", "lesion"])
        writer.writerow([SLIDE_ID, 1000.0, 700.0, 0.9, "tp", 1])
        writer.writerow([SLIDE_ID, 2500.0, 300.0, 0.6, "fp", 0])
        writer.writerow(["elsewhere", 10.0, 10.0, 0.6, "fp", 0])


def _write_index(root: Path, slide_path: Path) -> None:
    """A flat index of a random-weight small-cnn's embeddings of a grid of patches."""
    import pyarrow as pa
    import torch

    from exaslide.models import create_model, embedding_dim, load_model, save_model
    from exaslide.retrieval.index import build_index
    from exaslide.retrieval.search import _embed_patches
    from exaslide.retrieval.store import write_info, write_part
    from exaslide.slides import open_slide

    torch.manual_seed(0)
    meta = {"classes": ["normal", "tumour"],
            "patch": {"size": INDEX_PATCH, "level": INDEX_LEVEL, "mpp": None},
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    model_path = save_model(root / "model.pt", create_model("small-cnn", num_classes=2), meta)
    model, _ = load_model(model_path)
    spec = {"size": INDEX_PATCH, "level": INDEX_LEVEL, "mpp": None, "mean": meta["mean"],
            "std": meta["std"]}
    coords = [(x, y) for y in range(0, HEIGHT - 64, INDEX_STEP)
              for x in range(0, WIDTH - 64, INDEX_STEP)]
    with open_slide(slide_path) as slide:
        patches = [slide.read_region((x, y), (INDEX_PATCH, INDEX_PATCH), level=INDEX_LEVEL)
                   for x, y in coords]
    vectors = _embed_patches(model, spec, patches)
    n = len(coords)
    table = pa.table({"key": [f"k{x}_{y}" for x, y in coords],
                      "slide_id": [SLIDE_ID if i % 3 else "not-served" for i in range(n)],
                      "x": [x for x, _ in coords], "y": [y for _, y in coords],
                      "level": [INDEX_LEVEL] * n, "size": [INDEX_PATCH] * n,
                      "label": ["left" if x < WIDTH // 2 else "right" for x, _ in coords]})
    store = root / "embeddings"
    write_info(store, {"kind": "patches", "dim": embedding_dim(model), "model": "small-cnn",
                       "model_path": str(model_path), "patch": meta["patch"],
                       "mean": meta["mean"], "std": meta["std"]})
    write_part(store, "part", table, vectors)
    build_index(store, root / "index", "flat",
                slides={SLIDE_ID: str(slide_path), "not-served": str(slide_path)})


@pytest.fixture(scope="session")
def viewer_data(tmp_path_factory) -> ViewerData:
    """An exaslide output folder with everything the viewer shows (see the module
    docstring)."""
    from exaslide.manifest import write_manifest
    from exaslide.synth import SynthSpec, write_synthetic_slide

    root = tmp_path_factory.mktemp("viewer") / "out"
    cohort = root / "cohort"
    cohort.mkdir(parents=True)
    synth = write_synthetic_slide(cohort / "odd.tif",
                                  SynthSpec(width=WIDTH, height=HEIGHT, tumours=2, seed=7,
                                            level_factor=2, top_level_max=256))
    (cohort / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 100)  # a corrupt TIFF
    write_manifest(cohort / "manifest.csv", [
        {"slide_id": SLIDE_ID, "path": "odd.tif", "annotation": "odd.xml",
         "label": "tumour", "split": "test"},
        {"slide_id": "broken", "path": "broken.tif", "annotation": "", "label": "normal",
         "split": "test"}])
    heatmap = _write_heatmap(root)
    _write_mask(root)
    _write_patches(root)
    _write_index(root, synth.path)
    return ViewerData(root, Path(synth.path), cohort / "odd.xml", heatmap)


@pytest.fixture(scope="session")
def viewer_server(viewer_data):
    """Base URL (``http://127.0.0.1:PORT``, no trailing slash) of a real viewer serving
    :func:`viewer_data`'s folder on 127.0.0.1, in a background thread, for the session."""
    from exaslide.viewer import serve_in_thread

    with serve_in_thread([viewer_data.root]) as running:
        yield running.url.rstrip("/")
