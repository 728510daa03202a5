"""What a stage is: an options dataclass and a function ``process(entry, options, ctx)``.

A *stage* is one per-slide batch step (masks, extraction, heatmaps, embeddings...). It
declares only what is its own: how one slide is processed and which options decide the
result. Everything else (fingerprints, status files, atomic outputs, the output lock,
clean-up, failure handling, executors, the summary) is the engine's, in
:mod:`exaslide.jobs.engine`.

A stage that splits one slide into sub-slide tasks (extraction: one task per chunk of
region blocks) gives ``plan``, ``run_task`` and ``finish`` instead of ``process``: the
engine runs ``plan`` as one task, every task it returns in parallel, then ``finish``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from exaslide.errors import ExaslideError


class JobError(ExaslideError):
    """A batch job cannot run: its output folder is locked or belongs to another stage, an
    output name escapes the folder, the cluster is unreachable."""


class ClusterLostError(JobError):
    """The Dask scheduler went away during a run (exit code 1: a rerun resumes)."""

    exit_code = 1


@dataclass(frozen=True)
class Stage:
    """One per-slide batch step.

    Attributes:
        name: the stage's name, recorded in every status file (``"mask"``, ``"extract"``).
        options: a dataclass instance; ``dataclasses.asdict`` of it is stored in each
            status file and a slide is redone when it changes.
        process: ``process(entry, options, ctx) -> dict``: compute one slide, write its
            files through ``ctx.output(name)`` and return a JSON-able result.
        inputs: ``inputs(entry) -> list`` of the slide's input files or URLs (default:
            the entry's ``path`` and ``annotation``); their size and modification time
            (ETag for URLs) are fingerprinted, so a changed input is redone.
        extra_fingerprint: ``extra_fingerprint(entry, options) -> dict``: anything else
            that decides the output (a model file, manifest fields).
        plan, run_task, finish: sub-slide work instead of ``process``. ``plan(entry,
            options) -> (state, tasks)``; ``run_task(entry, options, task, partial_dir)
            -> result`` writes into ``partial_dir`` only; ``finish(entry, options, state,
            results, ctx) -> dict`` runs in the driver and adopts the tasks' files.
        cut: ``cut(state, options, shape) -> tasks``, called in the driver when a slide's
            plan is back: its tasks for ``shape`` (a :class:`RunShape`: the workers and
            the slides not yet cut), replacing those ``plan`` returned. The outputs must
            not depend on the cut, so that runs on any number of workers agree.
        task_size: ``task_size(task) -> int``, the progress units of one task.
        legacy_outputs: ``legacy_outputs(status) -> list`` of output names a status file
            of the previous release (which listed none) implies, so that redoing such a
            slide deletes them.
        fingerprint: ``fingerprint(options) -> dict``, the part of the options recorded
            in each status file and compared on a rerun (default: all of them); leave out
            settings that do not change the outputs.
        upgrade_status: ``upgrade_status(status) -> dict``, a status file of an earlier
            release in today's form (before it is compared), e.g. without an option that
            no longer decides the outputs.
        warm: modules the tasks import, imported on every Dask worker as soon as the run
            starts (in parallel, rather than by each worker's first task).
    """

    name: str
    options: Any
    process: Callable[..., dict] | None = None
    inputs: Callable[[Any], list] | None = None
    extra_fingerprint: Callable[[Any, Any], dict] | None = None
    plan: Callable[..., tuple[Any, list]] | None = None
    run_task: Callable[..., Any] | None = None
    finish: Callable[..., dict] | None = None
    cut: Callable[..., list] | None = None
    task_size: Callable[[Any], int] | None = None
    legacy_outputs: Callable[[dict], list[str]] | None = None
    fingerprint: Callable[[Any], Any] | None = None
    upgrade_status: Callable[[dict], dict] | None = None
    warm: tuple[str, ...] = ()

    def __post_init__(self):
        split = (self.plan, self.run_task, self.finish)
        if (self.process is None) == all(f is None for f in split) or \
                (self.process is None and any(f is None for f in split)):
            raise ValueError(f"stage {self.name!r}: give process, or plan + run_task + "
                             "finish")

    @property
    def split(self) -> bool:
        """True when slides are split into sub-slide tasks."""
        return self.process is None


@dataclass(frozen=True)
class RunShape:
    """What a split stage's ``cut`` sizes a slide's tasks for."""

    workers: int  #: worker processes (1 inline)
    slides_left: int  #: slides of this run not yet cut into tasks, this one included


@dataclass(frozen=True)
class SlideEntry:
    """A slide to process when there is no manifest entry (the engine needs only these
    three fields; :class:`~exaslide.manifest.ManifestEntry` has them too)."""

    slide_id: str
    path: Any
    annotation: Any = None


def safe_relative(name: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside the output folder.

    Raises:
        JobError: absolute, empty, with ``..``, a hidden part or a control character.
    """
    path = PurePosixPath(str(name).replace("\\", "/"))
    bad = (not path.parts or path.is_absolute() or
           any(p in ("", ".", "..") or p.startswith(".") for p in path.parts) or
           any(ord(c) < 32 for c in str(name)))
    if bad:
        raise JobError(f"output name {name!r} would escape or hide in the output folder")
    return path


def check_output_name(slide_id: str, name: str) -> PurePosixPath:
    """``name`` as a path relative to the output folder, checked as a name that slide
    ``slide_id`` may write (local or remote folder).

    Raises:
        JobError: ``name`` escapes or hides (see :func:`safe_relative`), is not named
            after the slide (an output's file name starts with the slide id) or would
            overwrite a status file.
    """
    relative = safe_relative(name)
    if not relative.name.startswith(slide_id):
        raise JobError(f"output {name!r} is not named after slide {slide_id!r}")
    if relative.parts[0] == "status" or (len(relative.parts) == 1 and \
            relative.name.endswith("_status.json")):
        raise JobError(f"output {name!r} would overwrite a status file")
    return relative


def output_path(out: Path, slide_id: str, name: str) -> Path:
    """Where the output ``name`` of slide ``slide_id`` lives: ``out / name``, checked so
    that a name from a (user-editable) status file can never point elsewhere.

    Raises:
        JobError: ``name`` escapes or hides (see :func:`safe_relative`), is not named
            after the slide (an output's file name starts with the slide id), lies in the
            status folder, or a folder on its way is a symbolic link.
    """
    relative = check_output_name(slide_id, name)
    here = Path(out)
    for part in relative.parts:
        here = here / part
        if here.is_symlink():
            raise JobError(f"{here} is a symbolic link; outputs are never written or "
                           "deleted through links")
    return here


@dataclass
class SlideContext:
    """What ``process`` gets besides its entry and options: where to write.

    Files are written under ``partial`` (``OUT/.partial/<slide_id>/``) and moved into
    place by the engine only when the whole slide succeeded, so a failed or killed slide
    never leaves a file that looks finished.
    """

    out: Path
    slide_id: str
    partial: Path
    outputs: dict[str, Path] = field(default_factory=dict)  #: final name -> written file
    on_progress: Callable[[int], None] | None = None

    @contextlib.contextmanager
    def output(self, name: str) -> Iterator[Path]:
        """Yield a path to write the output ``name`` (relative to the output folder, e.g.
        ``index/<slide>.parquet``); it is kept when the block succeeds."""
        relative = safe_relative(name)
        self.partial.mkdir(parents=True, exist_ok=True)
        tmp = self.partial / f"{secrets.token_hex(6)}{''.join(relative.suffixes[-2:])}"
        try:
            yield tmp
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self.adopt(tmp, name)

    def adopt(self, path: str | os.PathLike, name: str) -> None:
        """Declare a file already written under :attr:`partial` as the output ``name``."""
        relative = str(safe_relative(name))
        if not PurePosixPath(relative).name.startswith(self.slide_id):
            raise JobError(f"output {name!r} must be named after slide {self.slide_id!r} "
                           "(its file name starts with the slide id)")
        path = Path(path)
        if not path.resolve().is_relative_to(self.partial.resolve()):
            raise JobError(f"{path}: outputs must be written in {self.partial}")
        self.outputs[relative] = path

    def progress(self, n: int) -> None:
        """Report ``n`` units of work done (shown on the progress bar)."""
        if self.on_progress is not None:
            self.on_progress(n)
