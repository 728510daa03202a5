"""Whole-slide heatmaps: a trained model applied to every tissue cell of a slide.

>>> from exaslide.models import load_model
>>> from exaslide.infer import infer_slide, infer_cohort
>>> model, meta = load_model("model.pt")                          # doctest: +SKIP
>>> infer_slide(model, meta, "tumor_001.tif", "heatmaps/")         # doctest: +SKIP
>>> infer_cohort("model.pt", "cohort.csv", "heatmaps/", device="cuda")  # doctest: +SKIP

Per slide: ``<slide_id>.heatmap.npy`` (float32, NaN outside tissue), ``.heatmap.json``
(the grid; read both with :func:`exaslide.evaluate.heatmap.read_heatmap`),
``.overlay.png`` and ``.heatmap.tif`` (pyramidal, opens in OpenSlide and QuPath). Under
``torchrun`` each rank takes its share of the slides. See ``docs/inference.md``.
"""

from exaslide.infer.cohort import (
    SlideOutcome,
    default_workers,
    heatmap_fingerprint,
    infer_cohort,
)
from exaslide.infer.grid import CellGrid, plan_grid
from exaslide.infer.outputs import output_paths
from exaslide.infer.slide import infer_slide, model_inputs, slide_stem

__all__ = [
    "CellGrid",
    "SlideOutcome",
    "default_workers",
    "heatmap_fingerprint",
    "infer_cohort",
    "infer_slide",
    "model_inputs",
    "output_paths",
    "plan_grid",
    "slide_stem",
]
