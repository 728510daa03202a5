"""Patches of a cell grid in batches, read by background threads.

Each thread owns a :class:`~exaslide.patches.PatchReader` and reads one contiguous share
of the cells (raster order), so every stored tile is decoded once per thread that needs
it (tiles on the border between two shares at most twice). Tile decoding (libjpeg,
OpenCV) releases the GIL, so threads overlap reading with each other and with the model.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from exaslide.patches.reader import PatchReader
from exaslide.patches.spec import PatchSpec

_DONE = object()


def _read_share(path, spec: PatchSpec, backend: str | None, ids: np.ndarray,
                xs: np.ndarray, ys: np.ndarray, batch_size: int) -> Iterator[tuple]:
    """``(cell ids, (n, size, size, 3) uint8 batch)`` for one share of the cells."""
    size = spec.size
    with PatchReader(path, spec, backend=backend) as reader:
        for start in range(0, len(ids), batch_size):
            part = ids[start : start + batch_size]
            batch = np.empty((len(part), size, size, 3), np.uint8)
            for k, patch in enumerate(reader.iter_patches(xs[part], ys[part])):
                batch[k] = patch
            yield part, batch


def iter_batches(path, spec: PatchSpec, xs: np.ndarray, ys: np.ndarray, batch_size: int,
                 workers: int = 1, backend: str | None = None,
                 prefetch: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(ids, batch)``: indices into ``xs`` / ``ys`` and their patches as an
    ``(n, size, size, 3)`` uint8 array; every index exactly once, in no fixed order when
    ``workers > 1``.

    Args:
        path: the slide.
        spec: patch size and resolution.
        xs, ys: level-0 top-left corners, in raster order.
        batch_size: patches per batch (the last batch of each share may be smaller).
        workers: reading threads; 0 reads in the calling thread.
        backend: force a slide backend.
        prefetch: batches each thread may hold ready.
    """
    ids = np.arange(len(xs))
    if len(ids) == 0:
        return
    if workers < 1:
        yield from _read_share(path, spec, backend, ids, xs, ys, batch_size)
        return
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
            for item in _read_share(path, spec, backend, share, xs, ys, batch_size):
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
