"""Synthetic cohorts: N slides, a fraction with tumours, and a manifest CSV."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from exaslide.manifest import write_manifest
from exaslide.synth.slide import (
    MAX_SIDE,
    SynthError,
    SynthSlide,
    SynthSpec,
    check_disk_space,
    estimated_disk_bytes,
    write_synthetic_slide,
)

logger = logging.getLogger(__name__)

MAX_COHORT = 100_000  #: most slides in a synthetic cohort
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

    Every slide's parameters are drawn and checked, and the disk space of the whole cohort
    estimated, before anything is written.

    Returns:
        The manifest path.
    """
    if not 1 <= n_slides <= MAX_COHORT:
        raise SynthError(f"a cohort has 1 to {MAX_COHORT} slides, not {n_slides}")
    if not 0.0 <= tumour_fraction <= 1.0:
        raise SynthError("tumour_fraction must be between 0 and 1")
    if not 0.0 <= size_jitter < 1.0:
        raise SynthError("size_jitter must be from 0 to below 1")
    base = base or SynthSpec(width=4096, height=3072)
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    n_tumour = round(n_slides * tumour_fraction)
    has_tumour = np.zeros(n_slides, bool)
    has_tumour[rng.permutation(n_slides)[:n_tumour]] = True
    splits = rng.choice([s for s, _ in SPLITS], size=n_slides, p=[p for _, p in SPLITS])
    specs = [_slide_spec(base, rng, size_jitter, has_tumour[i]) for i in range(n_slides)]
    check_disk_space(out, sum(estimated_disk_bytes(spec) for spec in specs))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, spec in enumerate(specs):
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


def _slide_spec(base: SynthSpec, rng: np.random.Generator, size_jitter: float,
                tumour: bool) -> SynthSpec:
    """One cohort slide's parameters: ``base`` with jittered size (kept within 256 ..
    :data:`MAX_SIDE`), a tumour count and its own seed."""
    jitter = rng.uniform(1 - size_jitter, 1 + size_jitter, 2)
    spec = replace(
        base,
        width=min(MAX_SIDE, max(256, int(base.width * jitter[0]))),
        height=min(MAX_SIDE, max(256, int(base.height * jitter[1]))),
        tumours=int(rng.integers(1, max(1, base.tumours) + 1)) if tumour else 0,
        seed=int(rng.integers(2**31)),
    )
    spec.validate()
    return spec
