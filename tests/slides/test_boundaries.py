"""Reads that start on a tile's last pixel or on half a pixel, in both axes, at every level:
exaslide's readers (tifffile backend, OpenSlide backend, PatchReader) give exactly what
OpenSlide itself gives.

A reader that gets the first tile of a region wrong (``(x + 1) // tile`` instead of
``x // tile``) passes tests that only read tile-aligned or mid-tile regions, and shows a
white or garbage column at ``k * tile - 1``; a rounding error shows only at half pixels.
The slide has 32-px tiles so that every level (1024 x 768, 256 x 192, 64 x 48) has tile
boundaries inside it.
"""

from __future__ import annotations

import math

import numpy as np
import openslide
import pytest

from exaslide.patches import PatchReader, PatchSpec
from exaslide.slides import open_slide
from exaslide.synth import SynthSpec, write_synthetic_slide

TILE = 32
SIZE = 40  # wider than a tile: every read spans a boundary


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bounds") / "bounds.tif"
    spec = SynthSpec(width=1024, height=768, tile=TILE, tumours=2, seed=7, top_level_max=64)
    return str(write_synthetic_slide(path, spec).path)


def _boundaries(length: int) -> list[int]:
    """Level pixels on a tile's last column / row: the first, the last inside, and the
    level's own last pixel (a partial read beyond the edge)."""
    last = (length - 1) // TILE * TILE - 1
    return sorted({TILE - 1, last, length - 1} - {-1})


def _cases(dims):
    """``(level, px, py)`` in level pixels: a boundary in x only, in y only, in both."""
    for level, (w, h) in enumerate(dims):
        bx, by = _boundaries(w), _boundaries(h)
        mid_x, mid_y = TILE + TILE // 2, TILE // 2
        for px in bx:
            yield level, px, mid_y
        for py in by:
            yield level, mid_x, py
        for px, py in zip(bx, by, strict=False):
            yield level, px, py


def _reference(path: str, level: int, px: int, py: int, d: int) -> np.ndarray:
    """OpenSlide's own pixels of level ``level`` from level pixel ``(px, py)``, white
    where transparent (outside the slide)."""
    with openslide.OpenSlide(path) as osr:
        rgba = np.asarray(osr.read_region((px * d, py * d), level, (SIZE, SIZE)))
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    return rgb


def test_tile_edges_match_openslide_at_every_level(slide_path):
    with open_slide(slide_path, "tifffile") as tf, open_slide(slide_path, "openslide") as os_, \
            openslide.OpenSlide(slide_path) as osr:
        dims = tf.level_dimensions
        assert dims == os_.level_dimensions == ((1024, 768), (256, 192), (64, 48))
        downsamples = [round(d) for d in osr.level_downsamples]
        cases = list(_cases(dims))
        assert {c[0] for c in cases} == {0, 1, 2}
        for level, px, py in cases:
            d = downsamples[level]
            expected = _reference(slide_path, level, px, py, d)
            where = f"level {level} at level pixel ({px}, {py})"
            for slide in (tf, os_):
                got = slide.read_region((px * d, py * d), (SIZE, SIZE), level=level)
                np.testing.assert_array_equal(got, expected, err_msg=f"{slide.backend} {where}")


@pytest.mark.parametrize("level", [0, 1, 2])
def test_patch_reader_tile_edges_match_openslide(slide_path, level):
    with open_slide(slide_path, "tifffile") as slide:
        dims = slide.level_dimensions
        d = round(slide.level_downsamples[level])
    cases = [c for c in _cases(dims) if c[0] == level]
    for backend in (None, "tifffile"):
        with PatchReader(slide_path, PatchSpec(size=SIZE, level=level),
                         backend=backend) as reader:
            assert reader.uses_tiles
            for _, px, py in cases:  # one at a time: the cache does not hide a bad tile
                np.testing.assert_array_equal(
                    reader.read(px * d, py * d), _reference(slide_path, level, px, py, d),
                    err_msg=f"PatchReader({backend}) level {level} at ({px}, {py})")
            xs = [px * d for _, px, _ in cases]
            ys = [py * d for _, _, py in cases]
            for (_, px, py), patch in zip(cases, reader.iter_patches(xs, ys), strict=True):
                np.testing.assert_array_equal(patch, _reference(slide_path, level, px, py, d))


@pytest.mark.parametrize("level", [0, 1, 2])
def test_half_pixel_locations_round_half_up_at_tile_edges(slide_path, level):
    """A level-0 location half a level pixel before a boundary reads from the boundary
    pixel (``floor(x / d + 0.5)``); half a pixel after, from the next one; in x and y."""
    with open_slide(slide_path, "tifffile") as tf, open_slide(slide_path, "openslide") as os_:
        d = round(tf.level_downsamples[level])
        w, h = tf.level_dimensions[level]
        for px, py in [(TILE - 1, TILE + 3), (TILE + 5, TILE - 1), (TILE - 1, TILE - 1)]:
            if px >= w or py >= h:
                continue
            for shift in (-0.5, 0.5):
                x0, y0 = (px + shift) * d, (py + shift) * d
                want = (math.floor(px + shift + 0.5), math.floor(py + shift + 0.5))
                expected = _reference(slide_path, level, *want, d)
                for slide in (tf, os_):
                    got = slide.read_region((x0, y0), (SIZE, SIZE), level=level)
                    np.testing.assert_array_equal(
                        got, expected, err_msg=f"{slide.backend} level {level} at {x0, y0}")
