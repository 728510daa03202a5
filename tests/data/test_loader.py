"""make_loader / to_device: pinned memory for GPUs, worker seeding, channels-last."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from exaslide.data import PatchSampler, ShardDataset, make_loader, to_device


class Randoms(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(1).item(), float(np.random.rand()), random.random(), i


def test_pins_memory_only_for_gpu_targets():
    assert make_loader(Randoms(), workers=0, device="cuda").pin_memory
    assert not make_loader(Randoms(), workers=0, device="cpu").pin_memory
    loader = make_loader(Randoms(), workers=2, prefetch_factor=3)
    assert loader.prefetch_factor == 3 and loader.persistent_workers


def test_worker_randomness_is_seeded_for_torch_numpy_and_random():
    def draws(seed):
        batches = list(make_loader(Randoms(), batch_size=2, workers=2, seed=seed))
        return [torch.cat([b[k] for b in batches]) for k in range(3)]

    one, again, other = draws(1), draws(1), draws(2)
    for k in range(3):
        assert torch.equal(one[k], again[k]) and not torch.equal(one[k], other[k])
    assert len(set(one[1].tolist())) == 8  # the two workers do not repeat each other


def test_shard_datasets_refuse_a_sampler(extracted):
    with pytest.raises(ValueError, match="orders itself"):
        make_loader(ShardDataset(extracted), sampler=PatchSampler(4, rank=0, world_size=1))


def test_to_device_gives_channels_last():
    batch = to_device(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "cpu")
    assert batch.is_contiguous(memory_format=torch.channels_last)


def test_batches_are_channels_last_and_equal_the_items(extracted):
    from exaslide.data import SlidePatchDataset

    dataset = SlidePatchDataset(extracted)
    images, labels, meta = next(iter(make_loader(dataset, batch_size=4, workers=0)))
    assert images.shape == (4, 3, 64, 64)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(images[i], dataset[i][0]) for i in range(4))
    assert labels.tolist() == [dataset[i][1] for i in range(4)]
    assert meta["key"] == [dataset[i][2]["key"] for i in range(4)]


def test_stream_batches_plan_each_workers_reads_in_segments():
    from exaslide.data.loader import StreamBatches

    sampler = PatchSampler(200, seed=0, rank=0, world_size=1, blocks=np.arange(200) // 8,
                           window=40)
    batches = list(StreamBatches(sampler, 10, streams=3, horizon=25))
    expected = sampler.batches(10, streams=3)
    assert [list(b) for b in batches] == [b.tolist() for b in expected]
    for w in range(3):
        mine = batches[w::3]
        plans = [b.plan for b in mine if b.plan is not None]
        assert mine[0].reset and not mine[0].complete and not any(b.reset for b in mine[1:])
        assert np.concatenate(plans).tolist() == np.concatenate(mine).tolist()
        read, known, total = 0, 0, sum(len(b) for b in mine)
        for b in mine:  # the plan always runs at least a horizon ahead of the reads
            known += 0 if b.plan is None else len(b.plan)
            assert known >= min(read + 25, total) and known >= read + len(b)
            read += len(b)
    whole = list(StreamBatches(sampler, 10, streams=2))
    assert whole[0].complete and whole[1].complete and whole[2].plan is None
    plain = list(StreamBatches(sampler, 10, streams=2, plan=False))
    assert all(type(b) is list for b in plain)


def test_make_loader_delivers_the_samplers_batches_in_worker_order(extracted):
    from exaslide.data import SlidePatchDataset

    dataset = SlidePatchDataset(extracted)
    sampler = PatchSampler(len(dataset), seed=2, rank=0, world_size=1,
                           blocks=dataset.blocks(), window=32)
    loader = make_loader(dataset, batch_size=8, workers=2, sampler=sampler)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        got = [meta["index"].tolist() for _, _, meta in loader]
        assert got == [b.tolist() for b in sampler.batches(8, streams=2)]
    assert len(loader) == len(got)
    index_order = make_loader(dataset, batch_size=8, workers=0)
    assert np.concatenate([m["index"].numpy() for _, _, m in index_order]).tolist() == \
        list(range(len(dataset)))


def test_loader_batches_keep_their_shape_through_pickling(extracted):
    import pickle

    from exaslide.data import SlidePatchDataset
    from exaslide.data.loader import collate_patches

    dataset = SlidePatchDataset(extracted)
    batch = collate_patches(dataset.__getitems__([0, 1, 2]))
    images, labels, meta = pickle.loads(pickle.dumps(batch))
    assert isinstance(batch, tuple) and torch.equal(images, batch[0])
    assert meta["key"] == batch[2]["key"] and torch.equal(labels, batch[1])
    items = collate_patches([dataset[0], dataset[1]])  # per-item path: stacked
    assert torch.equal(items[0], batch[0][:2])
