"""SlidePatchDataset: pixels equal the shards, lazy fork-safe handles, clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from exaslide.data import DatasetError, PatchSampler, SlidePatchDataset, make_loader
from exaslide.data.shard_dataset import iter_samples


def _shard_pixels(out):
    pixels = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        for data, _, meta in iter_samples(str(shard)):
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            pixels[meta["key"]] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return pixels


def test_items_equal_the_materialised_shards(extracted):
    dataset = SlidePatchDataset(extracted)
    assert dataset.classes == ["normal", "tumour"]
    shards = _shard_pixels(extracted)
    assert len(dataset) == len(shards) > 50
    for i in range(0, len(dataset), 7):
        image, label, meta = dataset[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
        assert label in (0, 1)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), shards[meta["key"]])


def test_centre_crop_size_float_dtype_and_filter(extracted):
    full = SlidePatchDataset(extracted)
    cropped = SlidePatchDataset(extracted, size=48, dtype="float")
    image, _, _ = full[3]
    small, _, _ = cropped[3]
    assert small.dtype == torch.float32 and small.shape == (3, 48, 48)
    assert float(small.max()) <= 1.0
    np.testing.assert_allclose(small.numpy() * 255, image[:, 8:56, 8:56].numpy(),
                               atol=1e-3)
    tumour = SlidePatchDataset(extracted, filter=pc.field("label") == "tumour")
    assert 0 < len(tumour) < len(full) and set(tumour.labels.tolist()) == {1}


def test_tile_cache_serves_repeated_reads(extracted):
    dataset = SlidePatchDataset(extracted)
    first = [dataset[i][0] for i in range(20)]
    misses = dataset.tile_cache().misses
    again = [dataset[i][0] for i in range(20)]
    assert dataset.tile_cache().misses == misses and dataset.tile_cache().hits > 0
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert dataset.pool.stats()["open"] >= 1


def test_pickles_without_open_handles_and_loads_in_workers(extracted):
    dataset = SlidePatchDataset(extracted)
    dataset[0]  # opens a slide in this process
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(clone.pool) == 0
    sampler = PatchSampler(dataset.labels, seed=1, rank=0, world_size=1)
    loader = make_loader(dataset, batch_size=16, workers=2, sampler=sampler)
    keys = []
    for images, labels, meta in loader:
        assert images.shape[1:] == (3, 64, 64) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64
        keys += meta["key"]
    assert sorted(keys) == sorted(dataset.patches.keys.to_pylist())


def test_missing_slide_paths_are_a_clear_error(extracted, tmp_path):
    index = extracted / "index"
    with pytest.raises(DatasetError, match="no slide path for synth_000"):
        SlidePatchDataset(index / "synth_000.parquet")
    with pytest.raises(DatasetError, match="no patch index"):
        SlidePatchDataset(tmp_path)
    with pytest.raises(DatasetError, match="selects no patches"):
        SlidePatchDataset(extracted, filter=pc.field("label") == "nothing")
    with pytest.raises(DatasetError, match="not in classes"):
        SlidePatchDataset(extracted, classes=["tumour"])


def test_a_slide_that_vanished_fails_with_its_name(extracted, tmp_path):
    dataset = SlidePatchDataset(extracted, slides={"synth_000": str(tmp_path / "gone.tif"),
                                                   "synth_001": str(tmp_path / "gone.tif")})
    with pytest.raises(Exception, match=r"gone\.tif"):
        dataset[0]


def test_slides_read_over_http_give_the_same_items(extracted, tmp_path, monkeypatch):
    from exaslide.data.sources import slide_paths_from_status
    from http_server import RangeServer

    monkeypatch.setenv("EXASLIDE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "www").mkdir()
    server = RangeServer(tmp_path / "www").start()
    try:
        local = slide_paths_from_status(extracted, ["synth_000", "synth_001"])
        urls = {k: server.publish(v, f"{k}.tif") for k, v in local.items()}
        remote = SlidePatchDataset(extracted, slides=urls)
        here = SlidePatchDataset(extracted)
        for i in range(0, len(here), 25):
            assert torch.equal(remote[i][0], here[i][0])
        size = sum(Path(v).stat().st_size for v in local.values())
        assert 0 < server.sent() <= size  # each byte fetched at most once (disk cache)
    finally:
        server.stop()
