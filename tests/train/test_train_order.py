"""The training order and the loaders around it: ``shuffle: blocks`` gives the sampler the
dataset's locality blocks and its order reaches the loader workers; validation batches
are assembled in place; loader processes end with a run that fails."""

from __future__ import annotations

import json
import multiprocessing
import shutil

import numpy as np
import pytest
import torch

from exaslide.errors import SlideOpenError
from exaslide.train import TrainConfig, train


def _config(extracted, out, **extra) -> TrainConfig:
    values = {"data": str(extracted), "out": str(out), "model": "small-cnn",
              "patch_size": None, "epochs": 1, "batch_size": 16, "workers": 0,
              "max_steps": 2, "seed": 3, "patience": None, "threads": 1,
              "tensorboard": False, "balance": False}
    values.update(extra)
    return TrainConfig(**values)


def _blocks_per_batch(batches, blocks) -> float:
    return float(np.mean([len(np.unique(blocks[b])) for b in batches]))


def test_shuffle_blocks_gives_the_sampler_blocks_and_its_streams_reach_the_workers(
        extracted, tmp_path):
    from exaslide.train.distributed import setup
    from exaslide.train.loop import _datasets, _loaders

    context = setup("cpu")
    config = _config(extracted, tmp_path / "run", shuffle="blocks", window=32, workers=2)
    train_set, sampler, _ = _datasets(config, context)
    assert train_set.pool.stats()["open"] == 0  # blocks() opened them: closed before forks
    blocks = train_set.blocks()
    assert sampler.locality and sampler.window == 32
    assert np.array_equal(sampler.blocks, blocks)
    _, full, _ = _datasets(_config(extracted, tmp_path / "full"), context)
    assert not full.locality
    n = len(train_set)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        full.set_epoch(epoch)
        ours = sampler.batches(16, 2)
        assert np.array_equal(np.sort(np.concatenate(ours)), np.arange(n))  # each once
        theirs = full.batches(16, 2)
        assert not np.array_equal(np.concatenate(ours), np.concatenate(theirs))
        # a batch holds the patches of a few neighbouring tiles, not of the whole slide
        assert _blocks_per_batch(ours, blocks) < 0.5 * _blocks_per_batch(theirs, blocks)
    sampler.set_epoch(1)
    loader, _ = _loaders(config, context, train_set, sampler, None)
    read = [meta["index"].numpy() for _, _, meta in loader]
    expected = sampler.batches(16, 2)
    assert len(read) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(read, expected, strict=True))
    del loader

    result = train(config, progress=False)  # 2 workers after blocks(): runs
    assert len(result.history) == 1 and result.history[0]["train_loss"] > 0


def test_validation_batches_are_assembled_in_place_with_the_same_pixels(extracted):
    from exaslide.data import SlidePatchDataset, make_loader
    from exaslide.data.loader import collate_patches
    from exaslide.data.patch_batch import LoaderBatch, PatchBatch
    from exaslide.train.loop import _Subset

    full = SlidePatchDataset(extracted)
    subset = _Subset(full, range(1, len(full), 3))  # a rank's share: every third patch
    picks = [4, 0, 9, 5]
    batch = subset.__getitems__(picks)
    assert isinstance(batch, PatchBatch)
    items = [subset[i] for i in picks]
    for (image, label, meta), (want, want_label, want_meta) in zip(batch, items,
                                                                   strict=True):
        assert torch.equal(image, want) and label == want_label and meta == want_meta
    assert [m["index"] for _, _, m in batch] == [subset.indices[i] for i in picks]
    images, labels, meta = collate_patches(batch)
    want_images, want_labels, want_meta = collate_patches(items)
    assert torch.equal(images, want_images) and torch.equal(labels, want_labels)
    assert meta["key"] == want_meta["key"] and torch.equal(meta["x"], want_meta["x"])

    loader = make_loader(subset, batch_size=8, workers=1)  # as the validation loader
    got = list(loader)
    assert all(isinstance(b, LoaderBatch) for b in got)  # the dataset made them
    assert torch.equal(torch.cat([b[0] for b in got]),
                       torch.stack([subset[i][0] for i in range(len(subset))]))


def test_a_failing_run_leaves_no_loader_process(extracted, tmp_path):
    data = tmp_path / "out"  # the index and status files, whose slides are gone
    shutil.copytree(extracted, data, ignore=shutil.ignore_patterns("shards"))
    for path in (data / "status").glob("*.json"):
        status = json.loads(path.read_text())
        status["inputs"]["slide"]["path"] = str(tmp_path / "gone.tif")
        path.write_text(json.dumps(status))
    before = set(multiprocessing.active_children())
    with pytest.raises(SlideOpenError, match=r"gone\.tif") as info:  # kept, and its frames
        train(_config(extracted, tmp_path / "run", data=str(data), workers=1),
              progress=False)
    assert "\n" not in str(info.value) and "DataLoader worker" not in str(info.value)
    assert set(multiprocessing.active_children()) - before == set()
