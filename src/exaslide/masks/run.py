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
    write_mask_outputs(mask, out_dir, stem, summary, pyramid=options.pyramid)
    return summary


@dataclass
class SlideResult:
    """Outcome of one slide in a cohort job."""

    slide_id: str
    status: str  #: "done", "skipped" (already done with the same options) or "failed"
    error: str = ""


def input_fingerprint(slide_path, annotation_path) -> dict[str, Any]:
    """Path, size and modification time of a slide and its annotation file, so that a
    re-run notices a changed or replaced input. A URL is fingerprinted by the size, ETag
    and last-modified time its store reports (no data is read)."""
    from exaslide.storage import is_remote, remote_fingerprint

    def one(path):
        if path is None:
            return None
        if is_remote(path):
            return remote_fingerprint(str(path))
        stat = Path(path).stat()
        return {"path": str(Path(path).resolve()), "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns}

    return {"slide": one(slide_path), "annotation": one(annotation_path)}


def is_done(out_dir: Path, stem: str, options: MaskOptions, slide_path,
            annotation_path) -> bool:
    """True when ``stem``'s summary exists for the same options and unchanged inputs, and
    every output it lists is still there."""
    try:
        previous = json.loads((out_dir / f"{stem}_summary.json").read_text())
        inputs = input_fingerprint(slide_path, annotation_path)
    except (OSError, ValueError):
        return False
    return (previous.get("options") == json.loads(json.dumps(options.to_dict()))
            and previous.get("inputs") == inputs
            and all((out_dir / name).exists()
                    for name in previous.get("outputs", {}).values()))


def mask_cohort(entries, out_dir: str | Path, options: MaskOptions, *, overwrite: bool = False,
                on_result: Callable[[SlideResult], None] | None = None) -> list[SlideResult]:
    """Run :func:`mask_slide` on every manifest entry; one failure does not stop the rest.

    A slide is skipped when :func:`is_done` (the summary is written last and atomically, so
    it exists only for a finished slide). ``mask_status.json`` in ``out_dir`` records each
    slide's outcome and is rewritten after every slide.
    """
    from exaslide.atomic import write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".mask_status.*.tmp.json"):  # left by a killed run
        stale.unlink(missing_ok=True)
    results = []
    for entry in entries:
        if not overwrite and is_done(out, entry.slide_id, options, entry.path, entry.annotation):
            result = SlideResult(entry.slide_id, "skipped")
        else:
            try:
                mask_slide(entry.path, entry.annotation, out, entry.slide_id, options)
                result = SlideResult(entry.slide_id, "done")
            except Exception as exc:  # one slide's failure must not stop the cohort
                logger.debug("%s failed", entry.slide_id, exc_info=True)
                message = str(exc) if isinstance(exc, ExaslideError | OSError) else \
                    f"{type(exc).__name__}: {exc}"
                result = SlideResult(entry.slide_id, "failed", message)
        results.append(result)
        write_text(out / "mask_status.json",
                   json.dumps([vars(r) for r in results], indent=2) + "\n")
        if on_result is not None:
            on_result(result)
    return results
