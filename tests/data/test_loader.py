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
