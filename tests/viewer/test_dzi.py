"""Deep Zoom geometry against OpenSlide's own DeepZoomGenerator (every tile of every level,
odd sizes, two level factors), and tile pixels served over HTTP against exaslide's
read_region at the matching level plus the same Lanczos resize."""

from __future__ import annotations

import io
import random
import urllib.request
from xml.etree import ElementTree

import numpy as np
import openslide
import pytest
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from exaslide.slides import open_slide
from exaslide.synth import SynthSpec, write_synthetic_slide
from exaslide.viewer.deepzoom import DeepZoom, deepzoom_levels


@pytest.fixture(scope="module", params=[(3001, 2011, 2), (2049, 1537, 4), (1283, 257, 2)],
                ids=lambda p: f"{p[0]}x{p[1]}-factor{p[2]}")
def odd_slide(request, tmp_path_factory):
    width, height, factor = request.param
    path = tmp_path_factory.mktemp("dz") / "s.tif"
    write_synthetic_slide(path, SynthSpec(width=width, height=height, tumours=1, seed=1,
                                          level_factor=factor, top_level_max=200))
    return path


@pytest.mark.parametrize("tile_size, overlap", [(254, 1), (256, 0), (510, 2)])
def test_geometry_equals_deepzoomgenerator_on_every_tile(odd_slide, tile_size, overlap):
    with open_slide(odd_slide) as slide:
        osr = openslide.OpenSlide(str(odd_slide))
        reference = DeepZoomGenerator(osr, tile_size=tile_size, overlap=overlap)
        dz = DeepZoom(slide, tile_size, overlap)
        assert slide.level_count > 1
        assert dz.level_count == reference.level_count
        assert dz.level_dimensions == reference.level_dimensions
        assert dz.level_tiles == reference.level_tiles
        checked = 0
        for level in range(dz.level_count):
            cols, rows = dz.level_tiles[level]
            for col in range(cols):
                for row in range(rows):
                    location, slide_level, read_size = reference.get_tile_coordinates(
                        level, (col, row))
                    read = dz.tile_read(level, col, row)
                    assert (read.location, read.level, read.read_size) == \
                        (location, slide_level, read_size), (level, col, row)
                    assert read.size == reference.get_tile_dimensions(level, (col, row))
                    checked += 1
            assert not dz.has_tile(level, cols, 0) and not dz.has_tile(level, 0, rows)
        assert checked == sum(c * r for c, r in reference.level_tiles)
        osr.close()


def test_level_sizes_halve_up_to_one_pixel():
    assert deepzoom_levels((3001, 2011))[:3] == ((1, 1), (2, 1), (3, 2))
    assert deepzoom_levels((3001, 2011))[-2:] == ((1501, 1006), (3001, 2011))
    assert len(deepzoom_levels((3001, 2011))) == 13  # ceil(log2(3001)) + 1
    assert deepzoom_levels((1, 1)) == ((1, 1),)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return response.read()


def test_dzi_document_matches_openslide(viewer_server, viewer_data):
    text = _get(f"{viewer_server}/slides/{viewer_data.served_id}.dzi").decode()
    reference = DeepZoomGenerator(openslide.OpenSlide(str(viewer_data.slide_path))).get_dzi(
        "jpeg")
    mine, theirs = ElementTree.fromstring(text.split("?>", 1)[1]), ElementTree.fromstring(
        reference)
    assert mine.tag == theirs.tag and mine.attrib == theirs.attrib
    assert mine[0].attrib == theirs[0].attrib == {"Width": "3001", "Height": "2011"}


def _reference_tile(slide, dz: DeepZoom, level: int, col: int, row: int) -> np.ndarray:
    read = dz.tile_read(level, col, row)
    pixels = slide.read_region(read.location, read.read_size, level=read.level)
    image = Image.fromarray(pixels)
    if image.size != read.size:
        image.thumbnail(read.size, Image.Resampling.LANCZOS)
    return np.asarray(image)


def test_served_tiles_equal_read_region_and_resize_at_every_level(viewer_server, viewer_data):
    """Each level's first, last and some random tiles: the JPEG served is the JPEG of
    exaslide's read_region at OpenSlide's level plus the same Lanczos thumbnail (bytes
    equal), and close to OpenSlide's own tile."""
    rng = random.Random(0)
    osr = openslide.OpenSlide(str(viewer_data.slide_path))
    reference = DeepZoomGenerator(osr)
    with open_slide(viewer_data.slide_path) as slide:
        dz = DeepZoom(slide)
        for level in range(dz.level_count):
            cols, rows = dz.level_tiles[level]
            tiles = {(0, 0), (cols - 1, rows - 1)}
            tiles |= {(rng.randrange(cols), rng.randrange(rows)) for _ in range(2)}
            for col, row in sorted(tiles):
                data = _get(f"{viewer_server}/slides/{viewer_data.served_id}_files/"
                            f"{level}/{col}_{row}.jpeg")
                expected = _reference_tile(slide, dz, level, col, row)
                out = io.BytesIO()
                Image.fromarray(expected).save(out, "JPEG", quality=75)
                assert data == out.getvalue(), (level, col, row)
                served = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                theirs = np.asarray(reference.get_tile(level, (col, row)).convert("RGB"))
                # both shrink with thumbnail(), which keeps the aspect ratio: a tile can come
                # out smaller than get_tile_dimensions (1x1 for a nominal 2x1), the same way
                assert served.shape == theirs.shape, (level, col, row)
                diff = np.abs(expected.astype(int) - theirs.astype(int))
                # exaslide rounds sub-pixel positions on coarser levels where OpenSlide
                # samples them: close, equal at level 0 reads
                if dz.tile_read(level, col, row).level == 0:
                    assert diff.max() == 0, (level, col, row)
                assert diff.mean() < 8, (level, col, row)
    osr.close()
