"""Deterministic epoch samplers for map-style datasets, class-balanced or not, DDP-aware.

:class:`PatchSampler` draws each epoch's order from ``(seed, epoch)`` alone, so every rank
of a distributed job computes the same global order and takes its own share
(``order[rank::world_size]``), and a resumed run replays the same epochs. Call
:meth:`PatchSampler.set_epoch` before each epoch, as with PyTorch's ``DistributedSampler``.

- ``balance=False``: a permutation of all patches (or the index order with
  ``shuffle=False``); every patch once per epoch. When the count does not divide by the
  world size, the first patches of the order are repeated so every rank gets the same
  number of batches (``drop_last=True`` drops the remainder instead), as
  ``DistributedSampler`` does.
- ``balance=True``: ``num_samples`` draws (default: the number of patches), the same
  number from every class (ignoring classes with no patches), each class's patches
  taken in a fresh permutation and recycled only when a class has fewer patches than its
  quota (so minority classes are oversampled, majority classes undersampled).

Locality-aware order (``blocks=``, e.g. ``dataset.blocks()``): the same draws, but
grouped so that a stored tile's patches are read close together, by one loader worker:

1. the epoch's draws are grouped by block (neighbouring patches of one slide), the blocks
   put in a random order and the patches of each block in a random order;
2. each rank takes a contiguous share of that sequence (a block is read by one rank, so
   one node decodes each tile once), split into one contiguous *stream* per loader worker
   (:meth:`PatchSampler.batches`; ``DataLoader`` hands batch ``k`` to worker
   ``k % workers``, so batch ``k`` is cut from stream ``k % workers``);
3. each stream is shuffled within consecutive windows of ``window`` patches.

A batch therefore mixes the patches of about ``window / patches-per-block`` blocks instead
of the whole epoch: ``docs/data.md`` measures what that costs in label and slide mixing.
The order is a function of ``(seed, epoch)``, the rank and, for streams, of the batch size
and the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from exaslide.runtime import distributed_context  # re-exported: its old home

#: Patches per shuffle window of a locality-aware stream (see the module doc).
DEFAULT_WINDOW = 1024


def epoch_rng(seed: int, epoch: int, *extra: int) -> np.random.Generator:
    """The random generator of one epoch (and optionally one worker or slot)."""
    return np.random.default_rng([int(seed), int(epoch), *map(int, extra)])


class PatchSampler:
    """Indices into a map-style dataset for one rank and one epoch (see module doc).

    Args:
        labels: class code of every patch (``dataset.labels``); or an ``int`` patch count
            when ``balance`` is off.
        balance: draw the same number of patches from every class.
        shuffle: permute (``balance`` always shuffles).
        seed: the seed; with the epoch it decides the order.
        num_samples: draws per epoch over all ranks (default: the number of patches).
        rank, world_size: this process's share (default: from torch.distributed/torchrun).
        drop_last: drop the tail that does not divide by the world size instead of
            repeating patches to fill it.
        blocks: locality block of every patch (``SlidePatchDataset.blocks()``): turns on
            the locality-aware order (see the module doc); ``None``: a full shuffle.
        window: patches per shuffle window of the locality-aware order.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray | int, *, balance: bool = False,
                 shuffle: bool = True, seed: int = 0, num_samples: int | None = None,
                 rank: int | None = None, world_size: int | None = None,
                 drop_last: bool = False, blocks: Sequence[int] | np.ndarray | None = None,
                 window: int = DEFAULT_WINDOW):
        if isinstance(labels, int):
            if balance:
                raise ValueError("balance=True needs the labels, not a count")
            self.labels = None
            self.n = labels
        else:
            self.labels = np.asarray(labels)
            self.n = len(self.labels)
        if self.n == 0:
            raise ValueError("cannot sample from an empty dataset")
        self.balance, self.shuffle, self.seed = balance, shuffle, seed
        self.num_samples = self.n if num_samples is None else int(num_samples)
        self.rank, self.world_size = distributed_context(rank, world_size)
        self.drop_last = drop_last
        self.epoch = 0
        self.blocks = None if blocks is None else np.asarray(blocks).reshape(-1)
        if self.blocks is not None:
            if len(self.blocks) != self.n:
                raise ValueError(f"blocks has {len(self.blocks)} entries for {self.n} "
                                 "patches: give one block per patch (dataset.blocks())")
            if not shuffle:
                raise ValueError("blocks= orders an epoch by locality, which is a shuffle: "
                                 "drop blocks= or shuffle=False")
        if window < 1:
            raise ValueError(f"window must be at least 1 patch, got {window}")
        self.window = int(window)

    @property
    def locality(self) -> bool:
        """True when the order is locality-aware (``blocks`` given)."""
        return self.blocks is not None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def global_order(self) -> np.ndarray:
        """This epoch's indices over all ranks (before the rank split; for the
        locality-aware order, before the per-stream window shuffle)."""
        rng = epoch_rng(self.seed, self.epoch)
        if self.blocks is not None:
            picks = self._balanced(rng) if self.balance else self._all()
            return self._by_block(picks, rng)
        if self.balance:
            return rng.permutation(self._balanced(rng))
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        reps = -(-self.num_samples // self.n)
        return np.tile(order, reps)[: self.num_samples]

    def _all(self) -> np.ndarray:
        reps = -(-self.num_samples // self.n)
        return np.tile(np.arange(self.n), reps)[: self.num_samples]

    def _balanced(self, rng: np.random.Generator) -> np.ndarray:
        """The balanced draws of an epoch, grouped by class (not yet shuffled)."""
        classes = [c for c in np.unique(self.labels) if c >= 0]
        if not classes:
            raise ValueError("balance=True but no patch has a label")
        quotas = np.full(len(classes), self.num_samples // len(classes))
        quotas[: self.num_samples - quotas.sum()] += 1
        picks = []
        for cls, quota in zip(classes, quotas, strict=True):
            members = np.flatnonzero(self.labels == cls)
            rounds = -(-int(quota) // len(members))
            drawn = np.concatenate([rng.permutation(members) for _ in range(rounds)])
            picks.append(drawn[:quota])
        return np.concatenate(picks)

    def _by_block(self, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``picks`` grouped by block: blocks in a random order, a random order inside."""
        _, block = np.unique(self.blocks[picks], return_inverse=True)
        block_rank = rng.permutation(int(block.max()) + 1)[block]
        return picks[np.lexsort((rng.random(len(picks)), block_rank))]

    def _share(self) -> np.ndarray:
        """This rank's indices of the epoch, in global order."""
        order = self.global_order()
        per_rank = len(self)
        if not self.drop_last and len(order) < per_rank * self.world_size:
            order = np.concatenate([order, order[: per_rank * self.world_size - len(order)]])
        if self.blocks is not None:  # contiguous: a block stays on one rank
            return order[self.rank * per_rank : (self.rank + 1) * per_rank]
        return order[self.rank :: self.world_size][:per_rank]

    def _window_shuffle(self, stream: np.ndarray, index: int, count: int) -> np.ndarray:
        """Shuffle ``stream`` within consecutive windows (locality-aware order only)."""
        rng = epoch_rng(self.seed, self.epoch, self.rank, index, count)
        out = stream.copy()
        for start in range(0, len(out), self.window):
            part = out[start : start + self.window]
            part[:] = part[rng.permutation(len(part))]
        return out

    def batches(self, batch_size: int, streams: int = 1,
                drop_last: bool = False) -> list[np.ndarray]:
        """This rank's epoch as batches, in the order a ``DataLoader`` with ``streams``
        workers delivers them (batch ``k`` is loaded by worker ``k % streams``).

        Without ``blocks``, the batches are consecutive slices of ``iter(self)``, as
        PyTorch's ``BatchSampler`` cuts them. With ``blocks``, the rank's share is split
        into one contiguous stream per worker (the sizes of the batches that worker will
        load), each window-shuffled; the batch sizes are those of ``BatchSampler``."""
        if batch_size < 1 or streams < 1:
            raise ValueError(f"batch_size and streams must be at least 1, got {batch_size} "
                             f"and {streams}")
        share = self._share()
        sizes = _batch_sizes(len(share), batch_size, drop_last)
        if self.blocks is None:
            ends = np.cumsum(sizes)
            return [share[end - size : end] for size, end in zip(sizes, ends, strict=True)]
        streams = min(streams, max(1, len(sizes)))
        out: list[np.ndarray] = [np.empty(0, np.int64)] * len(sizes)
        start = 0
        for w in range(streams):
            mine = sizes[w::streams]
            stream = self._window_shuffle(share[start : start + int(sum(mine))], w, streams)
            start += int(sum(mine))
            ends = np.cumsum(mine)
            for k, size, end in zip(range(w, len(sizes), streams), mine, ends, strict=True):
                out[k] = stream[end - size : end]
        return out

    def __iter__(self) -> Iterator[int]:
        share = self._share()
        if self.blocks is not None:
            share = self._window_shuffle(share, 0, 1)
        return iter(share.tolist())


def _batch_sizes(n: int, batch_size: int, drop_last: bool) -> list[int]:
    """The sizes of the batches ``BatchSampler`` cuts from ``n`` indices."""
    sizes = [batch_size] * (n // batch_size)
    if n % batch_size and not drop_last:
        sizes.append(n % batch_size)
    return sizes
