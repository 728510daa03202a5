"""Tiny synthetic MIL cohorts: an embedding store of float16 bags (tumour slides hold a
few patches shifted along the first dimensions), a fake extraction index for the
heatmap footprint, and a manifest with splits, patients and CAMELYON17 slide classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from exaslide.manifest import write_manifest
from exaslide.retrieval.store import write_info, write_part

DIM = 16
FOOTPRINT = 256
CLASSES17 = ("negative", "itc", "micro", "macro")


def bag(rng: np.random.Generator, n: int, tumour_share: float) -> np.ndarray:
    """``n x DIM`` features; ``tumour_share`` of the patches shifted by +3 on dims 0-3."""
    features = rng.normal(size=(n, DIM))
    k = round(n * tumour_share)
    features[:k, :4] += 3.0
    return features


def write_slide(store: Path, slide_id: str, features: np.ndarray, split: str = "train"
                ) -> None:
    """One part of the store, patches on a 256-px grid (8 per row)."""
    n = len(features)
    x = (np.arange(n) % 8) * FOOTPRINT
    y = (np.arange(n) // 8) * FOOTPRINT
    table = pa.table({"key": [f"{slide_id}:{a}:{b}" for a, b in zip(x, y, strict=True)],
                      "slide_id": [slide_id] * n, "x": pa.array(x, pa.int64()),
                      "y": pa.array(y, pa.int64()), "level": pa.array([0] * n, pa.int16()),
                      "size": pa.array([FOOTPRINT] * n, pa.int32()),
                      "label": ["tumour"] * n, "split": [split] * n})
    write_part(store, slide_id, table, features.astype(np.float32))
    index = store.parent / "extract" / "index"
    index.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"footprint": pa.array([float(FOOTPRINT)] * max(n, 1),
                                                   pa.float32())}),
                   index / f"{slide_id}.parquet")


def make_cohort(root: Path, n_slides: int = 24, seed: int = 0, dim: int = DIM,
                splits=("train", "train", "val", "test")) -> tuple[Path, Path]:
    """``(store, manifest)``: half the slides tumour (with a CAMELYON17 class among
    itc/micro/macro by how many patches are shifted), two slides per patient."""
    rng = np.random.default_rng(seed)
    store = root / "features"
    write_info(store, {"kind": "patches", "dim": dim, "model": "synthetic",
                       "model_path": None, "patch": {"size": FOOTPRINT, "level": 0,
                                                     "mpp": None},
                       "source": str(root / "extract")})
    rows = []
    for i in range(n_slides):
        tumour = i % 2 == 1
        klass = CLASSES17[1 + (i // 2) % 3] if tumour else "negative"
        share = {"negative": 0.0, "itc": 0.1, "micro": 0.3, "macro": 0.6}[klass]
        split = splits[(i // 2) % len(splits)]
        slide_id = f"s{i:02d}"
        features = bag(rng, int(rng.integers(20, 40)), share)
        if dim != DIM:
            features = rng.normal(size=(len(features), dim))
        write_slide(store, slide_id, features, split)
        rows.append({"slide_id": slide_id, "path": f"missing/{slide_id}.tif",
                     "annotation": "", "label": "tumour" if tumour else "normal",
                     "split": split, "patient": f"p{i // 2:02d}", "slide_class": klass})
    manifest = write_manifest(root / "cohort.csv", rows)
    return store, manifest


def config(root: Path, store: Path, manifest: Path, **extra) -> dict:
    """A small, fast MIL config."""
    return {"features": str(store), "manifest": str(manifest), "out": str(root / "run"),
            "model": "abmil", "hidden": [16, 8], "epochs": 6, "lr": 5e-3, "dropout": 0.0,
            "device": "cpu", "threads": 1, "seed": 0, **extra}
