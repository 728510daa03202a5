"""Where the engine's tasks run: in this process, or on a Dask cluster.

- :class:`InlineExecutor` runs each task at once in this process (tests, notebooks, and
  every rank of a ``torchrun`` job, which shares slides by rank instead).
- :class:`DaskExecutor` runs them on a new ``LocalCluster`` (one single-threaded worker
  process per core) or on an existing scheduler (``tcp://host:8786``, e.g. one started by
  dask-jobqueue on SLURM). A worker killed mid-task is replaced and its task rerun by
  Dask; a lost scheduler ends the run with :class:`~exaslide.jobs.stage.ClusterLostError`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterator

from exaslide.jobs.stage import ClusterLostError, JobError

logger = logging.getLogger(__name__)

#: Seconds to wait for a scheduler given by address before giving up.
CONNECT_TIMEOUT = 15
SCHEDULER_ADDRESS = re.compile(r"^(tcp|tls|ucx|ws|wss)://([^\s/:\[\]]+|\[[0-9A-Fa-f:.]+\])"
                               r"(:\d{1,5})?/?$|^[A-Za-z0-9.\-]+:\d{1,5}$")


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


#: glibc trim threshold for worker processes. Dask sets 64 KiB by default, which returns
#: every freed tile buffer (196 KB for a 256-px RGB tile) to the OS and page-faults it back
#: on the next decode: extraction runs ~25% slower. 128 MiB keeps the buffers in the heap.
WORKER_MALLOC_TRIM_THRESHOLD = str(128 << 20)
#: glibc mmap threshold for worker processes. Setting any malloc variable freezes glibc's
#: otherwise adaptive mmap threshold at 128 KiB, so every 196 KB tile buffer would still be
#: mapped and unmapped, ~50 page faults a tile (~20% of a worker's extraction time,
#: measured); 32 MiB (glibc's largest adaptive value) serves tiles from the heap.
WORKER_MALLOC_MMAP_THRESHOLD = str(32 << 20)


def import_modules(modules: tuple[str, ...]) -> None:
    """Import ``modules``, ignoring those that fail (run on Dask workers)."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # the task that needs it reports the error
            logger.debug("cannot import %s", name, exc_info=True)


def check_scheduler_address(address: str) -> str:
    """``address`` if it looks like a Dask scheduler address.

    Raises:
        JobError: it does not (``notaurl``, a path, a bare word).
    """
    if not SCHEDULER_ADDRESS.match(str(address)):
        raise JobError(f"--scheduler {address!r} is not a Dask scheduler address; give "
                       "tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786) or 'inline'")
    return str(address)


def local_cluster(workers: int, quiet: bool = True):
    """A ``LocalCluster`` of ``workers`` single-threaded worker processes (see
    :data:`WORKER_MALLOC_TRIM_THRESHOLD` and :data:`WORKER_MALLOC_MMAP_THRESHOLD`).
    Quiet: a failing task is reported once, by exaslide, not with Dask's traceback."""
    import dask
    from distributed import LocalCluster

    environ = "distributed.nanny.pre-spawn-environ"
    with dask.config.set({f"{environ}.MALLOC_TRIM_THRESHOLD_": WORKER_MALLOC_TRIM_THRESHOLD,
                          f"{environ}.MALLOC_MMAP_THRESHOLD_": WORKER_MALLOC_MMAP_THRESHOLD}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                            dashboard_address=":0",
                            silence_logs=logging.CRITICAL if quiet else logging.WARNING)


class DaskExecutor:
    """Tasks on a Dask cluster: a new ``LocalCluster`` (``workers`` processes, default one
    per core) or an existing scheduler at ``address``."""

    def __init__(self, workers: int | None = None, address: str | None = None,
                 quiet: bool = True):
        from distributed import Client, as_completed

        if quiet:  # Dask logs every start-up step at INFO
            for name in list(logging.root.manager.loggerDict):
                if name.startswith("distributed"):
                    logging.getLogger(name).setLevel(logging.CRITICAL)
        self.cluster = None
        self.address = address
        if address is None:
            self.cluster = local_cluster(workers or os.cpu_count() or 1, quiet)
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(check_scheduler_address(address),
                                     timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                raise JobError(f"cannot reach the Dask scheduler at {address} within "
                               f"{CONNECT_TIMEOUT} s ({type(exc).__name__}); is it "
                               "running?") from exc
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        self._pending = as_completed()

    def warm(self, modules: tuple[str, ...]) -> None:
        """Import ``modules`` on every worker now, without waiting (a worker's first task
        then does not wait for them; a module that fails to import is left to the task
        that needs it to report)."""
        self._warm = [self.client.submit(import_modules, tuple(modules), workers=[address],
                                         pure=False)
                      for address in self.client.scheduler_info().get("workers", {})]

    def submit(self, fn: Callable, *args):
        future = self.client.submit(fn, *args, pure=False)
        self._pending.add(future)
        return future

    def completed(self) -> Iterator:
        yield from self._pending

    def lost(self, exc: BaseException) -> ClusterLostError | None:
        """A :class:`ClusterLostError` when ``exc`` (raised by a future) means the
        scheduler is gone, else None."""
        import asyncio

        from distributed.comm import CommClosedError

        gone = self.client.status not in ("running", "connecting", "newly-created")
        cancelled = isinstance(exc, CommClosedError | concurrent.futures.CancelledError |
                               asyncio.CancelledError)
        if gone or cancelled:
            where = self.address or "the local cluster"
            return ClusterLostError(f"lost the Dask scheduler ({where}) during the run: "
                                    f"{type(exc).__name__}; rerun to resume (finished "
                                    "slides are kept)")
        return None

    def close(self) -> None:
        import contextlib

        with contextlib.suppress(Exception):
            self.client.close(timeout=5)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=10)


def make_executor(workers: int | None = None, scheduler: str | None = None):
    """``InlineExecutor`` for ``scheduler="inline"``, else a :class:`DaskExecutor` (quiet
    unless this module logs at INFO)."""
    if scheduler == "inline":
        return InlineExecutor()
    if scheduler is not None:
        check_scheduler_address(scheduler)
    return DaskExecutor(workers, scheduler, quiet=not logger.isEnabledFor(logging.INFO))
