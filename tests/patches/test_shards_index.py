"""Tar shards (WebDataset layout, deterministic, atomic) and the Parquet index."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

from exaslide.patches import balanced_sample, open_index
from exaslide.patches.index import make_table, write_slide_index
from exaslide.patches.shards import ShardWriter


def _patch(seed):
    """A smooth colour gradient plus a little noise (JPEG-friendly, like tissue)."""
    ramp = np.linspace(40, 220, 32)
    base = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1, None]), 2)
    noise = np.random.default_rng(seed).normal(0, 4, (32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_shards_layout_limits_and_determinism(tmp_path, fmt):
    digests = []
    for run in ("a", "b"):
        writer = ShardWriter(tmp_path / run, "s1-0000", fmt, quality=95, max_samples=3)
        names = [writer.add(f"s1_x{i}_y0", _patch(i), {"x": i, "label": "normal"})
                 for i in range(7)]
        assert writer.close() == ["s1-0000-00000.tar", "s1-0000-00001.tar", "s1-0000-00002.tar"]
        assert names[:4] == ["s1-0000-00000.tar"] * 3 + ["s1-0000-00001.tar"]
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted((tmp_path / run).iterdir())])
        assert not list((tmp_path / run).glob(".*"))  # no temporaries left
    assert digests[0] == digests[1]
    ext = "png" if fmt == "png" else "jpg"
    with tarfile.open(tmp_path / "a" / "s1-0000-00000.tar") as tar:
        names = tar.getnames()
        assert names[:2] == [f"s1_x0_y0.{ext}", "s1_x0_y0.json"]
        image = np.asarray(Image.open(io.BytesIO(tar.extractfile(names[0]).read())))
        meta = json.loads(tar.extractfile(names[1]).read())
    assert meta == {"x": 0, "label": "normal"}
    if fmt == "png":
        np.testing.assert_array_equal(image, _patch(0))  # lossless
    else:
        assert np.abs(image.astype(int) - _patch(0)).mean() < 6


def test_aborted_shard_leaves_nothing(tmp_path):
    writer = ShardWriter(tmp_path, "s-0000")
    writer.add("k", _patch(0), {})
    writer.abort()
    assert not list(tmp_path.iterdir())


def _fake_slide_index(tmp_path, slide_id, n, centre):
    rng = np.random.default_rng(abs(hash(slide_id)) % 1000)
    labels = np.where(rng.random(n) < 0.2, "tumour", "normal")
    table = make_table({"x": np.arange(n) * 256, "y": np.zeros(n, np.int64),
                        "key": [f"{slide_id}_{i}" for i in range(n)], "slide_id": slide_id,
                        "level": 0, "mpp": None, "size": 256, "footprint": 256.0,
                        "label": labels, "tissue_fraction": rng.random(n),
                        "tumour_fraction": rng.random(n), "split": "train",
                        "centre": centre, "shard": None})
    return write_slide_index(table, tmp_path / "index" / f"{slide_id}.parquet")


def test_index_dataset_filters_and_balances(tmp_path):
    for i, n in enumerate((50_000, 20_000, 30_000)):
        _fake_slide_index(tmp_path, f"s{i}", n, centre=str(i % 2))
    dataset = open_index(tmp_path)
    assert dataset.count_rows() == 100_000
    tumour = dataset.to_table(columns=["slide_id", "x"], filter=ds.field("label") == "tumour")
    assert tumour.num_columns == 2 and 15_000 < tumour.num_rows < 25_000
    one = dataset.count_rows(filter=ds.field("slide_id") == "s1")
    assert one == 20_000
    balanced = balanced_sample(dataset, by=("label", "centre"), per_group=1000, seed=3)
    counts = {(r["label"], r["centre"]) for r in balanced.select(["label", "centre"]).to_pylist()}
    assert balanced.num_rows == 4000 and len(counts) == 4
    exact = balanced_sample(dataset, by=("label",))
    values = exact.column("label").to_pylist()
    assert values.count("tumour") == values.count("normal")


def test_long_keys_and_hidden_files_are_ignored_by_the_index(tmp_path):
    key = "s" * 150 + "_x0_y0"
    writer = ShardWriter(tmp_path / "shards", "long-0000")
    writer.add(key, _patch(1), {"x": 0})
    writer.close()
    with tarfile.open(tmp_path / "shards" / "long-0000-00000.tar") as tar:
        assert tar.getnames() == [f"{key}.png", f"{key}.json"]
    _fake_slide_index(tmp_path, "s0", 10, centre=None)
    (tmp_path / "index" / ".s1.0badf00d.tmp.parquet").write_bytes(b"")  # a killed write
    assert open_index(tmp_path).count_rows() == 10
