"""PatchSampler: deterministic per (seed, epoch), class balance, disjoint rank shares."""

from __future__ import annotations

import numpy as np
import pytest

from exaslide.data import PatchSampler, distributed_context


def test_same_seed_and_epoch_same_order_other_epoch_other_order():
    a, b = PatchSampler(100, seed=3, rank=0, world_size=1), PatchSampler(100, seed=3,
                                                                           rank=0, world_size=1)
    assert list(a) == list(b) and sorted(a) == list(range(100))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(100))
    assert list(PatchSampler(100, shuffle=False, rank=0, world_size=1)) == list(range(100))


def test_ranks_split_every_patch_once_and_pad_evenly():
    shares = [list(PatchSampler(10, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4]
    assert set().union(*map(set, shares)) == set(range(10))
    exact = [list(PatchSampler(12, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert sorted(k for share in exact for k in share) == list(range(12))
    dropped = [list(PatchSampler(10, rank=r, world_size=3, drop_last=True)) for r in range(3)]
    assert [len(s) for s in dropped] == [3, 3, 3]
    assert len({k for share in dropped for k in share}) == 9


def test_balanced_sampling_draws_classes_equally():
    labels = np.array([0] * 900 + [1] * 100)
    sampler = PatchSampler(labels, balance=True, seed=2, rank=0, world_size=1)
    drawn = labels[list(sampler)]
    assert len(drawn) == 1000 and abs((drawn == 1).mean() - 0.5) < 1e-9
    minority = np.array(list(sampler))[drawn == 1]
    assert set(minority) == set(range(900, 1000))  # every minority patch is used
    majority = np.array(list(sampler))[drawn == 0]
    assert len(set(majority)) == 500  # majority patches are not repeated
    unlabeled = np.array([-1] * 10 + [0] * 10 + [1] * 20)
    picked = unlabeled[list(PatchSampler(unlabeled, balance=True, rank=0, world_size=1))]
    assert (picked >= 0).all() and (picked == 0).sum() == (picked == 1).sum()


def test_bad_arguments_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="needs the labels"):
        PatchSampler(10, balance=True)
    with pytest.raises(ValueError, match="empty"):
        PatchSampler(0)
    with pytest.raises(ValueError, match="world size"):
        PatchSampler(10, rank=2, world_size=2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed_context() == (1, 4)
