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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from exaslide.runtime import distributed_context  # re-exported: its old home


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
    """

    def __init__(self, labels: Sequence[int] | np.ndarray | int, *, balance: bool = False,
                 shuffle: bool = True, seed: int = 0, num_samples: int | None = None,
                 rank: int | None = None, world_size: int | None = None,
                 drop_last: bool = False):
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

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def global_order(self) -> np.ndarray:
        """This epoch's indices over all ranks (before the rank split)."""
        rng = epoch_rng(self.seed, self.epoch)
        if self.balance:
            return self._balanced(rng)
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        reps = -(-self.num_samples // self.n)
        return np.tile(order, reps)[: self.num_samples]

    def _balanced(self, rng: np.random.Generator) -> np.ndarray:
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
        return rng.permutation(np.concatenate(picks))

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        per_rank = len(self)
        if not self.drop_last and len(order) < per_rank * self.world_size:
            order = np.concatenate([order, order[: per_rank * self.world_size - len(order)]])
        mine = order[self.rank :: self.world_size][:per_rank]
        return iter(mine.tolist())
