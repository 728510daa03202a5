"""Memory for assembled batches, reused once the consumer has let go of it.

A batch of 64 patches of 224 px is 9.6 MB. Fresh memory for every batch costs a page fault
per 4 KiB page when it is first written (2,352 per batch; on the project's virtual machine
each costs 1.5-3 µs, more than half the decode time of the batch's tiles), and in a
``DataLoader`` worker that memory must be shared with the main process, whose shared
memory gets no huge pages. So batch memory is recycled:

- **in the calling process** (``workers=0``): a batch's memory is a NumPy array that every
  tensor made from it references; when only the pool still holds it, nobody can see it
  any more and it is reused (:class:`BatchMemory`).
- **in a worker**: each batch lives in one shared-memory block of a per-worker ring.
  The worker marks a slot busy in a small shared flag array before sending it; the main
  process registers a weak reference to the storage it rebuilt from the block
  (:func:`received`, run when the batch is unpickled there) and, whenever the loader asks
  for the next batch (:class:`~exaslide.data.loader.StreamBatches`), clears the flag of
  every block whose storage no tensor uses any more (:func:`poll_released`). A batch the
  consumer keeps is never overwritten. Without a :class:`StreamBatches` loader (no flag
  array reaches the worker) every batch gets fresh shared memory, as ``default_collate``
  does.

The batch's integers (labels, ``x``, ``y``, ``level``, ``index``) share the block, so one
batch crosses to the main process as one shared-memory file.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np
import torch

#: Most shared-memory blocks in a worker's ring: the batches assembled ahead, those in
#: flight (``prefetch_factor``) and a few the consumer holds. Blocks are made on demand.
RING_SLOTS = 64
_ALIGN = 64


def _layout(count: int, side: int) -> tuple[int, int, int]:
    """Bytes of the pixels, offset of the integers, total bytes of one batch block."""
    pixels = count * side * side * 3
    offset = -(-pixels // _ALIGN) * _ALIGN
    return pixels, offset, offset + 5 * count * 8


class BatchMemory:
    """Per-process batch memory: NumPy arrays recycled by reference count in the calling
    process, a ring of shared-memory blocks in a ``DataLoader`` worker."""

    def __init__(self, keep: int = 64):
        self.keep = keep
        self._arrays: list[np.ndarray] = []
        self._ring: list[tuple[torch.UntypedStorage, int]] = []
        self.flags: np.ndarray | None = None  # the worker's ring flags (shared)
        self._flags_tensor: torch.Tensor | None = None
        self.token: int | None = None
        self.fresh = 0  # blocks allocated (not reused), for tests and benchmarks

    def use_ring(self, flags: torch.Tensor, token: int) -> None:
        """Recycle shared blocks with this flag array (sent by the main process with the
        first batch of every epoch: the same ring while ``token`` is the same)."""
        if token != self.token:
            self._ring = []
        self._flags_tensor, self.flags, self.token = flags, flags.numpy(), token

    def take(self, count: int, side: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``(pixels, ints, slot)``: an ``N x side x side x 3`` ``uint8`` tensor and a
        ``5 x N`` ``int64`` tensor in one block; ``slot`` is ``(token, index)`` for a ring
        block, else ``None``."""
        from torch.utils.data import get_worker_info

        pixels, offset, nbytes = _layout(count, side)
        if get_worker_info() is None:
            raw = self._array(nbytes)
            return (torch.from_numpy(raw[:pixels].reshape(count, side, side, 3)),
                    torch.from_numpy(raw[offset:nbytes].view(np.int64).reshape(5, count)),
                    None)
        storage, slot = self._block(nbytes)
        images = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (count, side, side, 3))
        ints = torch.empty(0, dtype=torch.int64).set_(storage, offset // 8, (5, count))
        return images, ints, slot

    def unused(self, slot: Any) -> None:
        """A block taken but never sent (a batch made ahead and dropped): free again."""
        if slot is not None and self.flags is not None and slot[0] == self.token:
            self.flags[slot[1]] = 0

    def _array(self, nbytes: int) -> np.ndarray:
        arrays = self._arrays
        for i in range(len(arrays)):
            # references: the list's and getrefcount's argument; a tensor made from the
            # array (through a view) adds one
            if arrays[i].nbytes == nbytes and sys.getrefcount(arrays[i]) == 2:
                raw = arrays.pop(i)
                arrays.append(raw)
                return raw
        self.fresh += 1
        raw = np.empty(nbytes, np.uint8)  # >= 4 MiB: NumPy asks for huge pages
        arrays.append(raw)
        if len(arrays) > self.keep:  # forget the oldest (freed when unused)
            arrays.pop(0)
        return raw

    def _block(self, nbytes: int) -> tuple[torch.UntypedStorage, Any]:
        flags = self.flags
        if flags is not None:
            for i, (storage, size) in enumerate(self._ring):
                if size == nbytes and not flags[i]:
                    flags[i] = 1
                    return storage, (self.token, i)
        self.fresh += 1
        storage = torch.UntypedStorage._new_shared(nbytes)
        if flags is not None and len(self._ring) < len(flags):
            self._ring.append((storage, nbytes))
            flags[len(self._ring) - 1] = 1
            return storage, (self.token, len(self._ring) - 1)
        return storage, None


# ------------------------------------------------------------------ main process side
_LOCK = threading.Lock()
_RINGS: dict[int, torch.Tensor] = {}  # token -> flags of one worker's ring
_HELD: list[tuple[Any, int, int]] = []  # (weak ref to a received storage, token, slot)
#: Ring blocks released in this process so far (for tests and benchmarks).
released_total = 0


def new_ring(token: int) -> torch.Tensor:
    """A shared flag array for one worker's ring, registered under ``token``."""
    flags = torch.zeros(RING_SLOTS, dtype=torch.uint8).share_memory_()
    with _LOCK:
        _RINGS[token] = flags
    return flags


def forget_ring(token: int) -> None:
    """Stop tracking a ring (its loader is gone)."""
    with _LOCK:
        _RINGS.pop(token, None)


def received(images: torch.Tensor, slot: Any) -> None:
    """Register a batch block that arrived in this process (see the module doc)."""
    from torch.multiprocessing.reductions import StorageWeakRef

    if slot is None:
        return
    with _LOCK:
        _HELD.append((StorageWeakRef(images.untyped_storage()), *slot))


def poll_released() -> int:
    """Clear the flags of ring blocks no tensor of this process uses any more; returns
    how many were released."""
    global released_total
    with _LOCK:
        if not _HELD:
            return 0
        keep, released = [], 0
        for ref, token, slot in _HELD:
            if ref.expired():
                flags = _RINGS.get(token)
                if flags is not None:
                    flags[slot] = 0
                released += 1
            else:
                keep.append((ref, token, slot))
        _HELD[:] = keep
        released_total += released
    return released
