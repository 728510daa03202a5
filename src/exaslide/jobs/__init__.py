"""One per-slide job engine for every batch stage: see :mod:`exaslide.jobs.engine`.

A stage is an options dataclass and a function ``process(entry, options, ctx) -> dict``
(or ``plan`` / ``run_task`` / ``finish`` for sub-slide tasks); :func:`run_stage` gives it
resume, status files, atomic outputs, the output lock, clean-up, failure handling,
executors (inline, Dask, torchrun ranks) and the summary.
"""

from exaslide.jobs.engine import Outcome, error_message, run_stage
from exaslide.jobs.executors import DaskExecutor, InlineExecutor, make_executor
from exaslide.jobs.lock import OutputLock, OutputLockedError
from exaslide.jobs.stage import (
    ClusterLostError,
    JobError,
    RunShape,
    SlideContext,
    SlideEntry,
    Stage,
)
from exaslide.jobs.status import input_fingerprint, read_status, status_path, to_jsonable

__all__ = [
    "ClusterLostError",
    "DaskExecutor",
    "InlineExecutor",
    "JobError",
    "Outcome",
    "OutputLock",
    "OutputLockedError",
    "RunShape",
    "SlideContext",
    "SlideEntry",
    "Stage",
    "error_message",
    "input_fingerprint",
    "make_executor",
    "read_status",
    "run_stage",
    "status_path",
    "to_jsonable",
]
