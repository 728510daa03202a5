"""ShardDataset: exactly once per epoch over ranks and workers, deterministic, errors."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch

from exaslide.data import DatasetError, ShardDataset, make_loader
from exaslide.data.shard_dataset import Shard, plan_epoch

DDP_SCRIPT = Path(__file__).with_name("ddp_shards.py")


def _keys(dataset, workers=0):
    loader = make_loader(dataset, batch_size=8, workers=workers)
    return [k for _, _, meta in loader for k in meta["key"]]


def test_one_epoch_yields_every_sample_once_in_a_seeded_order(extracted):
    dataset = ShardDataset(extracted, seed=1, shuffle_buffer=20, rank=0, world_size=1)
    keys = _keys(dataset)
    assert len(keys) == len(set(keys)) == dataset.num_samples == len(dataset)
    assert keys == _keys(ShardDataset(extracted, seed=1, shuffle_buffer=20, rank=0,
                                      world_size=1))
    dataset.set_epoch(1)
    other = _keys(dataset)
    assert other != keys and sorted(other) == sorted(keys)


def test_items_are_tensors_labels_and_metadata(extracted):
    image, label, meta = next(iter(ShardDataset(extracted, dtype="float", rank=0,
                                                world_size=1)))
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert label in (0, 1) and meta["slide_id"].startswith("synth_")


def test_two_ranks_times_two_workers_cover_each_sample_once(extracted):
    seen = []
    for rank in range(2):
        dataset = ShardDataset(extracted, seed=4, rank=rank, world_size=2, even=False)
        keys = _keys(dataset, workers=2)
        assert len(keys) == len(dataset)
        seen += keys
    assert len(seen) == len(set(seen)) == ShardDataset(extracted).num_samples


def test_even_ranks_get_the_same_number_of_batches(extracted):
    total = ShardDataset(extracted).num_samples
    world = 3 if total % 3 else 4  # a world size that does not divide the samples
    batches, seen = [], []
    for rank in range(world):
        dataset = ShardDataset(extracted, seed=4, rank=rank, world_size=world)
        assert dataset.even and len(dataset) == total // world
        loader = make_loader(dataset, batch_size=8, workers=2)
        batches.append(sum(1 for _ in loader))
        seen += [k for _, _, meta in loader for k in meta["key"]]
    assert len(set(batches)) == 1
    assert len(seen) == len(set(seen)) == total - total % world


def _plan_sizes(shards, world, workers, even):
    plans = [plan_epoch(shards, rank=r, world_size=world, worker=w, workers=workers, seed=0,
                        epoch=0, shuffle=False, even=even)
             for r in range(world) for w in range(workers)]
    sizes = [sum(s.stop - s.start for s in plan) for plan in plans]
    covered = collections.Counter((s.shard.url, i) for plan in plans for s in plan
                                  for i in range(s.start, s.stop))
    return sizes, covered


def test_plan_splits_contiguously_exactly_once_or_evenly():
    shards = [Shard(f"s{i}", n) for i, n in enumerate([5, 7, 1, 9])]  # 22 samples
    sizes, covered = _plan_sizes(shards, 2, 2, even=False)
    assert sizes == [5, 6, 5, 6] and len(covered) == 22 and set(covered.values()) == {1}
    sizes, covered = _plan_sizes(shards, 3, 2, even=True)
    assert sizes == [3, 4, 3, 4, 3, 4] and len(covered) == 21
    assert set(covered.values()) == {1}


def test_filters_must_select_whole_shards(extracted):
    slide = ShardDataset(extracted, filter=pc.field("slide_id") == "synth_000", rank=0,
                         world_size=1)
    assert {meta["slide_id"] for _, _, meta in slide} == {"synth_000"}
    with pytest.raises(DatasetError, match="selects part of shard"):
        ShardDataset(extracted, filter=pc.field("label") == "tumour")


def test_list_of_shards_and_balance(extracted):
    paths = sorted(str(p) for p in (extracted / "shards").glob("*.tar"))
    by_list = ShardDataset(paths, rank=0, world_size=1)
    assert by_list.num_samples == ShardDataset(extracted).num_samples
    balanced = ShardDataset(extracted, balance=True, seed=0, rank=0, world_size=1)
    with pytest.raises(DatasetError, match="needs even=False"):
        ShardDataset(extracted, balance=True, rank=0, world_size=2)
    labels = collections.Counter(int(label) for _, label, _ in balanced)
    assert 0.6 < labels[0] / labels[1] < 1.6
    with pytest.raises(DatasetError, match="needs an extraction folder"):
        ShardDataset(paths, balance=True)


def test_truncated_and_incomplete_shards_are_clear_errors(extracted, tmp_path):
    shard = sorted((extracted / "shards").glob("*.tar"))[0]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2 + 100])
    with pytest.raises(DatasetError, match=r"cut\.tar"):
        ShardDataset([str(cut)])
    empty = tmp_path / "none"
    (empty / "index").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no patch index"):
        ShardDataset(empty)


def test_ddp_two_ranks_two_workers_with_torchrun(extracted, tmp_path):
    """Real torchrun, gloo: every sample exactly once per epoch over two epochs
    (``even=False``), then an ``even`` epoch with an all-reduce after every batch, as DDP
    training does (unequal batch counts would hang it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(DDP_SCRIPT), str(extracted), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    total = ShardDataset(extracted).num_samples
    for epoch in range(2):
        ranks = [json.loads((tmp_path / f"epoch{epoch}-rank{r}.json").read_text())
                 for r in range(2)]
        keys = ranks[0]["keys"] + ranks[1]["keys"]
        assert len(keys) == len(set(keys)) == total
        assert ranks[0]["gathered_total"] == total  # all_reduce over gloo agrees
        assert {w for r in ranks for w in r["workers"]} == {0, 1}
    even = [json.loads((tmp_path / f"even-rank{r}.json").read_text()) for r in range(2)]
    assert even[0]["batches"] == even[1]["batches"] > 0
    assert len(set(even[0]["keys"] + even[1]["keys"])) == total - total % 2
    first = json.loads((tmp_path / "epoch0-rank0.json").read_text())["keys"]
    second = json.loads((tmp_path / "epoch1-rank0.json").read_text())["keys"]
    assert first != second


def test_remote_shards_stream_over_http_and_hit_the_disk_cache(extracted, tmp_path,
                                                               monkeypatch):
    from http_server import RangeServer

    monkeypatch.setenv("EXASLIDE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "www").mkdir()
    server = RangeServer(tmp_path / "www").start()
    try:
        urls = [server.publish(p) for p in sorted((extracted / "shards").glob("*.tar"))]
        local = ShardDataset(extracted, shuffle=False, rank=0, world_size=1)
        remote = ShardDataset(urls, shuffle=False, rank=0, world_size=1)
        assert remote.num_samples == local.num_samples
        pairs = zip(_iter_items(local), _iter_items(remote), strict=True)
        assert all(a[2]["key"] == b[2]["key"] and torch.equal(a[0], b[0]) for a, b in pairs)
        sent = server.sent()
        assert sent >= sum(p.stat().st_size for p in (extracted / "shards").glob("*.tar"))
        assert len(list(ShardDataset(urls, rank=0, world_size=1))) == local.num_samples
        assert server.sent() == sent  # the second epoch reads the disk cache only
    finally:
        server.stop()


def _iter_items(dataset):
    return sorted(dataset, key=lambda item: item[2]["key"])
