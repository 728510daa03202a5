"""Whole-slide heatmaps: a trained model applied to every tissue cell of a slide.

>>> from exaslide.models import load_model
>>> from exaslide.infer import infer_slide, infer_cohort
>>> model, meta = load_model("model.pt")                          # doctest: +SKIP
>>> infer_slide(model, meta, "tumor_001.tif", "heatmaps/")         # doctest: +SKIP
>>> infer_cohort("model.pt", "cohort.csv", "heatmaps/", device="cuda")  # doctest: +SKIP

Per slide: ``<slide_id>.heatmap.npy`` (float32, NaN outside tissue), ``.heatmap.json``
(the grid; read both with :func:`exaslide.heatmaps.read_heatmap`),
``.overlay.png`` and ``.heatmap.tif`` (pyramidal, opens in OpenSlide and QuPath). Under
``torchrun`` each rank takes its share of the slides. See ``docs/inference.md``.
"""

import importlib

_EXPORTS = {
    "InferOptions": "cohort", "SlideOutcome": "cohort", "default_workers": "cohort",
    "heatmap_fingerprint": "cohort", "infer_cohort": "cohort",
    "CellGrid": "grid", "plan_grid": "grid",
    "output_paths": "outputs",
    "infer_slide": "slide", "model_inputs": "slide", "slide_stem": "slide",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Lazy exports: ``import exaslide.infer`` (and the CLI's options) must not import
    torch; the names load their module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'exaslide.infer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"exaslide.infer.{_EXPORTS[name]}"), name)
