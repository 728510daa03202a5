"""Patches of a cell grid in batches, read by worker processes (or threads, or inline).

Each reader owns a :class:`~exaslide.patches.PatchReader` and reads one contiguous share
of the cells (raster order) in one :meth:`~exaslide.patches.PatchReader.iter_patches`
pass, so every stored tile is decoded once per reader that needs it (tiles on the border
between two shares at most twice).

Readers are processes by default (``readers="processes"``): a ``torch`` ``DataLoader``
over :class:`CellShares`, each worker writing its uint8 batches straight into shared
memory (pinned on the way for a GPU). Processes do not share the GIL, whose Python work
of assembling patches capped threads near 8,800 patches/s on a 16-core node. Threads
(``readers="threads"``) remain for processes that may not start children (a daemonic
process, e.g. a Dask worker's, falls back to them by itself) and for comparison.

A reader that fails (a corrupt tile found mid-slide) ends the slide with its error,
re-raised as it was in the reader; a reader process that dies (killed, out of memory)
ends it with an :class:`~exaslide.errors.InferenceError` naming the process; reader
processes and their shared memory are released either way.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import pickle
import queue
import threading
import traceback
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from exaslide.data.loader_workers import shutdown_workers
from exaslide.errors import ExaslideError, InferenceError
from exaslide.patches.reader import PatchReader
from exaslide.patches.spec import PatchSpec

logger = logging.getLogger(__name__)

#: How readers run: worker processes (no GIL between them) or threads of this process.
READERS = ("processes", "threads")
#: Reading processes beyond this are not started by default (each costs a fork and a
#: slide opening per slide, and its own batches in shared memory).
MAX_READ_PROCESSES = 16


def default_workers(device: str, world_size: int | None = None) -> int:
    """Patch-reading processes per slide by default.

    On a GPU, the cores of this process's share of the node (``world_size`` processes
    on it; default ``LOCAL_WORLD_SIZE``, which torchrun sets) less one for the model's
    process, at most
    :data:`MAX_READ_PROCESSES`. On the CPU none: the model is the bottleneck (small-cnn
    on 64-px patches spends ~1 ms per cell on 2 cores, reading ~15 us), so patches are
    read in the model's process; a reading process would only add its start-up (about
    45 ms per slide, measured on 2 cores).
    """
    from exaslide.runtime import cpu_count, local_world_size

    if not str(device).startswith("cuda"):
        return 0
    share = cpu_count() // max(1, world_size or local_world_size())
    return max(1, min(MAX_READ_PROCESSES, share - 1))

_DONE = object()


def _share_batches(path, spec: PatchSpec, backend: str | None, ids: np.ndarray,
                   xs: np.ndarray, ys: np.ndarray, batch_size: int,
                   empty: Callable[[tuple[int, ...]], torch.Tensor] | None = None
                   ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """``(cell ids, (n, size, size, 3) uint8 batch)`` for one share of the cells: one
    ``iter_patches`` pass over the whole share (a tile shared by two batches is decoded
    once). ``empty(shape)`` allocates each batch (in shared memory in a worker).

    Raises:
        InferenceError: a patch cannot be read (naming the slide and the patch), or
            the slide's own error (``SlideError``).
    """
    size = spec.size
    if len(ids) == 0:
        return
    empty = empty or _private_empty
    with PatchReader(path, spec, backend=backend) as reader:
        patches = reader.iter_patches(xs[ids], ys[ids])
        for start in range(0, len(ids), batch_size):
            part = ids[start : start + batch_size]
            batch = empty((len(part), size, size, 3))
            pixels = batch.numpy()
            for k in range(len(part)):
                try:
                    pixels[k] = next(patches)
                except ExaslideError:
                    raise
                except Exception as exc:
                    x, y = int(xs[part[k]]), int(ys[part[k]])
                    raise InferenceError(
                        f"{path}: cannot read the patch at level-0 ({x}, {y}): "
                        f"{type(exc).__name__}: {exc}; the slide may be damaged (check it "
                        "with `exaslide info`, or copy it again)") from exc
            yield part, batch


def _private_empty(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.uint8)


def _shared_empty(shape: tuple[int, ...]) -> torch.Tensor:
    """A uint8 tensor in shared memory: a worker sends it without a copy."""
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)


class _Failure:
    """A reader's exception, sent to the main process and raised there as it was (with
    the reader's traceback as a note), not as the DataLoader's multi-line wrapper."""

    def __init__(self, exc: BaseException):
        note = "in reading process:\n" + "".join(traceback.format_exception(exc)).rstrip()
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # an exception that cannot travel: its type and message do
            exc = InferenceError(f"{type(exc).__name__}: {exc}")
        exc.__traceback__ = None
        exc.__cause__ = exc.__context__ = None
        exc.add_note(note)
        self.exc = exc


class _Ring:
    """A reading process's shared-memory batch blocks, reused once the model's process
    has let go of them: fresh shared memory for every batch would fault in every page in
    both processes (about 3x the reading CPU of a 224-px batch, measured).

    ``flags[k]`` (shared with the model's process) is 1 while block ``k`` is in flight:
    set here before the batch is sent, cleared there once the consumer has asked for the
    next batch. ``blocks``, when given, were made by the model's process before the
    readers started: both map them, so a batch crosses as ``(worker, slot)`` alone, with
    no file descriptor to pass. With no free block a batch gets fresh memory and is sent
    (slot -1): never a wait."""

    def __init__(self, flags: torch.Tensor, blocks: list | None = None):
        self.flags = flags.numpy()
        self.shared = blocks is not None
        self.blocks: list = list(blocks) if blocks is not None else [None] * len(self.flags)
        self.slot = -1  #: the block of the last batch taken

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        nbytes = math.prod(shape)
        for k, block in enumerate(self.blocks):
            if self.flags[k] or (self.shared and block.nbytes() < nbytes):
                continue
            if block is None or block.nbytes() < nbytes:
                block = self.blocks[k] = torch.UntypedStorage._new_shared(nbytes)
            self.flags[k], self.slot = 1, k
            return torch.empty(0, dtype=torch.uint8).set_(block, 0, shape)
        self.slot = -1
        return _shared_empty(shape)


class CellShares(IterableDataset):
    """Batches of a slide's cells for DataLoader workers: worker ``w`` of ``W`` reads
    share ``w`` (contiguous, raster order) of the cells in batches of ``batch_size``,
    yielding ``(first cell, count, batch, w, slot)``: the uint8 NHWC batch in the
    worker's shared-memory ring (``flags[w]``, see :class:`_Ring`), or ``None`` when it
    is in block ``slot`` of ``blocks[w]``, which the receiving process maps too."""

    def __init__(self, path, spec: PatchSpec, xs: np.ndarray, ys: np.ndarray,
                 batch_size: int, backend: str | None = None,
                 flags: torch.Tensor | None = None, blocks: list | None = None):
        self.path, self.spec, self.backend = path, spec, backend
        self.xs, self.ys, self.batch_size = np.asarray(xs), np.asarray(ys), batch_size
        self.flags, self.blocks = flags, blocks

    def __iter__(self):
        ids = np.arange(len(self.xs))
        info = get_worker_info()
        worker, ring, empty = 0, None, _private_empty
        if info is not None:  # no cv2.setNumThreads here: it can hang after fork
            worker = info.id
            ids = np.array_split(ids, info.num_workers)[worker]
            if self.flags is not None:
                ring = _Ring(self.flags[worker],
                             self.blocks[worker] if self.blocks is not None else None)
            empty = ring.take if ring is not None else _shared_empty
        try:
            for part, batch in _share_batches(self.path, self.spec, self.backend, ids,
                                              self.xs, self.ys, self.batch_size, empty):
                slot = ring.slot if ring is not None else -1
                yield (int(part[0]), len(part),
                       None if slot >= 0 and ring.shared else batch, worker, slot)
        except Exception as exc:
            yield _Failure(exc)


def reader_death(exc: BaseException) -> InferenceError | None:
    """The :class:`InferenceError` for a DataLoader's "worker exited / was killed"
    error, or ``None`` for any other exception."""
    message = str(exc)
    if not isinstance(exc, RuntimeError) or not message.startswith("DataLoader worker"):
        return None
    return InferenceError(f"a patch-reading process died ({message.splitlines()[0]}); "
                          "rerun the slide; if it happens again, lower --workers (each "
                          "process holds its own batches: the system may be out of memory "
                          "or of shared memory in /dev/shm)")


def iter_batches(path, spec: PatchSpec, xs: np.ndarray, ys: np.ndarray, batch_size: int,
                 workers: int = 1, backend: str | None = None, prefetch: int = 2,
                 readers: str = "processes", pin_memory: bool = False
                 ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(ids, batch)``: indices into ``xs`` / ``ys`` and their patches as an
    ``(n, size, size, 3)`` uint8 tensor; every index exactly once, in no fixed order when
    ``workers > 1``. A batch is valid until the next one is asked for (reading processes
    reuse its memory): copy what must be kept.

    Args:
        path: the slide.
        spec: patch size and resolution.
        xs, ys: level-0 top-left corners, in raster order.
        batch_size: patches per batch (the last batch of each share may be smaller).
        workers: readers; 0 reads in the calling thread.
        backend: force a slide backend.
        prefetch: batches each reader may hold ready.
        readers: ``"processes"`` (default) or ``"threads"``; a daemonic process, which
            may not start processes, uses threads.
        pin_memory: batches in page-locked memory (for an asynchronous copy to a GPU;
            processes only).

    Raises:
        InferenceError: a patch cannot be read, or a reading process died. A reader's
            ``SlideError`` passes through.
    """
    if readers not in READERS:
        raise InferenceError(f"readers must be one of {READERS}, got {readers!r}")
    ids = np.arange(len(xs))
    if len(ids) == 0:
        return
    if workers < 1:
        yield from _share_batches(path, spec, backend, ids, xs, ys, batch_size)
        return
    if readers == "processes" and multiprocessing.current_process().daemon:
        logger.info("a daemonic process cannot start reading processes: reading with "
                    "%d threads", workers)
        readers = "threads"
    if readers == "threads":
        yield from _thread_batches(path, spec, backend, ids, xs, ys, batch_size, workers,
                                   prefetch)
    else:
        yield from _process_batches(path, spec, backend, xs, ys, batch_size,
                                    min(workers, len(ids)), prefetch, pin_memory)


def _process_batches(path, spec, backend, xs, ys, batch_size: int, workers: int,
                     prefetch: int, pin_memory: bool, send: bool | None = None):
    """Batches from ``workers`` reading processes. ``send`` (default: with
    ``pin_memory``): batches travel as tensors (the DataLoader pins them for the GPU),
    in blocks of the readers' rings; else in blocks this process made and maps."""
    # a worker has about `prefetch` batches in flight and one with the consumer
    slots = prefetch + 2
    flags = torch.zeros((workers, slots), dtype=torch.uint8).share_memory_()
    blocks = None
    if not (pin_memory if send is None else send):  # batches cross as two integers
        nbytes = batch_size * spec.size * spec.size * 3  # sparse until written
        blocks = [[torch.UntypedStorage._new_shared(nbytes) for _ in range(slots)]
                  for _ in range(workers)]
    loader = DataLoader(CellShares(path, spec, xs, ys, batch_size, backend, flags, blocks),
                        batch_size=None, num_workers=workers, prefetch_factor=prefetch,
                        pin_memory=pin_memory, persistent_workers=False)
    released = flags.numpy()
    shape = (spec.size, spec.size, 3)
    batches = iter(loader)
    try:
        for item in batches:
            if isinstance(item, _Failure):
                raise item.exc
            first, count, batch, worker, slot = item
            if batch is None:
                batch = torch.empty(0, dtype=torch.uint8).set_(blocks[worker][slot], 0,
                                                               (count, *shape))
            yield np.arange(first, first + count), batch
            del batch
            if slot >= 0:  # the consumer is done with it: the reader may reuse it
                released[worker, slot] = 0
    except RuntimeError as exc:
        death = reader_death(exc)
        if death is None:
            raise
        raise death from exc
    finally:  # now, not when the iterator is collected: no process outlives the slide
        shutdown_workers(batches)


def _thread_batches(path, spec, backend, ids, xs, ys, batch_size: int, workers: int,
                    prefetch: int):
    shares = [s for s in np.array_split(ids, min(workers, len(ids))) if len(s)]
    ready: queue.Queue = queue.Queue(maxsize=prefetch * len(shares))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(share: np.ndarray) -> None:
        try:
            for item in _share_batches(path, spec, backend, share, xs, ys, batch_size):
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        put(_DONE)

    threads = [threading.Thread(target=run, args=(s,), daemon=True, name=f"infer-read-{i}")
               for i, s in enumerate(shares)]
    for t in threads:
        t.start()
    try:
        finished = 0
        while finished < len(threads):
            item = ready.get()
            if item is _DONE:
                finished += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        for t in threads:
            t.join()
