"""Synthetic cohorts: N slides, a fraction with tumours, and a manifest CSV."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from exaslide.manifest import write_manifest
from exaslide.synth.slide import SynthSlide, SynthSpec, write_synthetic_slide

logger = logging.getLogger(__name__)

SPLITS = (("train", 0.7), ("val", 0.15), ("test", 0.15))


def make_cohort(
    out_dir: str | Path,
    n_slides: int,
    *,
    tumour_fraction: float = 0.5,
    base: SynthSpec | None = None,
    seed: int = 0,
    size_jitter: float = 0.25,
    on_slide: Callable[[SynthSlide], None] | None = None,
) -> Path:
    """Write ``n_slides`` synthetic slides into ``out_dir`` and ``out_dir/manifest.csv``.

    Slide ``i`` gets its own seed derived from ``seed``; ``round(n * tumour_fraction)``
    slides (chosen at random) have 1-``base.tumours`` tumours and an XML annotation, the
    others none. Sizes vary by up to ``size_jitter`` around ``base``'s. Splits are drawn
    70/15/15 (train/val/test). Slides already present with the same spec are rewritten
    (generation is deterministic, so they are identical).

    Returns:
        The manifest path.
    """
    if n_slides < 1:
        raise ValueError("a cohort needs at least one slide")
    if not 0.0 <= tumour_fraction <= 1.0:
        raise ValueError("tumour_fraction must be between 0 and 1")
    base = base or SynthSpec(width=4096, height=3072)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_tumour = round(n_slides * tumour_fraction)
    has_tumour = np.zeros(n_slides, bool)
    has_tumour[rng.permutation(n_slides)[:n_tumour]] = True
    splits = rng.choice([s for s, _ in SPLITS], size=n_slides, p=[p for _, p in SPLITS])
    rows = []
    for i in range(n_slides):
        jitter = rng.uniform(1 - size_jitter, 1 + size_jitter, 2)
        spec = replace(
            base,
            width=max(256, int(base.width * jitter[0])),
            height=max(256, int(base.height * jitter[1])),
            tumours=int(rng.integers(1, max(1, base.tumours) + 1)) if has_tumour[i] else 0,
            seed=int(rng.integers(2**31)),
        )
        slide_id = f"synth_{i:03d}"
        made = write_synthetic_slide(out / f"{slide_id}.tif", spec)
        if on_slide is not None:
            on_slide(made)
        rows.append({
            "slide_id": slide_id,
            "path": made.path.name,
            "annotation": made.annotation_path.name if made.annotation_path else "",
            "label": "tumour" if has_tumour[i] else "normal",
            "split": str(splits[i]),
            "width": spec.width, "height": spec.height, "tumours": spec.tumours,
            "seed": spec.seed, "mpp": spec.mpp,
        })
    return write_manifest(out / "manifest.csv", rows)
