"""The extraction engine: OpenSlide-identical pixels, one decode per tile, fallbacks."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
from PIL import Image

from exaslide.patches import PatchReader, PatchSpec
from exaslide.slides import open_slide


def _openslide_patch(path, x, y, level, size):
    region = np.asarray(openslide.OpenSlide(path).read_region((x, y), level, (size, size)))
    rgb = region[..., :3].copy()
    rgb[region[..., 3] == 0] = 255
    return rgb


@pytest.mark.parametrize(("level", "positions"), [
    (0, [(1024, 768), (1280, 1024)]),                  # tile-aligned
    (0, [(1001, 777), (1100, 830), (3000, 2250)]),     # unaligned, overlapping, at the edge
    (1, [(1024, 512), (2052, 1028)]),                  # a lower level
])
def test_pixels_equal_openslide(synth_slide, level, positions):
    with PatchReader(synth_slide.path, PatchSpec(size=200, level=level)) as reader:
        assert reader.uses_tiles
        for x, y in positions:
            np.testing.assert_array_equal(reader.read(x, y),
                                          _openslide_patch(synth_slide.path, x, y, level, 200))


def test_aligned_grid_decodes_each_tile_once(synth_slide):
    xs, ys = np.meshgrid(np.arange(0, 3072, 256), np.arange(0, 2304, 256))
    with PatchReader(synth_slide.path, PatchSpec(size=256)) as reader:
        patches = list(reader.iter_patches(xs.ravel(), ys.ravel()))
        assert len(patches) == reader.tile_decodes == 12 * 9
    with PatchReader(synth_slide.path, PatchSpec(size=256)) as reader:  # 2x2 tiles each
        list(reader.iter_patches(xs.ravel()[:11] + 128, ys.ravel()[:11] + 128))
        assert reader.tile_decodes == 2 * 12


def test_mpp_patches_match_slide_reads(synth_slide):
    with PatchReader(synth_slide.path, PatchSpec(size=100, level=None, mpp=1.3)) as reader, \
            open_slide(synth_slide.path, backend="tifffile") as slide:
        assert reader.level == 0
        for x, y in ((900, 700), (1500, 1111)):
            np.testing.assert_array_equal(reader.read(x, y),
                                          slide.read_region((x, y), (100, 100), mpp=1.3))


def test_non_tiff_falls_back_to_read_region(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "figure.png")
    with PatchReader(tmp_path / "figure.png", PatchSpec(size=64)) as reader:
        assert not reader.uses_tiles
        np.testing.assert_array_equal(reader.read(10, 20), arr[20:84, 10:74])


def test_real_aperio_patches_equal_openslide(shared_data):
    path = shared_data / "slides/aperio/CMU-1-Small-Region.svs"
    with PatchReader(path, PatchSpec(size=224)) as reader:
        assert reader.uses_tiles  # 240-px JPEG tiles decoded directly
        xs, ys = [0, 240, 1000, 2000], [0, 480, 1234, 2743]  # aligned, unaligned, edge
        for x, y, patch in zip(xs, ys, reader.iter_patches(xs, ys), strict=True):
            np.testing.assert_array_equal(patch, _openslide_patch(path, x, y, 0, 224))


def test_tiles_leave_the_cache_after_their_last_patch(synth_slide):
    """Memory stays at a couple of tile rows, whatever the slide size."""
    xs, ys = np.meshgrid(np.arange(128, 2944, 256), np.arange(128, 2176, 256))  # unaligned
    with PatchReader(synth_slide.path, PatchSpec(size=256)) as reader:
        peak = 0
        for _ in reader.iter_patches(xs.ravel(), ys.ravel()):
            peak = max(peak, len(reader._cache))
        assert reader.tile_decodes == 12 * 9  # each tile once
        assert peak <= 2 * 12 + 2 and not reader._cache  # two rows at most; empty at the end


def _jpeg_tiff(path, image, tile, photometric, tables=False, sparse=()):
    """A one-level JPEG-tiled TIFF; with ``tables`` the tiles are abbreviated streams and
    their quantisation and Huffman tables sit once in JPEGTables (as in Aperio files)."""
    import imagecodecs
    import tifffile

    h, w = image.shape[:2]
    colorspace = "RGB" if photometric == "rgb" else "YCbCr"
    shared, tiles = None, []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = np.full((tile, tile, 3), 255, np.uint8)
            part = image[y : y + tile, x : x + tile]
            block[: part.shape[0], : part.shape[1]] = part
            data = imagecodecs.jpeg8_encode(block, level=85, outcolorspace=colorspace)
            if tables:
                shared, data = _split_tables(data)
            tiles.append(b"" if len(tiles) in sparse else data)
    tifffile.imwrite(path, iter(tiles), shape=image.shape, dtype=np.uint8,
                     tile=(tile, tile), photometric=photometric, compression="jpeg",
                     jpegtables=shared, metadata=None)
    return str(path)


def _split_tables(data: bytes) -> tuple[bytes, bytes]:
    """``(tables, abbreviated stream)``: DQT and DHT segments moved out of a JPEG."""
    tables, rest, i = [], [], 2
    while data[i + 1] != 0xDA:  # up to the start of scan
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        (tables if data[i + 1] in (0xDB, 0xC4) else rest).append(data[i : i + 2 + length])
        i += 2 + length
    return b"\xff\xd8" + b"".join(tables) + b"\xff\xd9", \
        b"\xff\xd8" + b"".join(rest) + data[i:]


@pytest.mark.parametrize(("photometric", "tables"), [("ycbcr", False), ("rgb", False),
                                                     ("rgb", True), ("ycbcr", True)])
def test_direct_jpeg_decode_equals_read_tile(tmp_path, photometric, tables):
    """Tiles decoded straight into offset buffers are read_tile's pixels, edge tiles
    cropped, a tile without bytes painted by read_tile."""
    from exaslide.slides.jpeg_tiles import DECODE_OFFSET
    from exaslide.slides.tifffile_backend import TiffFileSlide

    rng = np.random.default_rng(3)
    image = np.clip(rng.normal(150, 40, (200, 300, 3)), 0, 255).astype(np.uint8)
    path = _jpeg_tiff(tmp_path / "t.tif", image, 64, photometric, tables, sparse=(2,))
    with PatchReader(path, PatchSpec(size=64)) as reader, TiffFileSlide(path) as slide:
        assert reader._jpeg is not None and (reader._jpeg.tables is not None) == tables
        for ty in range(4):
            for tx in range(5):
                tile = reader._decode(tx, ty)
                np.testing.assert_array_equal(tile, slide.read_tile(0, tx, ty))
                if (tx, ty) != (2, 0):  # the sparse tile: read_tile's
                    assert tile.ctypes.data % 32 == DECODE_OFFSET
        assert reader.read(280, 190).shape == (64, 64, 3)  # past the edge: padded white


def test_tile_sized_patches_are_handed_over_whole_edge_tiles_padded(tmp_path):
    """A grid of tile-sized aligned patches skips the tile cache: the same pixels as
    single reads (white past the level's edge), one decode per tile; a repeated position
    takes the general path."""
    rng = np.random.default_rng(5)
    image = np.clip(rng.normal(150, 40, (200, 300, 3)), 0, 255).astype(np.uint8)
    path = _jpeg_tiff(tmp_path / "t.tif", image, 64, "ycbcr")
    xs, ys = np.meshgrid(np.arange(0, 300, 64), np.arange(0, 200, 64))
    xs, ys = xs.ravel(), ys.ravel()
    with PatchReader(path, PatchSpec(size=64)) as reader:
        assert reader._one_tile_each(list(xs), list(ys))
        patches = list(reader.iter_patches(xs, ys))
        assert reader.tile_decodes == len(xs) == 20 and not reader._cache
        for x, y, patch in zip(xs, ys, patches, strict=True):
            assert not patch.flags.writeable
            np.testing.assert_array_equal(patch, reader.read(int(x), int(y)))
        assert (patches[-1][8:] == 255).all()  # the bottom-right tile: 8 x 44 pixels
        assert not reader._one_tile_each([0, 0], [0, 0])
        again = list(reader.iter_patches([64, 64], [0, 0]))
        np.testing.assert_array_equal(again[0], again[1])
        assert not reader._one_tile_each([32], [0])  # not aligned


def test_decode_buffers_are_reused_only_when_nothing_holds_them(tmp_path):
    rng = np.random.default_rng(6)
    image = np.clip(rng.normal(150, 40, (256, 512, 3)), 0, 255).astype(np.uint8)
    path = _jpeg_tiff(tmp_path / "t.tif", image, 64, "ycbcr")
    xs, ys = np.meshgrid(np.arange(0, 512, 64), np.arange(0, 256, 64))
    xs, ys = xs.ravel(), ys.ravel()
    with PatchReader(path, PatchSpec(size=64)) as reader:
        copies, kept, buffers = [], [], set()
        for patch in reader.iter_patches(xs, ys):  # the caller keeps every patch
            kept.append(patch)
            copies.append(patch.copy())
        for patch, copy in zip(kept, copies, strict=True):
            np.testing.assert_array_equal(patch, copy)  # none overwritten
        for patch in reader.iter_patches(xs, ys):  # the caller drops each patch
            buffers.add(patch.base.__array_interface__["data"][0])
            assert patch.ctypes.data % 32 == 16
        assert len(buffers) <= 3
