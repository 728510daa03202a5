"""PyTorch datasets that feed training from slides or from shards (imports torch).

- :class:`~exaslide.data.slide_dataset.SlidePatchDataset`: patches read on the fly from the
  slides through a per-process pool of open slides and a decoded-tile cache.
- :class:`~exaslide.data.shard_dataset.ShardDataset`: materialised tar shards streamed
  with a shuffle buffer, each sample exactly once per epoch over DDP ranks and workers.
- :class:`~exaslide.data.sampler.PatchSampler`: deterministic, optionally class-balanced,
  DDP-aware epoch order for the map-style dataset.
- :func:`~exaslide.data.loader.make_loader`: a ``DataLoader`` with workers, prefetch and
  pinned memory.
"""

from exaslide.data.loader import make_loader, to_device
from exaslide.data.sampler import PatchSampler, distributed_context
from exaslide.data.shard_dataset import ShardDataset
from exaslide.data.slide_dataset import SlidePatchDataset
from exaslide.data.sources import DatasetError, load_patches

__all__ = [
    "DatasetError",
    "PatchSampler",
    "ShardDataset",
    "SlidePatchDataset",
    "distributed_context",
    "load_patches",
    "make_loader",
    "to_device",
]
