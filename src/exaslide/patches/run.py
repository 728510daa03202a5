"""``exaslide extract`` as a stage of the job engine: sample a slide (one task), extract
its chunks of region blocks (one task each, in parallel), then index it (in the driver).

Everything per-slide that is not extraction (resume, status files, atomic outputs, the
output lock, clean-up, failures, executors) is :mod:`exaslide.jobs`'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.jobs.executors import WORKER_MALLOC_TRIM_THRESHOLD, local_cluster
from exaslide.patches.index import make_table
from exaslide.patches.job import (
    ExtractOptions,
    SlidePlan,
    extract_chunk,
    manifest_fields,
    patch_keys,
    plan_slide,
)

logger = logging.getLogger(__name__)

__all__ = ["WORKER_MALLOC_TRIM_THRESHOLD", "SlideOutcome", "extract_stage", "local_cluster",
           "run_extraction"]


@dataclass
class SlideOutcome:
    """What happened to one slide."""

    slide_id: str
    status: str  #: "done", "skipped" (finished earlier) or "failed"
    patches: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    blank: int = 0
    error: str = ""
    warnings: list[str] = field(default_factory=list)


def _plan(entry, options: ExtractOptions) -> tuple[SlidePlan, list]:
    plan = plan_slide(entry, options)
    tasks = [(i, {k: v[rows] for k, v in plan.columns.items()}, plan.level)
             for i, rows in enumerate(plan.chunks)]
    return plan, tasks


def _run_chunk(entry, options: ExtractOptions, task, partial: str) -> dict[str, Any]:
    chunk_no, columns, level = task
    return extract_chunk(entry, columns, level, chunk_no, partial, options)


def _chunk_size(task) -> int:
    return len(task[1]["x"])


def _finish(entry, options: ExtractOptions, plan: SlidePlan, results: list, ctx) -> dict:
    """Index the slide's kept patches and adopt its chunks' shards."""
    from exaslide.patches.index import write_slide_index

    n = len(plan.columns["x"])
    keep, shard = np.ones(n, bool), np.full(n, None, dtype=object)
    for rows, result in zip(plan.chunks, results, strict=True):
        keep[rows] = result["keep"]
        shard[rows] = result["shard"]
    columns = {k: v[keep] for k, v in plan.columns.items()}
    spec = options.spec
    keys = patch_keys(entry.slide_id, columns["x"], columns["y"])
    extension = {"png": "png", "jpeg": "jpg"}.get(options.materialize)
    member = [f"{k}.{extension}" for k in keys] if extension else None
    table = make_table(dict(columns, key=keys, shard=shard[keep], member=member,
                            slide_id=entry.slide_id, level=plan.level, size=spec.size,
                            mpp=spec.mpp, footprint=plan.footprint, **manifest_fields(entry)))
    with ctx.output(f"index/{entry.slide_id}.parquet") as tmp:
        write_slide_index(table, tmp)
    shards = sorted({s for s in shard[keep] if s})
    for name in shards:
        ctx.adopt(ctx.partial / name, f"shards/{name}")
    counts = {c: int((columns["label"] == c).sum()) for c in ("tumour", "normal")}
    return {"patches": sum(counts.values()), "counts": counts,
            "blank_rejected": sum(r["blank"] for r in results),
            "requested": plan.requested, "found": plan.found, "level": plan.level,
            "footprint": plan.footprint, "chunks": len(plan.chunks), "shards": shards,
            "tile_decodes": sum(r["decodes"] for r in results),
            "manifest": manifest_fields(entry),
            "warnings": _warnings(plan, int(keep.sum()), options)}


def _warnings(plan: SlidePlan, kept: int, options: ExtractOptions) -> list[str]:
    """Why a slide gave no patches, when it gave none."""
    if kept:
        return []
    if len(plan.columns["x"]):
        return [f"0 patches: all {len(plan.columns['x'])} sampled patches were blank"]
    if options.region_labels:
        return [f"0 patches: no annotation with label(s) {', '.join(options.region_labels)} "
                "(or none inside the tissue)"]
    return ["0 patches: no patch position meets the tissue threshold (is the patch larger "
            "than the slide at this level, or the slide blank?)"]


def _legacy_outputs(status: dict) -> list[str]:
    """The index and shards a status file of the previous release names."""
    slide_id = str(status.get("slide_id", ""))
    shards = status.get("shards") if isinstance(status.get("shards"), list) else []
    return [f"index/{slide_id}.parquet", *(f"shards/{s}" for s in shards)]


def extract_stage(options: ExtractOptions):
    """The ``extract`` :class:`~exaslide.jobs.Stage` with these options."""
    from exaslide.jobs import Stage

    return Stage("extract", options, plan=_plan, run_task=_run_chunk, finish=_finish,
                 task_size=_chunk_size, legacy_outputs=_legacy_outputs,
                 extra_fingerprint=lambda entry, _: {"manifest": manifest_fields(entry)})


def run_extraction(entries, out_dir: str | Path, options: ExtractOptions, *,
                   workers: int | None = None, scheduler: str | None = None,
                   overwrite: bool = False,
                   on_event: Callable[[str, Any], None] | None = None) -> list[SlideOutcome]:
    """Extract every manifest entry into ``out_dir`` with the job engine; one slide's
    failure does not stop the others.

    Args:
        workers, scheduler: a Dask ``LocalCluster`` of ``workers`` processes (default: one
            per core), an existing scheduler's address, or ``"inline"`` (this process).
        overwrite: redo slides already finished.
        on_event: ``("total", n)`` when a slide's patch count is known, ``("progress",
            n)`` as chunks finish and ``("slide", Outcome)``.
    """
    from exaslide.jobs import run_stage

    options.validate()
    outcomes = run_stage(extract_stage(options), entries, out_dir, workers=workers,
                         scheduler=scheduler, overwrite=overwrite, on_event=on_event)
    return [SlideOutcome(o.slide_id, o.status, int(o.result.get("patches", 0)),
                         dict(o.result.get("counts", {})),
                         int(o.result.get("blank_rejected", 0)), o.error, o.warnings)
            for o in outcomes]
