"""Mask jobs: one slide to files, and a cohort with per-slide status and resume."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exaslide.errors import ExaslideError
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
               stem: str, options: MaskOptions) -> dict[str, Any]:
    """Compute a slide's label mask and write all outputs; return the summary dict."""
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
            "slide_info": slide.info(),
            "mask": {"width": int(mask.labels.shape[1]), "height": int(mask.labels.shape[0]),
                     "level": mask.level, "downsample": mask.downsample,
                     "mpp": list(mask.mpp) if mask.mpp else None,
                     "values": {"0": "background", "1": "normal", "2": "tumour"}},
            "pixel_counts": mask.counts(),
            "areas_um2": mask.areas_um2(),
            "annotation_tumour_area_um2": annotation_area_um2(annotations, slide.mpp),
            "annotation_labels": annotations.labels() if annotations is not None else {},
            "repairs": [vars(r) for r in annotations.repairs] if annotations is not None else [],
            "unused_labels": mask.unused_labels,
        }
    summary["seconds"] = round(time.perf_counter() - started, 3)
    write_mask_outputs(mask, out_dir, stem, summary, pyramid=options.pyramid)
    return summary


@dataclass
class SlideResult:
    """Outcome of one slide in a cohort job."""

    slide_id: str
    status: str  #: "done", "skipped" (already done with the same options) or "failed"
    error: str = ""


def _already_done(summary_path: Path, options: MaskOptions) -> bool:
    try:
        previous = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return False
    return previous.get("options") == json.loads(json.dumps(options.to_dict()))


def mask_cohort(entries, out_dir: str | Path, options: MaskOptions, *, overwrite: bool = False,
                on_result: Callable[[SlideResult], None] | None = None) -> list[SlideResult]:
    """Run :func:`mask_slide` on every manifest entry; one failure does not stop the rest.

    A slide whose ``<slide_id>_summary.json`` exists with the same options is skipped (the
    summary is written last and atomically, so it exists only for a finished slide). A
    ``mask_status.json`` in ``out_dir`` records each slide's outcome.
    """
    from exaslide.atomic import write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for entry in entries:
        summary_path = out / f"{entry.slide_id}_summary.json"
        if not overwrite and _already_done(summary_path, options):
            result = SlideResult(entry.slide_id, "skipped")
        else:
            try:
                mask_slide(entry.path, entry.annotation, out, entry.slide_id, options)
                result = SlideResult(entry.slide_id, "done")
            except (ExaslideError, OSError, ValueError) as exc:
                logger.error("%s: %s", entry.slide_id, exc)
                result = SlideResult(entry.slide_id, "failed", str(exc))
        results.append(result)
        if on_result is not None:
            on_result(result)
    write_text(out / "mask_status.json",
               json.dumps([vars(r) for r in results], indent=2) + "\n")
    return results
