"""CompressedPatchDataset + BatchDecoder on the CPU: pixels identical to
SlidePatchDataset (level patches, patches straddling tiles, edge tiles, size crops,
mpp-resampled patches), non-JPEG slides through the CPU reader in the same batch, each
stored tile shipped once, caps, and loaders with workers giving the same batches."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch
from jpeg_slides import index_table, texture, write_aperio_like, write_plain_tiff

from exaslide.data import DatasetError, PatchSampler, SlidePatchDataset, make_loader
from exaslide.data.batch_decode import BatchDecoder, DecodedLoader
from exaslide.data.compressed_dataset import CompressedPatchDataset, make_compressed_loader
from exaslide.data.loader import collate_patches
from exaslide.patches.reader import PatchReader
from exaslide.patches.spec import PatchSpec


def _reference(table, slides, **options):
    dataset = SlidePatchDataset(table, slides=slides, **options)
    return collate_patches([dataset[i] for i in range(len(dataset))])


def _decoded(table, slides, assemble="numpy", **options):
    dataset = CompressedPatchDataset(table, slides=slides, **options)
    batch = dataset[list(range(len(dataset)))]
    batch = pickle.loads(pickle.dumps(batch))  # as it travels from a loader worker
    return BatchDecoder("cpu", assemble=assemble, threads=2)(batch), batch


def _positions(width, height, n, seed, margin=40):
    rng = np.random.default_rng(seed)
    return rng.integers(-margin, width - 10, n), rng.integers(-margin, height - 10, n)


def _assert_same(table, slides, exact_torch=True, **options):
    images, labels, meta = _reference(table, slides, **options)
    for assemble in ("numpy", "torch"):
        (got, got_labels, got_meta), batch = _decoded(table, slides, assemble, **options)
        assert got.shape == images.shape and got.dtype == torch.uint8
        assert got.permute(0, 2, 3, 1).is_contiguous()  # channels-last, as collate gives
        if assemble == "numpy" or exact_torch:
            assert torch.equal(got, images), assemble
        else:  # the device path resamples with torch: within rounding of cv2
            diff = (got.int() - images.int()).abs()
            assert diff.float().mean() <= 1.0 and diff.max() <= 2
        assert torch.equal(got_labels, labels)
        assert got_meta["key"] == meta["key"] and torch.equal(got_meta["x"], meta["x"])
    return batch


@pytest.mark.parametrize("level", [0, 1])
def test_level_patches_straddling_and_edge_tiles_are_identical(synth_slide, level):
    w, h = synth_slide.level_dimensions[0]
    xs, ys = _positions(w, h, 48, seed=level)
    step = 4**level
    xs[:4] = [0, 256 * step, w - 30 * step, 512]  # aligned, aligned, edges
    ys[:4] = [0, 256 * step, h - 30 * step, -20]
    table = index_table(xs, ys, size=64, level=level)
    batch = _assert_same(table, {"s": str(synth_slide.path)})
    assert len(batch.fallback_position) == 0 and batch.stream_count > 0
    outside = (batch.box[:, 2:] > batch.level_size).any(1) | (batch.box[:, :2] < 0).any(1)
    assert 0 < int(outside.sum()) < len(xs)  # some patches leave the level


@pytest.mark.parametrize("options", [{}, {"size": 24}, {"mpp": 0.75}])
def test_patches_past_the_level_edge_in_its_last_partial_tile_are_identical(tmp_path,
                                                                            options):
    """200 px on 64-px tiles: the last tile (192..255) is partial, so a patch that starts
    past the edge (x or y in 200..255) still falls in a tile of the grid; it reads white,
    and no tile is shipped for a patch that does not touch the level."""
    path = write_aperio_like(tmp_path / "edge.tif", texture(200, 200), tile=64)
    xs = [210, 0, 210, 230, 100, 199, 180, 185, -40]
    ys = [0, 210, 210, 100, 240, 0, 180, 199, -40]
    table = index_table(xs, ys, size=32)
    slides = {"s": path}
    batch = _assert_same(table, slides, exact_torch=not options, **options)
    assert len(batch.fallback_position) == 0
    planned = batch.tiles[batch.position.argsort()]
    outside = [i for i in range(len(xs)) if xs[i] >= 200 or ys[i] >= 200 or xs[i] <= -32]
    assert all((planned[i] < 0).all() for i in outside)  # nothing shipped for them
    if not options:  # the extraction engine reads the same pixels
        images = _reference(table, slides)[0]
        with PatchReader(path, PatchSpec(size=32, level=0)) as reader:
            for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
                assert np.array_equal(reader.read(x, y), images[i].permute(1, 2, 0).numpy())
        assert (images[outside] == 255).all()
        single = SlidePatchDataset(table, slides=slides)
        for i in outside:  # single items decode no tile for them either
            assert (single[i][0] == 255).all()
        assert single.tile_decodes == 0


def test_each_needed_stored_tile_is_shipped_once(synth_slide):
    xs, ys = np.array([10, 20, 30, 200, 250, 700]), np.array([10, 20, 200, 240, 5, 700])
    table = index_table(xs, ys, size=96)
    dataset = CompressedPatchDataset(table, slides={"s": str(synth_slide.path)})
    batch = dataset[list(range(len(xs)))]
    needed = {(tx, ty) for x, y in zip(xs, ys, strict=True)
              for tx in range(x // 256, (x + 95) // 256 + 1)
              for ty in range(y // 256, (y + 95) // 256 + 1)}
    assert batch.stream_count == len(needed)
    assert sorted(map(tuple, batch.stream_where[:, 1:].tolist())) == sorted(needed)
    assert batch.nbytes == batch.data.numel() < len(needed) * 256 * 256 * 3 / 5


def test_centre_crop_and_mpp_resampling_match_the_reader(synth_slide):
    w, h = synth_slide.level_dimensions[0]
    xs, ys = _positions(w, h, 32, seed=7)
    table = index_table(xs, ys, size=64)
    slides = {"s": str(synth_slide.path)}
    _assert_same(table, slides, size=40)
    down = _assert_same(table, slides, exact_torch=False, mpp=0.9)  # INTER_AREA, 1.8x
    assert set(down.resample.tolist()) == {1}
    up = _assert_same(table, slides, exact_torch=False, mpp=0.49)  # INTER_LINEAR, 0.98x
    assert set(up.resample.tolist()) == {2}


def test_rgb_jpeg_slide_with_sparse_tiles_uses_the_reader_for_those_patches(tmp_path):
    path = write_aperio_like(tmp_path / "rgb.tif", texture(300, 400), tile=64, sparse=(8,))
    xs, ys = _positions(400, 300, 40, seed=3, margin=20)
    xs[:2], ys[:2] = [70, 100], [70, 40]  # tile 8 = column 1, row 1 of 7: sparse
    table = index_table(xs, ys, size=48)
    batch = _assert_same(table, {"s": path})
    assert 0 < len(batch.fallback_position) < len(xs)
    assert batch.stream_rgb.all()


@pytest.mark.parametrize("compression", ["lzw", "zlib"])
def test_slides_that_are_not_jpeg_tiled_fall_back_in_the_same_batch(tmp_path, synth_slide,
                                                                    compression):
    other = write_plain_tiff(tmp_path / f"{compression}.tif", texture(300, 400), compression)
    a = index_table(*_positions(*synth_slide.level_dimensions[0], 12, seed=1), slide_id="a")
    b = index_table(*_positions(400, 300, 12, seed=2, margin=10), slide_id="b")
    table = pa.concat_tables([a, b])
    batch = _assert_same(table, {"a": str(synth_slide.path), "b": other})
    assert batch.fallback_position.tolist() == list(range(12, 24))
    assert sorted(set(batch.stream_where[:, 0].tolist())) == [0]


def test_png_slide_falls_back(tmp_path):
    import cv2

    png = tmp_path / "image.png"
    cv2.imwrite(str(png), texture(200, 260))
    batch = _assert_same(index_table(*_positions(260, 200, 10, seed=4, margin=0)),
                         {"s": str(png)})
    assert batch.stream_count == 0 and len(batch.fallback_position) == 10


def test_caps_and_mixed_sizes_are_clear_errors(synth_slide):
    slides = {"s": str(synth_slide.path)}
    table = index_table([0, 300, 600], [0, 300, 600], size=64)
    with pytest.raises(DatasetError, match=r"over the caps.*smaller batch size"):
        CompressedPatchDataset(table, slides=slides, max_batch_bytes=1000)[[0, 1, 2]]
    with pytest.raises(DatasetError, match="decoded tiles, over the caps"):
        CompressedPatchDataset(table, slides=slides, max_decoded_bytes=256 * 256 * 3)[[0, 1]]
    mixed = pa.concat_tables([index_table([0], [0], size=64),
                              index_table([300], [300], size=32, slide_id="s")])
    with pytest.raises(DatasetError, match="sizes \\[32, 64\\]"):
        CompressedPatchDataset(mixed, slides=slides)[[0, 1]]
    with pytest.raises(IndexError, match="out of range"):
        CompressedPatchDataset(table, slides=slides)[[5]]


def test_loader_with_workers_gives_the_batches_of_make_loader(extracted):
    """Also with a locality-aware order, whose batches depend on the worker count."""
    reference = SlidePatchDataset(extracted, size=48)
    compressed = CompressedPatchDataset.like(reference)
    sampler = PatchSampler(reference.labels, balance=True, seed=3, num_samples=90)
    expected = list(make_loader(reference, batch_size=16, workers=2, sampler=sampler,
                                seed=3))
    loader = make_compressed_loader(compressed, batch_size=16, workers=2, sampler=sampler,
                                    seed=3)
    for prefetch in (0, 2):
        got = list(DecodedLoader(loader, BatchDecoder("cpu", threads=2), prefetch))
        assert len(got) == len(expected) == len(loader) == 6
        for (a, la, ma), (b, lb, mb) in zip(expected, got, strict=True):
            assert torch.equal(a, b) and torch.equal(la, lb) and ma["key"] == mb["key"]
    local = PatchSampler(reference.labels, seed=4, blocks=reference.blocks(2))
    expected = list(make_loader(reference, batch_size=16, workers=2, sampler=local, seed=3))
    got = list(DecodedLoader(make_compressed_loader(compressed, batch_size=16, workers=2,
                                                    sampler=local, seed=3),
                             BatchDecoder("cpu", threads=2)))
    assert [m["key"] for _, _, m in got] == [m["key"] for _, _, m in expected]
    assert all(torch.equal(a, b) for (a, _, _), (b, _, _) in zip(expected, got, strict=True))
    with pytest.raises(ValueError, match="per-item transform"):
        CompressedPatchDataset.like(SlidePatchDataset(extracted, transform=lambda x: x))
