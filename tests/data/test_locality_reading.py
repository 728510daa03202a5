"""Batches assembled in place: pixels equal PatchReader's, each tile decoded once under a
locality-aware order with a small cache, bounded memory, worker batch memory recycled
without ever overwriting a batch the consumer holds."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from exaslide.data import PatchSampler, SlidePatchDataset, make_loader
from exaslide.patches.index import make_table
from exaslide.patches.reader import PatchReader
from exaslide.patches.spec import PatchSpec
from exaslide.slides.jpeg_tiles import jpeg_tiles
from exaslide.slides.tifffile_backend import TiffFileSlide
from exaslide.synth import SynthSpec, write_synthetic_slide


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> str:
    """A 2560 x 2048 synthetic slide: 256-px YCbCr JPEG tiles, 2 levels, 0.5 µm/px."""
    path = tmp_path_factory.mktemp("locality") / "s.tif"
    write_synthetic_slide(path, SynthSpec(width=2560, height=2048, tumours=2, seed=7))
    return str(path)


def _table(xs, ys, *, size: int = 224, level: int = 0, slide_id: str = "s"):
    n = len(xs)
    return make_table({"key": [f"{slide_id}-{level}-{i}" for i in range(n)],
                       "slide_id": slide_id, "x": [int(v) for v in xs],
                       "y": [int(v) for v in ys], "level": level, "size": size,
                       "label": ["tumour" if i % 3 else "normal" for i in range(n)],
                       "split": "train"})


def _grid(side_x: int, side_y: int, step: int = 224, size: int = 224):
    ys, xs = np.mgrid[0 : side_y - size + 1 : step, 0 : side_x - size + 1 : step]
    return xs.ravel(), ys.ravel()


def _reference(path: str, x: int, y: int, *, size: int, level: int = 0,
               out: int | None = None, mpp: float | None = None) -> np.ndarray:
    """What the dataset read before batches were assembled in place: ``PatchReader``
    at the corner shifted to centre the read patch on the indexed one."""
    out = out or size
    spec = PatchSpec(size=out, mpp=mpp, level=None) if mpp else PatchSpec(size=out,
                                                                         level=level)
    with PatchReader(path, spec) as reader:
        if mpp is not None:
            side = size * reader.slide.level_downsamples[level]
            shift = (side - reader.spec.size * reader.scale * reader.downsample) / 2
        else:
            shift = (size - out) / 2 * reader.scale * reader.downsample
        d = math.floor(shift + 0.5)
        return reader.read(x + d, y + d)


def test_batches_equal_the_patch_reader_at_every_position(slide):
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.integers(-100, 2500, 40), [0, 2560 - 224, 2500, 2336]])
    ys = np.concatenate([rng.integers(-100, 2000, 40), [0, 2048 - 224, 1990, 1824]])
    level1 = _table(rng.integers(0, 2400, 12), rng.integers(0, 1900, 12), size=64, level=1)
    import pyarrow as pa

    table = pa.concat_tables([_table(xs, ys), level1])
    cases = [({}, {}), ({"size": 160}, {"out": 160})]
    for options, ref in cases:
        dataset = SlidePatchDataset(table, slides={"s": slide}, **options)
        rows = rng.permutation(len(xs))[:30]
        batch = dataset.__getitems__([*rows[:20].tolist(), -13])  # -13: last level-0 row
        assert batch.images.shape[1:] == (3, options.get("size", 224),
                                           options.get("size", 224))
        for i, r in enumerate([*rows[:20].tolist(), len(xs) - 1]):
            expected = _reference(slide, int(xs[r]), int(ys[r]), size=224, **ref)
            np.testing.assert_array_equal(batch.images[i].permute(1, 2, 0).numpy(), expected)
        level_rows = list(range(len(xs), len(table)))
        images = dataset.__getitems__(level_rows).images
        for i, r in enumerate(level_rows):
            row = table.slice(r, 1).to_pylist()[0]
            expected = _reference(slide, row["x"], row["y"], size=64, level=1,
                                  out=ref.get("out", 64) if options else None)
            np.testing.assert_array_equal(images[i].permute(1, 2, 0).numpy(), expected)
    with pytest.raises(ValueError, match="mixes patch sizes"):
        SlidePatchDataset(table, slides={"s": slide}).__getitems__([0, len(xs)])


def test_batches_at_another_resolution_equal_the_patch_reader(slide):
    xs, ys = _grid(2560, 2048, step=300)
    dataset = SlidePatchDataset(_table(xs, ys), slides={"s": slide}, size=96, mpp=1.3)
    rows = list(range(0, len(xs), 3))
    images = dataset.__getitems__(rows).images
    for i, r in enumerate(rows):
        expected = _reference(slide, int(xs[r]), int(ys[r]), size=224, out=96, mpp=1.3)
        np.testing.assert_array_equal(images[i].permute(1, 2, 0).numpy(), expected)


def test_items_batches_and_their_metadata_agree(slide):
    xs, ys = _grid(2560, 2048)
    dataset = SlidePatchDataset(_table(xs, ys), slides={"s": slide})
    batch = dataset.__getitems__([5, 0, 5, -1])
    image, label, meta = dataset[5]
    assert torch.equal(batch.images[0], image) and torch.equal(batch.images[2], image)
    assert batch.labels.tolist()[0] == label and batch.metadata["key"][0] == meta["key"]
    assert batch.metadata["index"].tolist() == [5, 0, 5, len(xs) - 1]
    assert batch[1][2] == dataset[0][2]
    assert image.permute(1, 2, 0).is_contiguous()  # CHW view of HWC pixels
    with pytest.raises(IndexError, match="out of range"):
        dataset.__getitems__([0, len(xs)])
    floats = SlidePatchDataset(_table(xs, ys), slides={"s": slide}, dtype="float")
    np.testing.assert_allclose(floats.__getitems__([5]).images[0].numpy() * 255,
                               image.numpy(), atol=1e-3)
    flipped = SlidePatchDataset(_table(xs, ys), slides={"s": slide},
                                transform=lambda t: t.flip(-1))
    items = flipped.__getitems__([5, 6])
    assert isinstance(items, list) and torch.equal(items[0][0], image.flip(-1))


def test_jpeg_tiles_decode_like_read_tile(slide, tmp_path):
    import tifffile

    with TiffFileSlide(slide) as tiles:
        for level in range(tiles.level_count):
            jpeg = jpeg_tiles(tiles, level)
            assert jpeg is not None
            tw, th = tiles.tile_grid(level)
            lw, lh = tiles.level_dimensions[level]
            out = np.empty((th, tw, 3), np.uint8)
            for ty in range(-(-lh // th)):
                for tx in range(-(-lw // tw)):
                    assert jpeg.decode_into(tx, ty, out)
                    want = tiles.read_tile(level, tx, ty)
                    np.testing.assert_array_equal(out[: want.shape[0], : want.shape[1]],
                                                  want)
    image = np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    rgb, lzw = tmp_path / "rgb.tif", tmp_path / "lzw.tif"
    tifffile.imwrite(rgb, image, tile=(64, 64), photometric="rgb", compression="jpeg")
    tifffile.imwrite(lzw, image, tile=(64, 64), photometric="rgb", compression="lzw")
    with TiffFileSlide(str(rgb)) as tiles:
        jpeg = jpeg_tiles(tiles, 0)
        out = np.empty((64, 64, 3), np.uint8)
        assert jpeg is not None and jpeg.decode_into(2, 1, out)
        np.testing.assert_array_equal(out, tiles.read_tile(0, 2, 1))
        assert not jpeg.decode_into(99, 99, out)
    with TiffFileSlide(str(lzw)) as tiles:
        assert jpeg_tiles(tiles, 0) is None
    xs, ys = np.array([0, 30, 236, 100]), np.array([0, 50, 136, 150])
    dataset = SlidePatchDataset(_table(xs, ys, size=64), slides={"s": str(lzw)})
    images = dataset.__getitems__([0, 1, 2, 3]).images
    for i in range(4):  # tiles decoded by read_tile, pixels as the reader's
        expected = _reference(str(lzw), int(xs[i]), int(ys[i]), size=64)
        np.testing.assert_array_equal(images[i].permute(1, 2, 0).numpy(), expected)


def test_blocks_follow_the_stored_tiles(slide):
    xs, ys = _grid(2560, 2048)
    dataset = SlidePatchDataset(_table(xs, ys), slides={"s": slide})
    blocks = dataset.blocks()
    assert blocks.shape == (len(xs),) and blocks.min() == 0
    # 224-px patches on 256-px tiles: blocks of 8 x 8 patches = 7 x 7 tiles, no tile shared
    assert np.bincount(blocks).max() == 64
    geometry = dataset.geometry(0)
    owner: dict[int, set] = {}
    for i in range(len(xs)):
        for key in geometry.tile_keys(xs[i : i + 1], ys[i : i + 1]).tolist():
            owner.setdefault(key, set()).add(int(blocks[i]))
    assert max(len(v) for v in owner.values()) == 1
    assert len(np.unique(dataset.blocks(patches=2))) > len(np.unique(blocks))
    with pytest.raises(ValueError, match="at least 1"):
        dataset.blocks(patches=0)


def _epoch_decodes(dataset, sampler) -> int:
    before = dataset.tile_decodes
    for _ in make_loader(dataset, batch_size=16, workers=0, sampler=sampler):
        pass
    return dataset.tile_decodes - before


def test_locality_decodes_each_tile_once_with_a_cache_far_smaller_than_the_epoch(
        slide, monkeypatch):
    xs, ys = _grid(2560, 2048)
    table = _table(xs, ys)
    probe = SlidePatchDataset(table, slides={"s": slide})
    tiles = len(np.unique(probe.geometry(0).tile_keys(xs, ys)))
    small = 48 * 256 * 256 * 3  # 48 tiles of the ~80 the epoch needs
    assert small < tiles * 256 * 256 * 3
    local = SlidePatchDataset(table, slides={"s": slide}, tile_cache_bytes=small)
    sampler = PatchSampler(len(xs), seed=0, rank=0, world_size=1, blocks=local.blocks(),
                           window=32)
    assert _epoch_decodes(local, sampler) == tiles
    assert local.tile_cache().nbytes <= small
    # a full shuffle, assembled 16 patches ahead (the default, 1024, is this whole epoch)
    monkeypatch.setattr("exaslide.data.assembly.DEFAULT_SPAN", 16)
    full = SlidePatchDataset(table, slides={"s": slide}, tile_cache_bytes=small)
    assert _epoch_decodes(full, PatchSampler(len(xs), seed=0, rank=0, world_size=1)) > tiles


def test_tiles_are_kept_for_the_next_epoch_only_where_it_will_read_them(slide):
    from exaslide.data.loader import StreamBatches

    xs, ys = _grid(2560, 2048)
    table = _table(xs, ys)
    dataset = SlidePatchDataset(table, slides={"s": slide})
    tiles = len(np.unique(dataset.geometry(0).tile_keys(xs, ys)))
    local = PatchSampler(len(xs), seed=0, rank=0, world_size=1, blocks=dataset.blocks())
    full = PatchSampler(len(xs), seed=0, rank=0, world_size=1)
    for sampler, streams, keep in ((local, 1, True), (local, 2, False), (full, 2, True)):
        first = next(iter(StreamBatches(sampler, 16, streams)))
        assert first.complete and first.keep is keep
    # one stream, the epoch's tiles fit: the second epoch decodes nothing, and as every
    # tile is cached anyway, no batch is assembled ahead (memory touched for nothing)
    batches = iter(make_loader(dataset, batch_size=16, workers=0, sampler=local))
    next(batches)
    assert dataset.tile_cache().keep_spent and not dataset._state().ahead
    for _ in batches:
        pass
    assert dataset.tile_decodes == tiles and len(dataset.tile_cache()) == tiles
    local.set_epoch(1)
    assert _epoch_decodes(dataset, local) == 0
    # a plan that will not be read here again: nothing kept, tiles decoded once
    other = SlidePatchDataset(table, slides={"s": slide})
    rows = np.concatenate(local.batches(16, 1))
    other.expect(rows, reset=True, complete=True, keep=False)
    assert not other.tile_cache().keep_spent
    for start in range(0, len(rows), 16):
        other.__getitems__(rows[start : start + 16].tolist())
    assert other.tile_decodes == tiles and len(other.tile_cache()) == 0


def test_workers_deliver_the_in_process_batches_even_when_all_are_held(slide, monkeypatch):
    from exaslide.data import batch_memory

    monkeypatch.setattr(batch_memory, "RING_SLOTS", 8)  # read when the loader is made
    xs, ys = _grid(2560, 2048, step=112)
    table = _table(xs, ys)
    reference = SlidePatchDataset(table, slides={"s": slide})
    dataset = SlidePatchDataset(table, slides={"s": slide})
    sampler = PatchSampler(len(xs), seed=3, rank=0, world_size=1, blocks=dataset.blocks(),
                           window=64)
    loader = make_loader(dataset, batch_size=8, workers=2, sampler=sampler)
    held = list(loader)  # more batches than a worker's ring: none may be overwritten
    assert len(held) > 2 * batch_memory.RING_SLOTS
    expected = sampler.batches(8, streams=2)
    for (images, _, meta), rows in zip(held, expected, strict=True):
        assert meta["index"].tolist() == rows.tolist()
        assert torch.equal(images, reference.__getitems__(rows.tolist()).images)
    released = batch_memory.released_total
    del held, images, meta
    sampler.set_epoch(1)
    count = sum(len(batch[1]) for batch in loader)  # batches dropped as they come
    assert count == len(xs) and batch_memory.released_total > released


def test_peak_memory_stays_within_a_small_cache(tmp_path):
    path = tmp_path / "big.tif"
    write_synthetic_slide(path, SynthSpec(width=6144, height=6144, tumours=2, seed=2))
    script = textwrap.dedent(f"""
        import numpy as np
        from exaslide.data import PatchSampler, SlidePatchDataset, make_loader
        from exaslide.patches.index import make_table
        from exaslide.resources import peak_rss_mb
        ys, xs = np.mgrid[0:6144 - 224:224, 0:6144 - 224:224]
        n = xs.size
        table = make_table({{"key": [str(i) for i in range(n)], "slide_id": "b",
                            "x": xs.ravel().tolist(), "y": ys.ravel().tolist(), "level": 0,
                            "size": 224, "label": "normal"}})
        for order in ("locality", "full"):
            dataset = SlidePatchDataset(table, slides={{"b": {str(path)!r}}},
                                        tile_cache_bytes=8 << 20)
            blocks = dataset.blocks() if order == "locality" else None
            sampler = PatchSampler(n, seed=0, rank=0, world_size=1, blocks=blocks,
                                   window=32)
            loader = make_loader(dataset, batch_size=32, workers=0, sampler=sampler)
            batches = iter(loader)
            next(batches)
            start = peak_rss_mb()
            for _ in batches:
                pass
            print(order, peak_rss_mb() - start, dataset.tile_decodes)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    growth = {line.split()[0]: float(line.split()[1]) for line in done.stdout.splitlines()}
    # the epoch decodes ~110 MB of tiles, which an unbounded cache would hold; here: the
    # 8 MiB cache, as much in recycled buffers at most, a 6 MiB arena, batches of 4.8 MB
    assert growth["locality"] < 64 and growth["full"] < 64, done.stdout
