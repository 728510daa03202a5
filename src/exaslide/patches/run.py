"""``exaslide extract`` as a stage of the job engine: sample a slide (one task), cut its
patches into chunks sized for the workers (in the driver), extract the chunks (one task
each, in parallel), then index the slide and join its shards (in the driver).

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
    chunk_bounds,
    extract_chunk,
    manifest_fields,
    patch_keys,
    plan_slide,
)
from exaslide.patches.shards import EXTENSIONS, group_parts, join_parts, shard_name

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
    return plan_slide(entry, options), []  # cut into tasks by _cut, in the driver


def _cut(plan: SlidePlan, options: ExtractOptions, shape) -> list:
    """The slide's chunks for ``shape`` (see :func:`chunk_bounds`): ``(start, total,
    columns, level)`` each; none for an index-only extraction (nothing to read)."""
    n = len(plan.columns["x"])
    if options.materialize is None:
        return []
    bounds = chunk_bounds(n, options.shard_size, shape.workers, shape.slides_left,
                          options.chunk_patches)
    return [(a, n, {k: v[a:b] for k, v in plan.columns.items()}, plan.level)
            for a, b in bounds]


def _run_chunk(entry, options: ExtractOptions, task, partial: str) -> dict[str, Any]:
    start, total, columns, level = task
    return extract_chunk(entry, columns, level, start, total, partial, options)


def _chunk_size(task) -> int:
    return len(task[2]["x"])


def _shards(entry, options: ExtractOptions, keep: np.ndarray, results: list, ctx) -> list:
    """Each plan row's shard name (None when not kept or not materialised); adopts the
    shards the chunks wrote and joins those written in parts."""
    n = len(keep)
    shard = np.full(n, None, dtype=object)
    if options.materialize is None or not keep.any():
        return shard
    numbers = np.arange(n) // options.shard_size
    names = {k: shard_name(entry.slide_id, k) for k in np.unique(numbers[keep]).tolist()}
    shard[keep] = [names[k] for k in numbers[keep].tolist()]
    written = sorted(f for r in results for f in r["files"])
    parts = group_parts(written)
    found = set(parts) | {f for f in written if not f.endswith(".part")}
    if found != set(names.values()):  # checked before any part is joined
        raise RuntimeError(f"{entry.slide_id}: the chunks wrote shards {sorted(found)}, "
                           f"expected {sorted(names.values())}")
    for name, pieces in parts.items():
        join_parts(ctx.partial, name, pieces)  # in row order: the names sort by row
    for name in sorted(found):
        ctx.adopt(ctx.partial / name, f"shards/{name}")
    return shard


def _finish(entry, options: ExtractOptions, plan: SlidePlan, results: list, ctx) -> dict:
    """Index the slide's kept patches and adopt (or join) its chunks' shards."""
    from exaslide.patches.index import write_slide_index

    n = len(plan.columns["x"])
    results = sorted(results, key=lambda r: r["start"])
    keep = np.concatenate([r["keep"] for r in results]) if results else np.ones(n, bool)
    if len(keep) != n:
        raise RuntimeError(f"{entry.slide_id}: the chunks cover {len(keep)} of {n} rows")
    shard = _shards(entry, options, keep, results, ctx)
    columns = {k: v[keep] for k, v in plan.columns.items()}
    spec = options.spec
    keys = patch_keys(entry.slide_id, columns["x"], columns["y"])
    extension = EXTENSIONS.get(options.materialize)
    member = [f"{k}.{extension}" for k in keys] if extension else None
    table = make_table(dict(columns, key=keys, shard=shard[keep], member=member,
                            slide_id=entry.slide_id, level=plan.level, size=spec.size,
                            mpp=spec.mpp, footprint=plan.footprint, **manifest_fields(entry)))
    with ctx.output(f"index/{entry.slide_id}.parquet") as tmp:
        write_slide_index(table, tmp)
    shards = sorted({s for s in shard[keep] if s})
    counts = {c: int((columns["label"] == c).sum()) for c in ("tumour", "normal")}
    return {"patches": sum(counts.values()), "counts": counts,
            "blank_rejected": sum(r["blank"] for r in results),
            "requested": plan.requested, "found": plan.found, "level": plan.level,
            "footprint": plan.footprint, "chunks": len(results), "shards": shards,
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


#: What extraction tasks import (see ``Stage.warm``).
WARM_IMPORTS = ("exaslide.patches.sampling", "exaslide.patches.reader",
                "exaslide.patches.shards", "exaslide.annotations", "exaslide.slides",
                "cv2", "imagecodecs", "tifffile", "openslide", "shapely")


def _upgrade_status(status: dict) -> dict:
    """A status of the release that saved ``chunk_patches`` among the options: an
    index-only extraction did not depend on it (same index), so it is dropped and the
    slide is skipped; shards were then cut per chunk, so a materialised slide keeps it
    and is redone."""
    options = status.get("options")
    if isinstance(options, dict) and "chunk_patches" in options and \
            options.get("materialize") is None:
        options = {k: v for k, v in options.items() if k != "chunk_patches"}
        return dict(status, options=options)
    return status


def _manifest_fingerprint(entry, _options) -> dict:
    return {"manifest": manifest_fields(entry)}


def extract_stage(options: ExtractOptions):
    """The ``extract`` :class:`~exaslide.jobs.Stage` with these options."""
    from exaslide.jobs import Stage

    return Stage("extract", options, plan=_plan, run_task=_run_chunk, finish=_finish,
                 cut=_cut, task_size=_chunk_size, legacy_outputs=_legacy_outputs,
                 extra_fingerprint=_manifest_fingerprint,
                 fingerprint=ExtractOptions.fingerprint, upgrade_status=_upgrade_status,
                 warm=WARM_IMPORTS)


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
        on_event: ``("total", n)`` when a slide's patch count is known and ``("progress",
            n)`` as chunks finish (when materialising), ``("slide", Outcome)``.
    """
    from exaslide.jobs import run_stage

    options.validate()
    outcomes = run_stage(extract_stage(options), entries, out_dir, workers=workers,
                         scheduler=scheduler, overwrite=overwrite, on_event=on_event)
    return [SlideOutcome(o.slide_id, o.status, int(o.result.get("patches", 0)),
                         dict(o.result.get("counts", {})),
                         int(o.result.get("blank_rejected", 0)), o.error, o.warnings)
            for o in outcomes]
