"""DataLoaders that keep an accelerator fed: worker processes, pinned memory, prefetch.

:func:`make_loader` wraps either dataset in a ``torch.utils.data.DataLoader`` with the
settings that matter for throughput: ``workers`` processes (``persistent_workers`` so slide
handles and tile caches survive between epochs), ``prefetch_factor`` batches in flight per
worker, and pinned (page-locked) host memory when the target device is a GPU so that
:func:`to_device` copies asynchronously. The loader's generator is seeded with ``seed``;
PyTorch derives each worker's Python, NumPy and torch seeds from it, so random transforms
are reproducible.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate


def collate_patches(batch: list) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Batch ``(image, label, metadata)`` items.

    Images that are channels-last in memory (``CHW`` views of ``HWC`` pixels, as both
    datasets return them) are stacked as ``NHWC`` (a plain copy, in shared memory inside
    a worker) and returned as an ``NCHW`` view in the ``channels_last`` memory format, the
    layout convolutions prefer on GPUs; stacking them as ``NCHW`` would be a strided
    gather several times slower. Other images are stacked as they are, and other items
    go to PyTorch's ``default_collate``.
    """
    if not all(isinstance(item, (tuple, list)) and len(item) == 3
               and isinstance(item[0], torch.Tensor) for item in batch):
        return default_collate(batch)
    images, labels, metadata = zip(*batch, strict=True)
    if all(i.dim() == 3 and i.permute(1, 2, 0).is_contiguous() for i in images):
        stacked = default_collate([i.permute(1, 2, 0) for i in images]).permute(0, 3, 1, 2)
    else:
        stacked = default_collate(list(images))
    return stacked, default_collate(labels), default_collate(metadata)


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
            is used).
        device: where batches will go; pinned memory is used for CUDA devices.
        prefetch_factor: batches loaded ahead per worker.
        drop_last: drop the last incomplete batch.
        seed: seeds the workers' random generators.

    Batches are ``(images, labels, metadata)`` made by :func:`collate_patches`.
    """
    if sampler is not None and isinstance(dataset, IterableDataset):
        raise ValueError("a ShardDataset orders itself: use its seed and set_epoch, "
                         "not a sampler")
    pin = device is not None and torch.device(device).type == "cuda"
    generator = torch.Generator()
    generator.manual_seed(seed)
    options: dict[str, Any] = {}
    if workers > 0:
        options.update(prefetch_factor=prefetch_factor, persistent_workers=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin, drop_last=drop_last, generator=generator,
                      collate_fn=collate_patches, **options)


def to_device(images: torch.Tensor, device: str | torch.device, *,
              channels_last: bool = True) -> torch.Tensor:
    """Move a batch of images to ``device`` (asynchronously from pinned memory), in
    channels-last layout by default (faster convolutions with mixed precision)."""
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images
