"""DataLoaders that keep an accelerator fed: worker processes, pinned memory, prefetch.

:func:`make_loader` wraps either dataset in a ``torch.utils.data.DataLoader`` with the
settings that matter for throughput: ``workers`` processes (``persistent_workers`` so slide
handles and tile caches survive between epochs), ``prefetch_factor`` batches in flight per
worker, and pinned (page-locked) host memory when the target device is a GPU so that
:func:`to_device` copies asynchronously. The loader's generator is seeded with ``seed``;
PyTorch derives each worker's Python, NumPy and torch seeds from it, so random transforms
are reproducible.

With a :class:`~exaslide.data.sampler.PatchSampler`, batches come from
:class:`StreamBatches`: the sampler's batches in the order the workers load them (which
keeps each worker on its own blocks in the locality-aware order), and, for datasets that
plan their reads (:meth:`SlidePatchDataset.expect
<exaslide.data.slide_dataset.SlidePatchDataset.expect>`), the first batch of each worker
in an epoch carries the indices that worker will read (a :class:`PlannedBatch`), so its
tile cache knows which tiles will be read again.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler, default_collate

#: Indices of a worker's plan sent at once (a longer epoch is planned in segments).
PLAN_HORIZON = 1 << 17
_TOKENS = itertools.count(1)


class PlannedBatch(list):
    """A batch of indices that may carry a plan for the dataset of the worker loading it.

    Attributes:
        plan: indices this worker will read next (``None``: nothing new).
        reset: the plan starts a new epoch (forget the previous one).
        complete: the plan is the worker's whole epoch.
        ring: ``(flags, token)`` of the worker's batch-memory ring
            (:mod:`exaslide.data.batch_memory`), with the first batch of an epoch.
        window: the shuffle window of the plan (patches), ``None`` for a full shuffle.
        keep: whether the tiles of this plan are worth keeping for the next epoch once
            read (when they fit in the cache): not when the order is locality-aware and
            split over several streams (workers or ranks), since a stream then gets
            other blocks in the next epoch (1 in ``streams`` of its tiles again), while
            keeping costs every tile a buffer touched for the first time and a slower
            decode than into the one buffer that stays in the CPU cache (measured in
            ``docs/data.md``).
    """

    plan: np.ndarray | None = None
    reset: bool = False
    complete: bool = False
    ring: tuple | None = None
    window: int | None = None
    keep: bool = True


class StreamBatches(Sampler):
    """A batch sampler over a sampler with ``batches(batch_size, streams, drop_last)``
    (a :class:`~exaslide.data.sampler.PatchSampler`), attaching plans when ``plan``.

    A worker's plan is the concatenation of the batches it will load (batch ``k`` goes to
    worker ``k % streams``), sent in segments of ``2 * horizon`` indices whenever fewer
    than ``horizon`` planned indices are left ahead of its reads. With ``rings``, each
    worker also gets the flag array of its batch-memory ring, and the blocks this process
    no longer uses are released before each batch (:mod:`exaslide.data.batch_memory`).
    """

    def __init__(self, sampler, batch_size: int, streams: int = 1, drop_last: bool = False,
                 plan: bool = True, horizon: int = PLAN_HORIZON, rings: bool = False):
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.streams, self.plan, self.horizon = max(1, streams), plan, max(1, horizon)
        self._rings: list[tuple[Any, int]] | None = None
        if rings:
            from exaslide.data.batch_memory import forget_ring, new_ring

            tokens = [next(_TOKENS) for _ in range(self.streams)]
            self._rings = [(new_ring(token), token) for token in tokens]
            for token in tokens:
                weakref.finalize(self, forget_ring, token)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        batches = self.sampler.batches(self.batch_size, self.streams, self.drop_last)
        if not self.plan:
            yield from (b.tolist() for b in batches)
            return
        from exaslide.data.batch_memory import poll_released

        window = self.sampler.window if getattr(self.sampler, "locality", False) else None
        keep = window is None or \
            self.streams * getattr(self.sampler, "world_size", 1) == 1
        planned = [0] * self.streams  # indices of each stream sent in plans so far
        read = [0] * self.streams  # indices of each stream read before this batch
        sequences = [np.concatenate(batches[w :: self.streams]) if batches[w:] else
                     np.empty(0, np.int64) for w in range(self.streams)]
        for k, indices in enumerate(batches):
            w = k % self.streams
            batch = PlannedBatch(indices.tolist())
            if self._rings is not None:
                poll_released()
                if k < self.streams:
                    batch.ring = self._rings[w]
            if planned[w] < len(sequences[w]) and planned[w] <= read[w] + self.horizon:
                batch.plan = sequences[w][planned[w] : planned[w] + 2 * self.horizon]
                batch.reset = planned[w] == 0
                planned[w] += len(batch.plan)
                batch.complete = batch.reset and planned[w] == len(sequences[w])
                batch.window = window
                batch.keep = keep
            read[w] += len(indices)
            yield batch


def collate_patches(batch: list) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Batch ``(image, label, metadata)`` items.

    Images that are channels-last in memory (``CHW`` views of ``HWC`` pixels, as both
    datasets return them) are stacked as ``NHWC`` (a plain copy, in shared memory inside
    a worker) and returned as an ``NCHW`` view in the ``channels_last`` memory format, the
    layout convolutions prefer on GPUs; stacking them as ``NCHW`` would be a strided
    gather several times slower. Other images are stacked as they are, and other items
    go to PyTorch's ``default_collate``. A
    :class:`~exaslide.data.patch_batch.PatchBatch` (a batch the dataset assembled in
    place) is returned as it is.
    """
    from exaslide.data.patch_batch import PatchBatch

    if isinstance(batch, PatchBatch):
        return batch.collated()
    if not all(isinstance(item, (tuple, list)) and len(item) == 3
               and isinstance(item[0], torch.Tensor) for item in batch):
        return default_collate(batch)
    images, labels, metadata = zip(*batch, strict=True)
    if all(i.dim() == 3 and i.permute(1, 2, 0).is_contiguous() for i in images):
        stacked = default_collate([i.permute(1, 2, 0) for i in images]).permute(0, 3, 1, 2)
    else:
        stacked = default_collate(list(images))
    return stacked, default_collate(labels), default_collate(metadata)


def loader_options(workers: int, device, prefetch_factor: int, seed: int) -> dict[str, Any]:
    """The ``DataLoader`` keywords every exaslide loader shares: workers (persistent,
    with ``prefetch_factor``), pinned memory for CUDA devices, a seeded generator."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    options: dict[str, Any] = {
        "num_workers": workers, "generator": generator,
        "pin_memory": device is not None and torch.device(device).type == "cuda"}
    if workers > 0:
        options.update(prefetch_factor=prefetch_factor, persistent_workers=True)
    return options


def make_loader(dataset, *, batch_size: int = 64, workers: int = 2, sampler=None,
                device: str | torch.device | None = None, prefetch_factor: int = 4,
                drop_last: bool = False, seed: int = 0) -> DataLoader:
    """A ``DataLoader`` over a :class:`SlidePatchDataset` or :class:`ShardDataset`.

    Args:
        dataset: the dataset.
        batch_size: samples per batch.
        workers: loader processes (0: load in the calling process).
        sampler: e.g. a :class:`~exaslide.data.sampler.PatchSampler` (map-style datasets
            only; the loader does not shuffle by itself, so without one the index order
            is used). A ``PatchSampler``'s batches come through :class:`StreamBatches`.
        device: where batches will go; pinned memory is used for CUDA devices.
        prefetch_factor: batches loaded ahead per worker.
        drop_last: drop the last incomplete batch.
        seed: seeds the workers' random generators.

    Batches are ``(images, labels, metadata)`` made by :func:`collate_patches`. Datasets
    that plan their reads (``dataset.expect``) get each worker's plan with its batches.
    """
    if sampler is not None and isinstance(dataset, IterableDataset):
        raise ValueError("a ShardDataset orders itself: use its seed and set_epoch, "
                         "not a sampler")
    options = loader_options(workers, device, prefetch_factor, seed)
    plans = callable(getattr(dataset, "expect", None))
    if sampler is None and plans:
        sampler = _IndexOrder(len(dataset))
    if sampler is not None and callable(getattr(sampler, "batches", None)):
        batches = StreamBatches(sampler, batch_size, workers, drop_last, plan=plans,
                                rings=plans and workers > 0)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_patches,
                          **options)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      collate_fn=collate_patches, **options)


class _IndexOrder(Sampler):
    """The index order, as batches (a loader without a sampler)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(range(self.n))

    def batches(self, batch_size: int, streams: int = 1,
                drop_last: bool = False) -> list[np.ndarray]:
        stop = self.n - self.n % batch_size if drop_last else self.n
        return [np.arange(start, min(start + batch_size, stop))
                for start in range(0, stop, batch_size)]


def to_device(images: torch.Tensor, device: str | torch.device, *,
              channels_last: bool = True) -> torch.Tensor:
    """Move a batch of images to ``device`` (asynchronously from pinned memory), in
    channels-last layout by default (faster convolutions with mixed precision)."""
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images
