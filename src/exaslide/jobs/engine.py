"""The per-slide job engine under every batch stage (``mask``, ``extract``, ``infer``,
``embed patches``, ``embed slides``).

:func:`run_stage` gives a :class:`~exaslide.jobs.stage.Stage`:

- **resume**: a slide whose status says done with the same stage, options and input
  fingerprints, and whose outputs are all there with their recorded sizes, is skipped;
- **atomic outputs**: a slide's files are written under ``OUT/.partial/<slide_id>/`` and
  moved into place only when the whole slide succeeded; its status file is written last;
- **clean-up**: before a slide is (re)done, every file its previous status lists and its
  partial folder (temporaries of a killed process or Dask worker) are deleted;
- **the output lock**: a second run into the same folder exits with the holder's pid;
- **failures**: one slide's failure is recorded (status ``failed``) and the others go on;
- **executors**: inline, a Dask ``LocalCluster`` or scheduler, and ``torchrun`` ranks
  (rank ``r`` of ``n`` takes slides ``r, r+n, ...``);
- **the summary**: ``OUT/<stage>_status.json`` (``<stage>_status.rank<r>.json`` under
  torchrun) lists every slide's :class:`Outcome`, rewritten at most once a second and at
  the end of the run (each slide's status file is written as it finishes);
- **object stores**: ``OUT`` may be an fsspec URL (``s3://``, ``az://``, ``gs://``): the
  files are staged locally, uploaded, and the status object written last; the lock is a
  lease object (see :mod:`exaslide.jobs.remote` and :mod:`exaslide.jobs.lease`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exaslide.atomic import commit
from exaslide.errors import ExaslideError
from exaslide.jobs.lock import OutputLock
from exaslide.jobs.remote import PARTIAL_DIR, PartialTarget, RemoteOutput
from exaslide.jobs.stage import JobError, RunShape, SlideContext, Stage, output_path
from exaslide.jobs.status import (
    STATUS_DIR,
    input_fingerprint,
    is_complete,
    read_status,
    status_path,
    to_jsonable,
    write_status,
)
from exaslide.naming import remove_stale_temporaries

logger = logging.getLogger(__name__)

#: Seconds between rewrites of the run's summary file (and at the end of the run): one
#: rewrite per slide would cost O(slides^2) (~70 ms for the last of 1,000 slides).
SUMMARY_INTERVAL = 1.0


@dataclass
class Outcome:
    """What happened to one slide."""

    slide_id: str
    status: str  #: "done", "skipped" (finished earlier) or "failed"
    error: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def error_message(exc: BaseException, out: Path | str | None = None) -> str:
    """One line for a slide's failure: exaslide's own message, an OS error with its file,
    a full disk with the folder, or ``Type: message`` for anything unexpected; never a
    secret (see :func:`exaslide.storage.errors.scrub`)."""
    from exaslide.storage.errors import scrub

    return scrub(_error_message(exc, out))


def _error_message(exc: BaseException, out: Path | str | None = None) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename or out or "the output folder"
        return f"{where}: no space left on device; free some space and rerun"
    if isinstance(exc, OSError) and exc.filename and not isinstance(exc, ExaslideError):
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, ExaslideError | OSError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def default_inputs(entry) -> list:
    """A manifest entry's slide and annotation."""
    return [entry.path, entry.annotation]


def expected_status(stage: Stage, entry) -> dict[str, Any]:
    """What a finished slide's status must match: stage, options and input fingerprints
    (and the stage's extra fingerprint).

    Raises:
        OSError: an input file is missing (``StorageError`` for a URL).
    """
    inputs = (stage.inputs or default_inputs)(entry)
    fingerprint = input_fingerprint(*inputs) if len(inputs) == 2 and stage.inputs is None \
        else {"files": [input_fingerprint(p, None)["slide"] for p in inputs]}
    if stage.extra_fingerprint is not None:
        fingerprint["extra"] = stage.extra_fingerprint(entry, stage.options)
    options = stage.options if stage.fingerprint is None else \
        stage.fingerprint(stage.options)
    return to_jsonable({"stage": stage.name, "options": options, "inputs": fingerprint})


def clear_slide(out: Path, slide_id: str, stage: Stage | None = None) -> None:
    """Delete what an earlier run left of a slide: the outputs its status lists (whatever
    its state) and its partial folder. A status file is plain JSON a user can edit, so a
    listed name is deleted only if the slide could have written it (see
    :func:`~exaslide.jobs.stage.output_path`): inside the folder, through no link, named
    after the slide, and not a status file. Nothing else is touched."""
    shutil.rmtree(out / PARTIAL_DIR / slide_id, ignore_errors=True)
    remove_stale_temporaries([status_path(out, slide_id)])
    previous = read_status(out, slide_id) or {}
    outputs = previous.get("outputs")
    if "stage" not in previous and stage is not None and stage.legacy_outputs is not None:
        outputs = dict.fromkeys(stage.legacy_outputs(previous) if previous else [], 0)
    for name in outputs if isinstance(outputs, dict) else ():
        try:
            path = output_path(out, slide_id, name)
            if path.is_dir():
                raise JobError(f"{path} is a folder, not a file this slide wrote")
            path.unlink(missing_ok=True)
        except (JobError, OSError) as exc:
            logger.warning("%s: not deleting %r listed in its status: %s", slide_id, name, exc)


def _commit(out: Path, slide_id: str, expected: dict, outputs: dict[str, str],
            result: dict, started: float) -> None:
    """Move a finished slide's files into place; its ``done`` status is written last."""
    base = dict(expected, slide_id=slide_id, result=result,
                outputs={name: 0 for name in outputs})
    targets = {name: output_path(out, slide_id, name) for name in outputs}
    write_status(out, slide_id, dict(base, status="committing"))
    failed = _flush(list(outputs.values()))  # at once; commit's own flush is then quick
    sizes = {}
    for name, source in outputs.items():
        targets[name].parent.mkdir(parents=True, exist_ok=True)
        output_path(out, slide_id, name)  # no link planted in the folders just made
        try:
            if source in failed:  # a failed flush is reported once: not retried
                raise failed[source]
            commit(source, targets[name])  # fsync, then rename
        except OSError as exc:  # name the output, not the temporary
            raise OSError(exc.errno, exc.strerror, str(targets[name])) from exc
        sizes[name] = targets[name].stat().st_size
    from exaslide import __version__

    write_status(out, slide_id, dict(base, status="done", outputs=sizes,
                                     seconds=round(time.perf_counter() - started, 3),
                                     exaslide_version=__version__))
    shutil.rmtree(out / PARTIAL_DIR / slide_id, ignore_errors=True)
    # atomic-write temporaries a killed process left beside these files
    remove_stale_temporaries([*(out / name for name in outputs), status_path(out, slide_id)])


def _flush(paths: list[str]) -> dict[str, OSError]:
    """Flush files to disk concurrently (a disk serves several flushes at once: a slide's
    shards are committed in a third of the time of one flush after the other); returns
    the error of each file that could not be flushed."""
    def flush(path: str) -> OSError | None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            return exc
        return None

    if len(paths) < 2:
        return {}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(8, len(paths))) as pool:
        return {p: e for p, e in zip(paths, pool.map(flush, paths), strict=True) if e}


def process_task(stage: Stage, entry, target: PartialTarget
                 ) -> tuple[dict, dict[str, str], list[str]]:
    """Run ``stage.process`` on one slide (in this process or on a Dask worker); returns
    its result, the partial files it wrote by output name (as the driver's paths) and
    the names of those it had to upload for the driver (see :class:`PartialTarget`)."""
    with target.writing(entry.slide_id) as (folder, uploaded):
        ctx = SlideContext(Path(target.root).parent, entry.slide_id, folder)
        result = stage.process(entry, stage.options, ctx) or {}
    outputs = {name: target.local_path(entry.slide_id, path, folder) if uploaded else
               str(path) for name, path in ctx.outputs.items()}
    return result, outputs, uploaded


def plan_task(stage: Stage, entry) -> tuple[Any, list]:
    """Run ``stage.plan`` on one slide (a task)."""
    return stage.plan(entry, stage.options)


def run_task(stage: Stage, entry, task, target: PartialTarget) -> tuple[Any, list[str]]:
    """Run one of a slide's sub-slide tasks (writes only into the slide's partial
    folder); returns its result and the files it uploaded for the driver."""
    with target.writing(entry.slide_id) as (folder, uploaded):
        folder.mkdir(parents=True, exist_ok=True)
        value = stage.run_task(entry, stage.options, task, str(folder))
    return value, uploaded


class LocalOutput:
    """A local output folder, as the engine uses it (:class:`RemoteOutput` is the same
    for an object store): the lock, status files, resume checks, commits."""

    remote = False

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.name = str(out)
        self.partial_root = self.out / PARTIAL_DIR

    def lock(self, rank: int | None) -> OutputLock:
        return OutputLock(self.out, rank)

    def target(self) -> PartialTarget:
        return PartialTarget(str(self.partial_root))

    def fetch(self, slide_id: str, names: list[str]) -> None:
        """Nothing to fetch: the workers share this file system."""

    def load(self) -> None:
        """Nothing to preload: status files are read one by one."""

    def status_ids(self) -> list[str]:
        return [p.stem for p in sorted((self.out / STATUS_DIR).glob("[!.]*.json"))]

    def read_status(self, slide_id: str) -> dict | None:
        return read_status(self.out, slide_id)

    def write_status(self, slide_id: str, status: dict) -> None:
        write_status(self.out, slide_id, status)

    def write_summary(self, name: str, rows: list) -> None:
        from exaslide.jsonio import write_json

        write_json(self.out / name, rows)

    def is_complete(self, status: dict | None, expected: dict) -> bool:
        return is_complete(self.out, status, expected)

    def clear(self, slide_id: str, stage: Stage | None = None) -> None:
        clear_slide(self.out, slide_id, stage)

    def commit(self, slide_id: str, expected: dict, outputs: dict[str, str], result: dict,
               started: float) -> None:
        _commit(self.out, slide_id, expected, outputs, result, started)

    def tidy(self, slide_id: str) -> None:
        """What a run killed just after this slide's status left behind."""
        shutil.rmtree(self.partial_root / slide_id, ignore_errors=True)
        remove_stale_temporaries([status_path(self.out, slide_id)])


def open_output(out_dir) -> LocalOutput | RemoteOutput:
    """The output folder ``out_dir``: a local path, or an fsspec URL of an object store.

    Raises:
        StorageError: a URL whose protocol package is missing.
        JobError: an ``http(s)://`` URL (read-only: there is no way to list or write it).
    """
    from exaslide.storage.urls import is_remote

    if is_remote(out_dir):
        if str(out_dir).split("://", 1)[0].lower() in ("http", "https"):
            raise JobError(f"{out_dir}: an http(s):// URL cannot be an output folder; give "
                           "a local folder or an object store (s3://, az://, gs://)")
        return RemoteOutput(str(out_dir))
    return LocalOutput(out_dir)


@dataclass
class _Slide:
    entry: Any
    expected: dict
    started: float = field(default_factory=time.perf_counter)
    state: Any = None
    tasks: list = field(default_factory=list)
    results: dict[int, Any] = field(default_factory=dict)
    running: int = 0
    planned: bool = False
    error: BaseException | None = None


class _Run:
    """The state of one :func:`run_stage` call on this process's share of the slides."""

    def __init__(self, stage: Stage, store: LocalOutput | RemoteOutput, summary: str,
                 emit: Callable):
        self.stage, self.store, self.summary, self.emit = stage, store, summary, emit
        self.outcomes: dict[str, Outcome] = {}
        self._written = float("-inf")  # when the summary was last written
        self._unwritten = False

    def record(self, outcome: Outcome) -> None:
        self.outcomes[outcome.slide_id] = outcome
        self._unwritten = True
        if time.monotonic() - self._written >= SUMMARY_INTERVAL:
            self.write_summary()
        self.emit("slide", outcome)

    def write_summary(self) -> None:
        """Rewrite the summary with every outcome so far (if any is new)."""
        if not self._unwritten:
            return
        try:
            self.store.write_summary(self.summary,
                                     [asdict(o) for o in self.outcomes.values()])
        except OSError as exc:  # e.g. a full disk: each slide's status says the rest
            logger.warning("cannot write %s: %s", self.summary, error_message(exc))
        self._written, self._unwritten = time.monotonic(), False

    def done(self, slide: _Slide, result: dict, outputs: dict[str, str]) -> None:
        """Commit a finished slide; a failure while committing fails the slide (and
        deletes what was moved). The outcome is recorded after the commit succeeded."""
        slide_id = slide.entry.slide_id
        try:
            if not isinstance(result, dict):
                raise JobError(f"stage {self.stage.name!r} returned {type(result).__name__}"
                               ", not a dict")
            warnings = [str(w) for w in result.get("warnings", [])]
            self.store.commit(slide_id, slide.expected, outputs, result, slide.started)
        except Exception as exc:
            self.failed(slide_id, exc, slide.expected)
            return
        for warning in warnings:
            logger.warning("%s: %s", slide_id, warning)
        self.record(Outcome(slide_id, "done", result=result, warnings=warnings,
                            seconds=round(time.perf_counter() - slide.started, 3)))

    def failed(self, slide_id: str, exc: BaseException, expected: dict | None) -> None:
        message = error_message(exc, self.store.name)
        logger.debug("%s failed: %s", slide_id, message, exc_info=exc)
        from exaslide.jobs.lease import LeaseLostError

        if isinstance(exc, LeaseLostError):
            self.record(Outcome(slide_id, "failed", error=message))
            return  # another run owns the folder now: write nothing into it
        try:  # a failed slide has no outputs: none that look finished, none half-moved
            self.store.clear(slide_id, self.stage)
        except OSError:
            logger.debug("cannot clear %s", slide_id, exc_info=True)
        try:
            self.store.write_status(slide_id, dict(expected or {"stage": self.stage.name},
                                                  slide_id=slide_id, status="failed",
                                                  error=message, outputs={}))
        except OSError:  # e.g. the disk is full: the summary still says it failed
            logger.debug("cannot write the status of %s", slide_id, exc_info=True)
        self.record(Outcome(slide_id, "failed", error=message))


def check_entries(entries: Sequence) -> list:
    """The entries as a list, refusing duplicate or unsafe slide ids.

    Raises:
        JobError: two entries share an id, or an id cannot name a file.
    """
    from exaslide.naming import is_valid_slide_id

    seen: set[str] = set()
    for entry in entries:
        if not is_valid_slide_id(entry.slide_id):
            raise JobError(f"slide id {entry.slide_id!r} cannot name an output file")
        if entry.slide_id in seen:
            raise JobError(f"two slides have the id {entry.slide_id!r}; slide ids must be "
                           "unique")
        seen.add(entry.slide_id)
    return list(entries)


def run_stage(stage: Stage, entries: Sequence, out_dir, *, workers: int | None = None,
              scheduler: str | None = "inline", overwrite: bool = False,
              rank: int | None = None, world_size: int | None = None,
              on_event: Callable[[str, Any], None] | None = None) -> list[Outcome]:
    """Run ``stage`` on every entry (objects with ``slide_id``, ``path``, ``annotation``,
    e.g. :class:`~exaslide.manifest.ManifestEntry`) into ``out_dir``.

    Args:
        workers, scheduler: ``scheduler="inline"`` runs in this process; ``None`` starts a
            Dask ``LocalCluster`` of ``workers`` processes; an address uses that scheduler.
        overwrite: redo slides already done.
        rank, world_size: this process's share of the slides (default: torchrun's).
        on_event: ``on_event(kind, value)`` with ``("total", n)`` when a slide's work is
            known (split stages), ``("progress", n)`` as tasks finish and ``("slide",
            Outcome)`` after every slide.

    Returns:
        This rank's outcomes, in entry order. A failed slide is recorded and the others
        still run.

    Raises:
        JobError: duplicate slide ids, a locked folder, an unreachable scheduler.
        ClusterLostError: the scheduler went away during the run.
    """
    from exaslide.runtime import distributed_context

    entries = check_entries(entries)
    rank, world_size = distributed_context(rank, world_size)
    entries = entries[rank::world_size]
    store = open_output(out_dir)
    suffix = "" if world_size == 1 else f".rank{rank}"
    emit = on_event or (lambda kind, value: None)
    with store.lock(None if world_size == 1 else rank):
        run = _Run(stage, store, f"{stage.name}_status{suffix}.json", emit)
        if not store.remote:
            remove_stale_temporaries([store.out / run.summary])
        try:
            todo = _resume(run, entries, overwrite)
            if todo:
                _execute(run, todo, workers, scheduler)
        finally:
            run.write_summary()
        with contextlib.suppress(OSError):  # only when empty: other ranks may use it
            store.partial_root.rmdir()
    return [run.outcomes[e.slide_id] for e in entries]


def check_stage(store: LocalOutput | RemoteOutput, stage: str) -> None:
    """Refuse a folder whose status files belong to another stage (before anything in it
    is cleared).

    Raises:
        JobError: a status file of another stage is there.
    """
    for slide_id in store.status_ids():
        found = store.read_status(slide_id)
        if found and found.get("stage") not in (None, stage):
            raise JobError(f"{store.name}: holds {found.get('stage')!r} outputs "
                           f"({slide_id}.json), not {stage!r} ones; use another --out")


def _resume(run: _Run, entries: list, overwrite: bool) -> list[_Slide]:
    """Skip finished slides; clear and return the others."""
    store = run.store
    store.load()
    check_stage(store, run.stage.name)
    todo = []
    for entry in entries:
        previous = store.read_status(entry.slide_id)
        try:
            expected = expected_status(run.stage, entry)
        except Exception as exc:  # a missing input fails this slide only
            run.failed(entry.slide_id, exc, None)
            continue
        if previous and "stage" in previous and run.stage.upgrade_status is not None:
            previous = run.stage.upgrade_status(previous)
        if not overwrite and store.is_complete(previous, expected):
            store.tidy(entry.slide_id)
            run.record(Outcome(entry.slide_id, "skipped",
                               result=previous.get("result") or {}))
            continue
        store.clear(entry.slide_id, run.stage)
        todo.append(_Slide(entry, expected))
    return todo


def _execute(run: _Run, todo: list[_Slide], workers, scheduler) -> None:
    from exaslide.jobs.executors import make_executor

    if scheduler == "inline" and not run.stage.split:
        for slide in todo:  # in this process, with progress from inside the slide
            _process_inline(run, slide)
        return
    planned: dict = {}
    if run.stage.split and scheduler is None:
        executor = _start_while_planning(run, todo, workers, planned)
    else:
        executor = make_executor(workers, scheduler)
    if run.stage.warm and hasattr(executor, "warm"):
        executor.warm(run.stage.warm)
    try:
        _drive(run, executor, todo, planned)
    finally:
        executor.close()


def _start_while_planning(run: _Run, todo: list[_Slide], workers, planned: dict):
    """Start a LocalCluster in a thread and plan slides here meanwhile (a single slide's
    plan then costs no time: the cluster takes longer to start); their ``(error,
    result)`` go into ``planned``."""
    from concurrent.futures import ThreadPoolExecutor

    from exaslide.jobs.executors import make_executor

    pool = ThreadPoolExecutor(1, thread_name_prefix="exaslide-cluster")
    starting = pool.submit(make_executor, workers, None)
    try:
        for slide in todo:
            if starting.done():
                break
            try:
                planned[slide.entry.slide_id] = (None, plan_task(run.stage, slide.entry))
            except Exception as exc:  # reported with the slide, as from a worker
                planned[slide.entry.slide_id] = (exc, None)
        return starting.result()
    except BaseException:  # e.g. Ctrl-C: the cluster must not outlive the run
        with contextlib.suppress(Exception):
            starting.result().close()
        raise
    finally:
        pool.shutdown(wait=False)


def _process_inline(run: _Run, slide: _Slide) -> None:
    entry = slide.entry
    ctx = SlideContext(run.store.out, entry.slide_id,
                       run.store.partial_root / entry.slide_id,
                       on_progress=lambda n: run.emit("progress", n))
    try:
        result = run.stage.process(entry, run.stage.options, ctx) or {}
        run.done(slide, result, {k: str(v) for k, v in ctx.outputs.items()})
    except Exception as exc:  # one slide's failure must not stop the others
        run.failed(entry.slide_id, exc, slide.expected)


def _drive(run: _Run, executor, todo: list[_Slide], planned: dict | None = None) -> None:
    """Keep at most two slides per worker in flight, so the driver's memory does not grow
    with the cohort; collect their tasks as they finish. ``planned`` holds the ``(error,
    result)`` of slides already planned in this process."""
    planned = dict(planned or {})
    waiting = deque(todo)
    window = 2 * executor.workers
    slides: dict[str, _Slide] = {}
    tags: dict = {}
    ready: deque = deque()  # (slide_id, task_no, error, value) known without a future
    stage = run.stage

    def start_next() -> None:
        while waiting and len(slides) < window:
            slide = waiting.popleft()
            slides[slide.entry.slide_id] = slide
            if slide.entry.slide_id in planned:
                ready.append((slide.entry.slide_id, None,
                              *planned.pop(slide.entry.slide_id)))
                continue
            fn, args = (plan_task, (stage, slide.entry)) if stage.split else \
                (process_task, (stage, slide.entry, run.store.target()))
            tags[executor.submit(fn, *args)] = (slide.entry.slide_id, None)

    def events():
        start_next()
        while True:
            while ready:
                yield ready.popleft()
            if not tags:
                return
            for future in executor.completed():
                slide_id, task_no = tags.pop(future)
                yield (slide_id, task_no, *_collect(executor, future))
                while ready:
                    yield ready.popleft()

    for slide_id, task_no, error, value in events():
        slide = slides[slide_id]
        if task_no is not None:
            slide.running -= 1
        if error is not None:
            slide.error = slide.error or error
        elif not stage.split:
            _settle(run, slide, *value)
        elif task_no is None:
            left = len(waiting) + sum(not s.planned for s in slides.values())
            _submit_tasks(run, executor, slide, value, tags, left)
        else:
            value, uploaded = value
            try:
                run.store.fetch(slide_id, uploaded)
            except Exception as exc:
                slide.error = slide.error or exc
            slide.results[task_no] = value
            run.emit("progress", stage.task_size(slide.tasks[task_no])
                     if stage.task_size else 1)
        if slide.running:
            continue  # wait for the slide's other tasks, even when one has failed
        if slide.error is not None:
            run.failed(slide_id, slide.error, slide.expected)
        elif stage.split:
            _finish_split(run, slide)
        del slides[slide_id]
        start_next()


def _collect(executor, future) -> tuple[BaseException | None, Any]:
    """``(error, result)`` of a finished future; raises ``ClusterLostError`` when the
    cluster is gone (a cancelled future, a closed connection)."""
    try:
        return None, future.result()
    except BaseException as exc:  # a task's own failure, or the cluster's
        lost = executor.lost(exc) if hasattr(executor, "lost") else None
        if lost is not None:
            raise lost from exc
        if not isinstance(exc, Exception):
            raise
        return exc, None


def _settle(run: _Run, slide: _Slide, result: dict, outputs: dict[str, str],
            uploaded: list[str]) -> None:
    try:
        run.store.fetch(slide.entry.slide_id, uploaded)
        run.done(slide, result, outputs)
    except Exception as exc:
        run.failed(slide.entry.slide_id, exc, slide.expected)


def _submit_tasks(run: _Run, executor, slide: _Slide, planned, tags: dict,
                  slides_left: int = 1) -> None:
    slide.state, slide.tasks = planned
    slide.planned = True
    stage = run.stage
    if stage.cut is not None:
        shape = RunShape(max(1, int(executor.workers)), max(1, slides_left))
        slide.tasks = stage.cut(slide.state, stage.options, shape)
    if slide.tasks:  # a slide without tasks is finished at once (counted as a slide)
        run.emit("total", sum(stage.task_size(t) for t in slide.tasks) if stage.task_size
                 else len(slide.tasks))
    target = run.store.target()
    for i, task in enumerate(slide.tasks):
        tags[executor.submit(run_task, stage, slide.entry, task, target)] = \
            (slide.entry.slide_id, i)
        slide.running += 1


def _finish_split(run: _Run, slide: _Slide) -> None:
    entry = slide.entry
    ctx = SlideContext(run.store.out, entry.slide_id,
                       run.store.partial_root / entry.slide_id)
    try:
        results = [slide.results[i] for i in range(len(slide.tasks))]
        result = run.stage.finish(entry, run.stage.options, slide.state, results, ctx) or {}
        run.done(slide, result, {k: str(v) for k, v in ctx.outputs.items()})
    except Exception as exc:
        run.failed(entry.slide_id, exc, slide.expected)
