"""Mask jobs: one slide to files, and a cohort with per-slide status and resume."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exaslide.jobs.status import input_fingerprint
from exaslide.masks.label import annotation_area_um2, make_label_mask
from exaslide.masks.outputs import write_mask_outputs
from exaslide.masks.tissue import TissueParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskOptions:
    """Everything that decides a mask's content (saved in each summary for resume checks)."""

    level: int | None = None
    mpp: float | None = None
    backend: str | None = None
    label_map: dict[str, str] | None = None
    tissue: TissueParams = field(default_factory=TissueParams)
    pyramid: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored under ``"options"`` in the summary."""
        return {"level": self.level, "mpp": self.mpp, "backend": self.backend,
                "label_map": self.label_map, "tissue": self.tissue.to_dict(),
                "pyramid": self.pyramid}


def mask_slide(slide_path: str | Path, annotation_path: str | Path | None, out_dir: str | Path,
               stem: str, options: MaskOptions, output=None) -> dict[str, Any]:
    """Compute a slide's label mask and write all outputs; return the summary dict.

    ``output(name)`` yields where to write each file (the job engine's
    :meth:`~exaslide.jobs.SlideContext.output`); default: atomic writes into ``out_dir``.
    """
    from exaslide import __version__
    from exaslide.annotations import read_annotations
    from exaslide.slides import open_slide

    started = time.perf_counter()
    annotations = None
    if annotation_path is not None:
        annotations = read_annotations(annotation_path, label_map=options.label_map)
    with open_slide(slide_path, backend=options.backend) as slide:
        mask = make_label_mask(slide, annotations, level=options.level, mpp=options.mpp,
                               tissue=options.tissue)
        summary: dict[str, Any] = {
            "slide": str(slide_path),
            "annotations": str(annotation_path) if annotation_path else None,
            "exaslide_version": __version__,
            "options": options.to_dict(),
            "inputs": input_fingerprint(slide_path, annotation_path),
            "slide_info": slide.info(),
            "mask": {"width": int(mask.labels.shape[1]), "height": int(mask.labels.shape[0]),
                     "level": mask.level, "downsample": mask.downsample,
                     "mpp": list(mask.mpp) if mask.mpp else None,
                     "values": {"0": "background", "1": "normal", "2": "tumour"}},
            "pixel_counts": mask.counts(),
            "areas_um2": mask.areas_um2(),
            "annotation_tumour_area_um2": annotation_area_um2(annotations, slide.mpp,
                                                              slide.dimensions),
            "annotation_labels": annotations.labels() if annotations is not None else {},
            "repairs": [vars(r) for r in annotations.repairs] if annotations is not None else [],
            "unused_labels": mask.unused_labels,
            "annotations_outside_slide": mask.outside,
            "annotations_crossing_border": mask.partly_outside,
        }
    summary["seconds"] = round(time.perf_counter() - started, 3)
    write_mask_outputs(mask, out_dir, stem, summary, pyramid=options.pyramid, output=output)
    return summary


def process(entry, options: MaskOptions, ctx) -> dict[str, Any]:
    """The ``mask`` stage: one manifest entry's mask files (see :func:`mask_slide`)."""
    summary = mask_slide(entry.path, entry.annotation, ctx.out, entry.slide_id, options,
                         output=ctx.output)
    return {"pixel_counts": summary["pixel_counts"], "areas_um2": summary["areas_um2"],
            "repairs": len(summary["repairs"])}


def mask_stage(options: MaskOptions):
    """The ``mask`` :class:`~exaslide.jobs.Stage` with these options."""
    from exaslide.jobs import Stage

    return Stage("mask", options, process=process)


def mask_cohort(entries, out_dir: str | Path, options: MaskOptions, *, overwrite: bool = False,
                workers: int | None = None, scheduler: str | None = "inline",
                on_event: Callable[[str, Any], None] | None = None):
    """Run :func:`mask_slide` on every manifest entry with the job engine
    (:func:`exaslide.jobs.run_stage`): finished slides are skipped, one failure does not
    stop the rest, ``status/<slide_id>.json`` and ``mask_status.json`` record each
    outcome; ``scheduler=None`` runs slides on a Dask ``LocalCluster`` of ``workers``.

    Returns:
        One :class:`~exaslide.jobs.Outcome` per entry.
    """
    from exaslide.jobs import run_stage

    return run_stage(mask_stage(options), entries, out_dir, workers=workers,
                     scheduler=scheduler, overwrite=overwrite, on_event=on_event)
