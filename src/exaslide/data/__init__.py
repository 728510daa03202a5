"""PyTorch datasets that feed training from slides or from shards (imports torch).

- :class:`~exaslide.data.slide_dataset.SlidePatchDataset`: patches read on the fly from the
  slides through a per-process pool of open slides and a decoded-tile cache.
- :class:`~exaslide.data.shard_dataset.ShardDataset`: materialised tar shards streamed
  with a shuffle buffer, each sample exactly once per epoch over DDP ranks and workers.
- :class:`~exaslide.data.sampler.PatchSampler`: deterministic, optionally class-balanced,
  DDP-aware epoch order for the map-style dataset.
- :func:`~exaslide.data.loader.make_loader`: a ``DataLoader`` with workers, prefetch and
  pinned memory.

The compressed batch path (``docs/decode.md``): loader workers ship the stored JPEG tiles'
bytes, the training (or inference) process decodes them.

- :class:`~exaslide.data.compressed_dataset.CompressedPatchDataset` and
  :func:`~exaslide.data.compressed_dataset.make_compressed_loader`: batches of compressed
  tiles (patches not on JPEG tiles travel as pixels), the patches of
  ``SlidePatchDataset`` for the same index.
- :class:`~exaslide.data.compressed_batch.CompressedBatch`: one such batch (JPEG bytes
  plus the plan that places tile pixels into patches).
- :class:`~exaslide.data.batch_decode.BatchDecoder`: decodes a batch and assembles its
  patches (nvJPEG on CUDA, libjpeg-turbo threads on the CPU: the reader's pixels);
  :class:`~exaslide.data.batch_decode.DecodedLoader` decodes the next batch in a
  background thread.
- :class:`~exaslide.data.tile_bytes.TileDecodeError`: a damaged stored tile (names the
  slide, level and tile).
"""

from exaslide.data.batch_decode import BatchDecoder, DecodedLoader
from exaslide.data.compressed_batch import CompressedBatch
from exaslide.data.compressed_dataset import CompressedPatchDataset, make_compressed_loader
from exaslide.data.loader import make_loader, to_device
from exaslide.data.sampler import PatchSampler, distributed_context
from exaslide.data.shard_dataset import ShardDataset
from exaslide.data.slide_dataset import SlidePatchDataset
from exaslide.data.sources import DatasetError, load_patches
from exaslide.data.tile_bytes import TileDecodeError

__all__ = [
    "BatchDecoder",
    "CompressedBatch",
    "CompressedPatchDataset",
    "DatasetError",
    "DecodedLoader",
    "PatchSampler",
    "ShardDataset",
    "SlidePatchDataset",
    "TileDecodeError",
    "distributed_context",
    "load_patches",
    "make_compressed_loader",
    "make_loader",
    "to_device",
]
