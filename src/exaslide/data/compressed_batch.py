"""The wire format of the compressed batch path: JPEG bytes plus an assembly plan.

A :class:`CompressedBatch` is what a loader worker of
:class:`~exaslide.data.compressed_dataset.CompressedPatchDataset` sends to the training
process for one batch: the standalone JPEG stream of every stored tile the batch needs
(each tile once, concatenated in one ``uint8`` tensor with offsets), where each patch
takes its pixels from (the *plan*), and the pixels of patches that are not on JPEG tiles
(read by the CPU reader in the worker: the fallback). All fields are tensors or plain
lists, so a batch pickles cheaply through the worker queues (tensors travel in shared
memory) and :meth:`CompressedBatch.pin_memory` pins it for asynchronous copies.

Plan conventions (``P`` planned patches, ``S`` the output side):

- ``box``: ``(P, 4)`` ``x0, y0, x1, y1`` of the patch's source box in pixels of the level
  read (``x1 - x0 == S`` unless the patch is resampled).
- ``tile0``: ``(P, 2)`` column and row of the tile holding ``(x0, y0)`` (floor division,
  so negative for boxes that start left of or above the level).
- ``tiles``: ``(P, KY, KX)`` stream index of the tile at row ``tile0[1] + ky``, column
  ``tile0[0] + kx``; ``-1`` where the box lies outside the level (painted white, 255).
- ``tile_size``, ``level_size``: ``(P, 2)`` width and height of the stored tiles and of
  the level; pixels beyond the level's edge are white, as in
  :class:`~exaslide.patches.reader.PatchReader`.
- ``resample``: ``(P,)`` 0 none, 1 area (``cv2.INTER_AREA``), 2 linear
  (``cv2.INTER_LINEAR``): the box is resized to ``S x S`` as the reader does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields

import torch

NO_RESAMPLE, AREA, LINEAR = 0, 1, 2


@dataclass
class CompressedBatch:
    """One batch of compressed tiles, its assembly plan and its fallback pixels."""

    size: int  #: output side S
    data: torch.Tensor  #: uint8, every stream concatenated
    offsets: torch.Tensor  #: int64 (n + 1,): stream i is data[offsets[i]:offsets[i+1]]
    stream_where: torch.Tensor  #: int32 (n, 3): source, tile column, tile row
    stream_rgb: torch.Tensor  #: bool (n,): coded as RGB (Adobe transform 0), not YCbCr
    sources: list[str]  #: "slide_id level L" of each source (for error messages)
    position: torch.Tensor  #: int64 (P,): place of each planned patch in the batch
    box: torch.Tensor  #: int64 (P, 4)
    tile0: torch.Tensor  #: int64 (P, 2)
    tiles: torch.Tensor  #: int64 (P, KY, KX)
    tile_size: torch.Tensor  #: int64 (P, 2)
    level_size: torch.Tensor  #: int64 (P, 2)
    resample: torch.Tensor  #: int8 (P,)
    fallback_position: torch.Tensor  #: int64 (F,)
    fallback_pixels: torch.Tensor  #: uint8 (F, S, S, 3)
    labels: torch.Tensor  #: int64 (B,)
    metadata: dict = field(default_factory=dict)  #: as collate_patches batches it

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def stream_count(self) -> int:
        """Number of JPEG streams (distinct stored tiles) in the batch."""
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        """Bytes of the compressed streams and of the fallback pixels."""
        return int(self.data.numel() + self.fallback_pixels.numel())

    def streams(self) -> list[torch.Tensor]:
        """Each stream as a 1-D ``uint8`` tensor (views of :attr:`data`)."""
        bounds = self.offsets.tolist()
        return [self.data[a:b] for a, b in itertools.pairwise(bounds)]

    def stream_name(self, i: int) -> str:
        """``"<slide> level L tile (tx, ty)"`` of stream ``i`` (for error messages)."""
        source, tx, ty = (int(v) for v in self.stream_where[i])
        return f"{self.sources[source]} tile ({tx}, {ty})"

    def pin_memory(self) -> CompressedBatch:
        """A copy whose tensors are in pinned memory (``DataLoader(pin_memory=True)``
        calls this)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                values[name] = value.pin_memory()
        return CompressedBatch(**values)
