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


def _blocks(n: int, per_block: int = 10) -> np.ndarray:
    return np.arange(n) // per_block


def test_locality_order_is_deterministic_per_epoch_and_keeps_blocks_together():
    blocks = _blocks(1000)
    a = PatchSampler(1000, seed=4, rank=0, world_size=1, blocks=blocks, window=50)
    b = PatchSampler(1000, seed=4, rank=0, world_size=1, blocks=blocks, window=50)
    first = list(a)
    assert first == list(b) and sorted(first) == list(range(1000))
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(1000))
    assert list(PatchSampler(1000, seed=5, rank=0, world_size=1, blocks=blocks,
                             window=50)) != first
    # a window of 50 patches spans at most 50 / 10 + 1 blocks
    order = np.array(first)
    for start in range(0, 1000, 50):
        assert len(np.unique(blocks[order[start : start + 50]])) <= 6
    # but the blocks themselves come in a random order
    firsts = [blocks[order[s]] for s in range(0, 1000, 50)]
    assert firsts != sorted(firsts)


def test_locality_ranks_split_every_patch_once_and_keep_blocks_on_one_rank():
    blocks = _blocks(1000, 25)
    shares = [list(PatchSampler(1000, seed=0, rank=r, world_size=4, blocks=blocks))
              for r in range(4)]
    assert [len(s) for s in shares] == [250] * 4
    assert sorted(k for s in shares for k in s) == list(range(1000))
    split = [b for b in range(40) if sum(b in set(blocks[s]) for s in shares) > 1]
    assert len(split) <= 3  # only blocks cut at the rank boundaries
    padded = [list(PatchSampler(10, rank=r, world_size=3, blocks=_blocks(10, 3)))
              for r in range(3)]
    assert [len(s) for s in padded] == [4, 4, 4]
    assert set().union(*map(set, padded)) == set(range(10))
    dropped = [list(PatchSampler(10, rank=r, world_size=3, blocks=_blocks(10, 3),
                                 drop_last=True)) for r in range(3)]
    assert [len(s) for s in dropped] == [3, 3, 3]
    assert len({k for s in dropped for k in s}) == 9


def test_locality_with_balance_draws_classes_equally_and_deterministically():
    labels = np.array([0] * 900 + [1] * 100)
    blocks = _blocks(1000, 20)
    sampler = PatchSampler(labels, balance=True, seed=2, rank=0, world_size=1,
                           blocks=blocks, window=64)
    drawn = np.array(list(sampler))
    assert len(drawn) == 1000 and (labels[drawn] == 1).sum() == 500
    assert set(drawn[labels[drawn] == 1]) == set(range(900, 1000))
    assert list(sampler) == drawn.tolist()
    full = PatchSampler(labels, balance=True, seed=2, rank=0, world_size=1)
    assert sorted(drawn.tolist()) == sorted(full)  # the same draws, ordered by locality


def test_batches_follow_the_workers_round_robin():
    plain = PatchSampler(103, seed=1, rank=0, world_size=1)
    cut = plain.batches(10, streams=3)
    assert [len(b) for b in cut] == [10] * 10 + [3]
    assert np.concatenate(cut).tolist() == list(plain)
    assert [len(b) for b in plain.batches(10, 3, drop_last=True)] == [10] * 10
    blocks = _blocks(103, 7)
    local = PatchSampler(103, seed=1, rank=0, world_size=1, blocks=blocks, window=20)
    batches = local.batches(10, streams=3)
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    streams = [np.concatenate(batches[w::3]) for w in range(3)]
    share = local.global_order()
    start = 0
    for stream in streams:  # each worker reads one contiguous run of the block order
        assert sorted(stream.tolist()) == sorted(share[start : start + len(stream)].tolist())
        start += len(stream)
    assert [b.tolist() for b in local.batches(10, streams=3)] == [b.tolist() for b in batches]
    one = np.concatenate(local.batches(10, streams=1)).tolist()
    assert one == list(local)


def test_locality_arguments_are_checked():
    with pytest.raises(ValueError, match="one block per patch"):
        PatchSampler(10, blocks=[0, 1])
    with pytest.raises(ValueError, match="shuffle"):
        PatchSampler(10, blocks=np.zeros(10), shuffle=False)
    with pytest.raises(ValueError, match="window"):
        PatchSampler(10, blocks=np.zeros(10), window=0)
    with pytest.raises(ValueError, match="at least 1"):
        PatchSampler(10, rank=0, world_size=1).batches(0)
