"""The cohort driver of ``exaslide extract``: schedules :mod:`exaslide.patches.job` tasks."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.errors import ExaslideError
from exaslide.patches.index import make_table, write_slide_index
from exaslide.patches.job import (
    ExtractOptions,
    SlidePlan,
    clear_slide_outputs,
    extract_chunk,
    is_finished,
    manifest_fields,
    patch_keys,
    plan_slide,
    write_status,
)

logger = logging.getLogger(__name__)


@dataclass
class SlideOutcome:
    """What happened to one slide."""

    slide_id: str
    status: str  #: "done", "skipped" (finished earlier) or "failed"
    patches: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    blank: int = 0
    error: str = ""


class InlineExecutor:
    """Runs tasks immediately in this process (``scheduler="inline"``)."""

    workers = 1

    def __init__(self):
        self._done: deque[concurrent.futures.Future] = deque()

    def submit(self, fn: Callable, *args) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        self._done.append(future)
        return future

    def completed(self) -> Iterator:
        while self._done:
            yield self._done.popleft()

    def close(self) -> None:
        pass


class DaskExecutor:
    """Tasks on a Dask cluster: a new ``LocalCluster`` (one single-threaded worker process
    per core, or ``workers``) or an existing scheduler at ``address``."""

    def __init__(self, workers: int | None = None, address: str | None = None,
                 quiet: bool = True):
        from distributed import Client, as_completed

        if quiet:  # Dask logs every start-up step at INFO
            for name in list(logging.root.manager.loggerDict):
                if name.startswith("distributed"):
                    logging.getLogger(name).setLevel(logging.WARNING)
        self.cluster = None
        if address is None:
            self.cluster = local_cluster(workers or os.cpu_count() or 1, quiet)
            self.client = Client(self.cluster)
        else:
            self.client = Client(address)
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        self._pending = as_completed()

    def submit(self, fn: Callable, *args):
        future = self.client.submit(fn, *args, pure=False)
        self._pending.add(future)
        return future

    def completed(self) -> Iterator:
        yield from self._pending

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


#: glibc trim threshold for worker processes. Dask sets 64 KiB by default, which returns
#: every freed tile buffer (196 KB for a 256-px RGB tile) to the OS and page-faults it back
#: on the next decode: extraction runs ~25% slower. 128 MiB keeps the buffers in the heap.
WORKER_MALLOC_TRIM_THRESHOLD = str(128 << 20)


def local_cluster(workers: int, quiet: bool = True):
    """A ``LocalCluster`` of ``workers`` single-threaded worker processes, set up for
    extraction (see :data:`WORKER_MALLOC_TRIM_THRESHOLD`). Quiet: a failing task is
    reported once, by exaslide, not with Dask's traceback."""
    import dask
    from distributed import LocalCluster

    environ = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
    with dask.config.set({environ: WORKER_MALLOC_TRIM_THRESHOLD}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                            dashboard_address=":0",
                            silence_logs=logging.CRITICAL if quiet else logging.WARNING)


def make_executor(workers: int | None = None, scheduler: str | None = None):
    """``InlineExecutor`` for ``scheduler="inline"``, else a :class:`DaskExecutor` (quiet
    unless this module logs at INFO)."""
    if scheduler == "inline":
        return InlineExecutor()
    return DaskExecutor(workers, scheduler, quiet=not logger.isEnabledFor(logging.INFO))


@dataclass
class _SlideState:
    entry: Any
    plan: SlidePlan | None = None
    results: dict[int, dict] = field(default_factory=dict)
    running: int = 0  #: chunk tasks submitted and not finished
    error: BaseException | None = None
    started: float = field(default_factory=time.perf_counter)


def run_extraction(entries, out_dir: str | Path, options: ExtractOptions, *,
                   workers: int | None = None, scheduler: str | None = None,
                   overwrite: bool = False,
                   on_event: Callable[[str, Any], None] | None = None) -> list[SlideOutcome]:
    """Extract every manifest entry into ``out_dir``; one slide's failure does not stop the
    others. ``on_event(kind, value)`` receives ``("patches", n)`` when a slide's plan is
    known, ``("progress", n)`` as chunks finish and ``("slide", SlideOutcome)``.

    At most two slides per worker are in flight at a time, so the driver's memory does not
    grow with the cohort.
    """
    options.validate()
    out = Path(out_dir)
    for sub in ("index", "status") + (("shards",) if options.materialize else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    emit = on_event or (lambda kind, value: None)
    outcomes: dict[str, SlideOutcome] = {}
    todo = []
    for entry in entries:
        if not overwrite and is_finished(out, entry, options):
            outcomes[entry.slide_id] = SlideOutcome(entry.slide_id, "skipped")
            emit("slide", outcomes[entry.slide_id])
        else:
            todo.append(entry)
    if todo:
        clear_slide_outputs(out, [e.slide_id for e in todo])
        executor = make_executor(workers, scheduler)
        try:
            _drive(executor, todo, out, options, outcomes, emit)
        finally:
            executor.close()
    return [outcomes[e.slide_id] for e in entries]


def _drive(executor, todo, out: Path, options: ExtractOptions, outcomes, emit) -> None:
    waiting = deque(todo)
    window = 2 * executor.workers
    states: dict[str, _SlideState] = {}
    tags: dict = {}

    def start_next() -> None:
        while waiting and len(states) < window:
            entry = waiting.popleft()
            states[entry.slide_id] = _SlideState(entry)
            tags[executor.submit(plan_slide, entry, options)] = (entry.slide_id, None)

    start_next()
    for future in executor.completed():
        slide_id, chunk = tags.pop(future)
        state = states[slide_id]
        if chunk is not None:
            state.running -= 1
        error = future.exception()
        if error is not None:
            state.error = state.error or error
        elif chunk is None:
            _start_chunks(executor, state, future.result(), out, options, tags, emit)
        else:
            state.results[chunk] = future.result()
            emit("progress", len(state.plan.chunks[chunk]))
        if state.running:
            continue  # wait for the slide's other chunks, even when one has failed
        if state.error is not None:
            _fail(state, out, options, outcomes, emit)
        else:
            _finish(state, out, options, outcomes, emit)
        del states[slide_id]
        start_next()


def _start_chunks(executor, state: _SlideState, plan: SlidePlan, out: Path,
                  options: ExtractOptions, tags: dict, emit) -> None:
    state.plan = plan
    emit("patches", len(plan.columns["x"]))
    for i, rows in enumerate(plan.chunks):
        columns = {k: v[rows] for k, v in plan.columns.items()}
        future = executor.submit(extract_chunk, state.entry, columns, plan.level, i,
                                 str(out / "shards"), options)
        state.running += 1
        tags[future] = (plan.slide_id, i)


def _finish(state: _SlideState, out: Path, options: ExtractOptions, outcomes, emit) -> None:
    plan, entry = state.plan, state.entry
    n = len(plan.columns["x"])
    keep, shard = np.ones(n, bool), np.full(n, None, dtype=object)
    for i, rows in enumerate(plan.chunks):
        keep[rows] = state.results[i]["keep"]
        shard[rows] = state.results[i]["shard"]
    columns = {k: v[keep] for k, v in plan.columns.items()}
    spec = options.spec
    keys = patch_keys(entry.slide_id, columns["x"], columns["y"])
    extension = {"png": "png", "jpeg": "jpg"}.get(options.materialize)
    member = [f"{k}.{extension}" for k in keys] if extension else None
    table = make_table(dict(columns, key=keys, shard=shard[keep], member=member,
                            slide_id=entry.slide_id,
                            level=plan.level, size=spec.size, mpp=spec.mpp,
                            footprint=plan.footprint, **manifest_fields(entry)))
    write_slide_index(table, out / "index" / f"{entry.slide_id}.parquet")
    counts = {c: int((columns["label"] == c).sum()) for c in ("tumour", "normal")}
    blank = sum(r["blank"] for r in state.results.values())
    shards = sorted({s for s in shard[keep] if s})
    write_status(out, entry.slide_id, _status(state, options, counts, blank, shards))
    outcome = SlideOutcome(entry.slide_id, "done", int(keep.sum()), counts, blank)
    outcomes[entry.slide_id] = outcome
    logger.info("%s: %d patches (%s), %d blank rejected, %.1f s", entry.slide_id,
                outcome.patches, counts, blank, time.perf_counter() - state.started)
    emit("slide", outcome)


def _status(state: _SlideState, options: ExtractOptions, counts, blank, shards) -> dict:
    from exaslide.masks.run import input_fingerprint

    plan = state.plan
    return {"status": "done", "slide_id": plan.slide_id, "options": options.to_dict(),
            "inputs": input_fingerprint(state.entry.path, state.entry.annotation),
            "manifest": manifest_fields(state.entry),
            "patches": sum(counts.values()), "counts": counts, "blank_rejected": blank,
            "requested": plan.requested, "found": plan.found, "level": plan.level,
            "footprint": plan.footprint, "chunks": len(plan.chunks), "shards": shards,
            "tile_decodes": sum(r["decodes"] for r in state.results.values()),
            "seconds": round(time.perf_counter() - state.started, 3)}


def _fail(state: _SlideState, out: Path, options: ExtractOptions, outcomes, emit) -> None:
    """Record a failed slide once none of its tasks is running any more, and delete
    whatever its chunks wrote."""
    entry, error = state.entry, state.error
    message = str(error) if isinstance(error, ExaslideError | OSError) else \
        f"{type(error).__name__}: {error}"
    logger.debug("%s failed: %s", entry.slide_id, message)
    clear_slide_outputs(out, entry.slide_id)
    write_status(out, entry.slide_id, {"status": "failed", "slide_id": entry.slide_id,
                                       "error": message, "options": options.to_dict()})
    outcomes[entry.slide_id] = SlideOutcome(entry.slide_id, "failed", error=message)
    emit("slide", outcomes[entry.slide_id])
