"""Standalone JPEG streams of stored TIFF tiles: they decode, with any plain decoder, to
exactly the pixels the TIFF reader gives (tables spliced in, colour space explicit)."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import torch
from jpeg_slides import texture, write_aperio_like, write_plain_tiff

from exaslide.data.tile_bytes import (
    JpegHeader,
    TileDecodeError,
    _table_segments,
    is_jpeg_tiled,
    jpeg_level,
    libjpeg_colour,
    parse_jpeg,
    standalone_jpeg,
)
from exaslide.slides.tifffile_backend import TiffFileSlide

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding:DeprecationWarning")  # torchvision 0.29 points to torchcodec


def _every_tile_decodes_as_the_reader_reads_it(path, level: int = 0) -> int:
    from torchvision.io import decode_jpeg

    with TiffFileSlide(path) as slide:
        tiles = jpeg_level(slide, level)
        assert tiles is not None
        tw, th = tiles.tile_size
        for ty in range(tiles.grid[1]):
            for tx in range(tiles.grid[0]):
                stream, _ = tiles.stream(tx, ty)
                expected = slide.read_tile(level, tx, ty)  # cropped at the level's edge
                h, w = expected.shape[:2]
                plain = imagecodecs.jpeg8_decode(stream)  # no colour-space arguments
                assert plain.shape == (th, tw, 3)
                np.testing.assert_array_equal(plain[:h, :w], expected)
                tv = decode_jpeg(torch.frombuffer(bytearray(stream), dtype=torch.uint8))
                np.testing.assert_array_equal(tv.permute(1, 2, 0).numpy()[:h, :w], expected)
        return tiles.grid[0] * tiles.grid[1]


def test_synthetic_ycbcr_tiles_stand_alone_at_every_level(synth_slide):
    with TiffFileSlide(str(synth_slide.path)) as slide:
        levels = slide.level_count
    assert levels >= 2
    for level in range(levels):
        assert _every_tile_decodes_as_the_reader_reads_it(str(synth_slide.path), level)


def test_aperio_style_rgb_tiles_get_tables_and_an_adobe_marker(tmp_path):
    path = write_aperio_like(tmp_path / "rgb.tif", texture(200, 300), tile=64)
    assert _every_tile_decodes_as_the_reader_reads_it(path) == 5 * 4
    with TiffFileSlide(path) as slide:
        tiles = jpeg_level(slide, 0)
        stream, colour = tiles.stream(1, 1)
        assert colour == "rgb" and tiles.tables
        header = parse_jpeg(stream)
        assert header.adobe_transform == 0 and not header.jfif
        # the marker matters: the tile with its tables but no marker decodes as YCbCr
        raw = tiles.raw(*divmod(5, tiles.grid[0])[::-1])
        naive = b"\xff\xd8" + _table_segments(tiles.tables) + raw[2:]
        wrong = imagecodecs.jpeg8_decode(naive).astype(int)
        assert np.abs(wrong - slide.read_tile(0, 1, 1)).mean() > 20


def test_real_aperio_svs_tiles_stand_alone(shared_data):
    path = shared_data / "slides" / "aperio" / "CMU-1-Small-Region.svs"
    if not path.exists():
        pytest.skip(f"{path} not present")
    assert _every_tile_decodes_as_the_reader_reads_it(str(path)) == 130


def _header(jfif=False, adobe=None, ids=(1, 2, 3)) -> JpegHeader:
    return JpegHeader([], 0, jfif, adobe, ids)


@pytest.mark.parametrize(("header", "photometric", "expected"), [
    (_header(), 2, "rgb"),  # Aperio: TIFF says RGB, no JFIF
    (_header(jfif=True), 2, "ycbcr"),  # JFIF wins (tifffile lets libjpeg decide)
    (_header(), 6, "ycbcr"),
    (_header(adobe=0), 6, "rgb"),
    (_header(adobe=1, ids=(82, 71, 66)), 6, "ycbcr"),
    (_header(ids=(82, 71, 66)), 6, "rgb"),
    (_header(ids=(0, 1, 2)), 6, "ycbcr"),
])
def test_colour_space_follows_tifffile_and_libjpeg(header, photometric, expected):
    assert libjpeg_colour(header, photometric) == expected


def test_ycbcr_stream_without_jfif_gets_an_explicit_adobe_transform_1(tmp_path):
    data = imagecodecs.jpeg8_encode(texture(64, 64), level=90)
    header = parse_jpeg(data)
    no_jfif = b"\xff\xd8" + b"".join(s for m, s in header.segments if m != 0xE0) + \
        data[header.scan_start :]
    out = standalone_jpeg(no_jfif, None, 6)
    assert parse_jpeg(out).adobe_transform == 1
    np.testing.assert_array_equal(imagecodecs.jpeg8_decode(out),
                                  imagecodecs.jpeg8_decode(data))
    assert standalone_jpeg(data, None, 6) is data  # complete JFIF YCbCr: unchanged


@pytest.mark.parametrize(("damage", "match"), [
    (lambda b: b"\x00" + b[1:], "no start-of-image"),
    (lambda b: b[:40], "past the end|no scan"),
    (lambda b: b[:2] + b"\x12" + b[3:], "expected a marker"),
])
def test_damaged_tile_headers_are_refused(damage, match):
    data = imagecodecs.jpeg8_encode(texture(32, 32), level=90)
    with pytest.raises(ValueError, match=match):
        standalone_jpeg(damage(data), None, 6)


def test_a_damaged_stored_tile_names_slide_level_and_tile(tmp_path):
    import tifffile

    path = write_aperio_like(tmp_path / "bad.tif", texture(128, 128), tile=64)
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[3]
    with open(path, "r+b") as fh:  # tile (1, 1): break its first marker
        fh.seek(offset + 2)
        fh.write(b"\x00\x00")
    slide = TiffFileSlide(path)
    try:
        tiles = jpeg_level(slide, 0)
        with pytest.raises(TileDecodeError, match=r"bad\.tif level 0: stored tile \(1, 1\)"):
            tiles.stream(1, 1)
        assert tiles.stream(0, 1)[1] == "rgb"  # the others are fine
    finally:
        slide.close()


def test_only_jpeg_tiled_levels_qualify(tmp_path, synth_slide, shared_data):
    image = texture(160, 200)
    lzw = write_plain_tiff(tmp_path / "lzw.tif", image, "lzw")
    zlib = write_plain_tiff(tmp_path / "zlib.tif", image, "zlib")
    assert is_jpeg_tiled(synth_slide.path)
    assert not is_jpeg_tiled(lzw) and not is_jpeg_tiled(zlib)
    assert not is_jpeg_tiled(synth_slide.path, backend="openslide")
    png = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(png), image)
    assert not is_jpeg_tiled(png)
    boxes = shared_data / "slides" / "openslide-python-fixtures" / "boxes.tiff"
    if boxes.exists():
        assert not is_jpeg_tiled(boxes)  # deflate
