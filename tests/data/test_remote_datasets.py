"""The data readers on an extraction folder in an object store (a moto S3 server) give
exactly what they give on the same folder on a local disk."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from exaslide.data import ShardDataset, SlidePatchDataset, load_patches, make_loader
from exaslide.data.sources import read_index_table, slide_paths_from_status
from exaslide.errors import StorageError
from exaslide.patches import open_index


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXASLIDE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def remote(s3, extracted):
    """``s3://<bucket>/run/``: a copy of the ``extracted`` folder."""
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.put(str(extracted), f"{s3[len('s3://'):]}/run", recursive=True)
    return f"{s3}/run/"


def _keys(dataset, workers=0):
    loader = make_loader(dataset, batch_size=16, workers=workers)
    return [k for _, _, meta in loader for k in meta["key"]]


def _samples(dataset):
    return [(image, label, meta["key"]) for image, label, meta in dataset]


def _one_line(exc: pytest.ExceptionInfo, url: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and url.rstrip("/") in message, message
    return message


def test_open_index_lists_the_remote_folder_and_pushes_filters_down(remote, extracted):
    local, far = open_index(extracted), open_index(remote)
    assert len(far.files) == len(local.files) == 2
    assert far.to_table().equals(local.to_table())
    keep = (pc.field("label") == "tumour") & (pc.field("x") > 512)
    wanted = local.to_table(filter=keep)
    assert 0 < wanted.num_rows < local.count_rows()
    assert far.to_table(filter=keep).equals(wanted)
    # the index/ folder itself, and the table reader with a filter
    assert open_index(remote + "index").to_table().equals(local.to_table())
    assert read_index_table(remote, keep).equals(wanted)


def test_shard_dataset_on_the_remote_folder_equals_the_local_one(remote, extracted):
    local = ShardDataset(extracted, seed=3, shuffle_buffer=20, rank=0, world_size=1)
    far = ShardDataset(remote, seed=3, shuffle_buffer=20, rank=0, world_size=1)
    assert [s.count for s in far.shards] == [s.count for s in local.shards]
    assert all(s.url.startswith(remote) for s in far.shards)
    assert far.classes == local.classes
    got, expected = _samples(far), _samples(local)
    assert [(label, key) for _, label, key in got] == \
        [(label, key) for _, label, key in expected]
    assert all(torch.equal(a, b) for (a, _, _), (b, _, _) in zip(got, expected, strict=True))


def test_remote_shard_dataset_filter_and_two_loader_workers(remote, extracted):
    slide = open_index(extracted).to_table(columns=["slide_id"]).column(0)[0].as_py()
    only = pc.field("slide_id") == slide
    local = ShardDataset(extracted, seed=2, filter=only, rank=0, world_size=1)
    far = ShardDataset(remote, seed=2, filter=only, rank=0, world_size=1)
    assert len(far) == len(local) < ShardDataset(extracted).num_samples
    keys = _keys(far, workers=2)
    assert keys == _keys(local, workers=2)
    assert len(keys) == len(set(keys)) == len(local)


def test_status_and_slide_dataset_on_the_remote_folder(remote, extracted):
    table = load_patches(extracted)
    ids = table.slide_ids
    assert slide_paths_from_status(remote, ids) == slide_paths_from_status(extracted, ids)
    far_table = load_patches(remote, filter=pc.field("label") == "tumour")
    assert far_table.paths == table.paths and set(far_table.slide_ids) <= set(ids)
    local = SlidePatchDataset(extracted, filter=pc.field("label") == "tumour")
    far = SlidePatchDataset(remote, filter=pc.field("label") == "tumour")
    assert len(far) == len(local) > 0
    np.testing.assert_array_equal(far.labels, local.labels)
    for i in (0, len(local) // 2, len(local) - 1):
        a, b = far[i], local[i]
        assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


def test_status_files_holding_urls_give_remote_slides(remote, extracted, s3):
    import fsspec

    fs = fsspec.filesystem("s3")
    local = load_patches(extracted)
    slide_id, path = local.slide_ids[0], local.paths[0]
    slide_url = f"{s3}/slides/{slide_id}.tif"
    fs.put(path, slide_url[len("s3://"):])
    status = f"{remote[len('s3://'):]}status/{slide_id}.json"
    record = json.loads(fs.cat(status))
    record["inputs"]["slide"]["path"] = slide_url
    fs.pipe(status, json.dumps(record).encode())
    assert slide_paths_from_status(remote, [slide_id]) == {slide_id: slide_url}
    only = pc.field("slide_id") == slide_id
    far, near = SlidePatchDataset(remote, filter=only), SlidePatchDataset(extracted, filter=only)
    assert far.patches.paths == [slide_url] and len(far) == len(near)
    rows = [0, len(near) // 3, len(near) - 1]
    a, b = far.__getitems__(rows), near.__getitems__(rows)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("where", ["missing-folder", "missing-bucket"])
def test_a_missing_folder_or_bucket_is_one_line_naming_the_url(s3, where):
    url = f"{s3}/nothing-here/" if where == "missing-folder" else \
        "s3://exaslide-no-such-bucket-0/run/"
    for make in (open_index, read_index_table, ShardDataset, load_patches):
        with pytest.raises(StorageError) as exc:
            make(url)
        _one_line(exc, url)


def _put(local, url: str) -> str:
    import fsspec

    fsspec.filesystem("s3").put(str(local), url[len("s3://"):], recursive=True)
    return url


def test_model_files_load_from_a_url_through_the_cache(s3, tmp_path, caplog):
    from exaslide.errors import ModelError
    from exaslide.models import create_model, load_model, save_model

    model = create_model("small-cnn", 2)
    path = save_model(tmp_path / "run" / "model.pt", model, {"classes": ["a", "b"]})
    url = _put(tmp_path / "run", f"{s3}/run") + "/model.pt"
    loaded, meta = load_model(url)
    assert meta["classes"] == ["a", "b"]
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert (tmp_path / "cache").is_dir()  # the whole-file copy is in exaslide's cache
    # without its sidecar it loads, with a warning; a corrupt copy is refused by the
    # sidecar; a missing file is one line
    import fsspec

    fsspec.filesystem("s3").mv(url[len("s3://"):] + ".sha256", url[len("s3://"):] + ".x")
    with caplog.at_level("WARNING"):
        assert load_model(url)[1]["classes"] == ["a", "b"]
    assert "no checksum recorded" in caplog.text
    fsspec.filesystem("s3").mv(url[len("s3://"):] + ".x", url[len("s3://"):] + ".sha256")

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    fsspec.filesystem("s3").pipe(url[len("s3://"):], bytes(data))
    with pytest.raises(ModelError, match="corrupt file"):
        load_model(url)
    with pytest.raises(StorageError) as exc:
        load_model(f"{s3}/run/nothing.pt")
    _one_line(exc, f"{s3}/run/nothing.pt")


def test_feature_store_from_a_url_reads_the_same_bags(s3, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "mil"))
    from mil_fixtures import make_cohort

    from exaslide.mil.bags import FeatureStore
    from exaslide.mil.errors import MILError

    store, _ = make_cohort(tmp_path, n_slides=4)
    url = _put(store, f"{s3}/features")
    local, far = FeatureStore(store), FeatureStore(url + "/")
    assert far.slide_ids == local.slide_ids and far.dim == local.dim
    assert far.info == local.info and far.folder == url
    for slide_id in local.slide_ids:
        assert far.rows(slide_id) == local.rows(slide_id)
        np.testing.assert_array_equal(far.features(slide_id), local.features(slide_id))
        assert far.patches(slide_id).equals(local.patches(slide_id))
    assert torch.equal(far.bag(local.slide_ids[0], np.array([3, 1])),
                       local.bag(local.slide_ids[0], np.array([3, 1])))
    assert far._unchecked == []  # every file had its sidecar, and matched it
    # heatmaps find the footprint in the index of an extraction given by URL
    from exaslide.mil.heatmaps import _index_footprint

    far.info["source"] = _put(tmp_path / "extract", f"{s3}/extract") + "/index"
    assert _index_footprint(far, far.slide_ids[0]) == _index_footprint(local, far.slide_ids[0])
    assert _index_footprint(far, far.slide_ids[0]) is not None
    with pytest.raises(MILError, match="not an embedding store"):
        FeatureStore(f"{s3}/nothing")
    with pytest.raises(StorageError) as exc:
        FeatureStore("s3://exaslide-no-such-bucket-0/features")
    _one_line(exc, "s3://exaslide-no-such-bucket-0/features")
