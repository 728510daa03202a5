"""The read geometry: scalar and vectorised forms agree bit for bit, and a box's tile
range holds exactly the tiles with a pixel of the box inside the level."""

from __future__ import annotations

import numpy as np
import pytest

from exaslide.patches.geometry import level_box, level_boxes, tile_range, tile_ranges, tiles_of

#: (downsample, scale): level reads, and mpp reads resampled down (AREA) and up (LINEAR),
#: with the uneven downsamples and scales real slides have (2.0 and 4.0: exact .5 ties).
READS = [(1.0, 1.0), (4.0, 1.0), (4.000345, 1.0), (1.0, 1.8), (4.000345, 1.7999999),
         (16.00621, 0.98), (2.0, 0.5), (1.0, 1e-3)]


@pytest.mark.parametrize(("downsample", "scale"), READS)
def test_scalar_and_vectorised_boxes_agree(downsample, scale):
    rng = np.random.default_rng(int(downsample * 1000 + scale * 10))
    x = np.r_[rng.integers(-5000, 200_000, 4000), -1, 0, 1, 2, -2, 2**40 + 3]
    y = np.r_[rng.integers(-5000, 200_000, 4000), 0, -1, 2, 1, 2**33, -7]
    for size in (1, 8, 64, 224):
        boxes = level_boxes(x, y, downsample, scale, size)
        assert all(b.dtype == np.int64 for b in boxes)
        got = np.stack(boxes, 1).tolist()
        expected = [list(level_box(int(a), int(b), downsample, scale, size))
                    for a, b in zip(x, y, strict=True)]
        assert got == expected
        x0, y0, x1, y1 = boxes
        assert (x1 > x0).all() and (y1 > y0).all()
        if scale == 1.0:
            assert (x1 - x0 == size).all() and (y1 - y0 == size).all()


def _tiles_by_pixel(box, tile, level):
    """Every tile holding a pixel of the box inside the level (brute force)."""
    x0, y0, x1, y1 = box
    xs = [x for x in range(x0, x1) if 0 <= x < level[0]]
    ys = [y for y in range(y0, y1) if 0 <= y < level[1]]
    return sorted({(x // tile[0], y // tile[1]) for x in xs for y in ys},
                  key=lambda t: (t[1], t[0]))


@pytest.mark.parametrize(("tile", "level"), [((64, 64), (200, 200)), ((64, 32), (256, 100)),
                                             ((256, 256), (768, 576))])
def test_tile_ranges_hold_the_tiles_of_the_box_inside_the_level(tile, level):
    rng = np.random.default_rng(tile[0] + level[1])
    n = 600
    x0 = rng.integers(-2 * tile[0], level[0] + 2 * tile[0], n)
    y0 = rng.integers(-2 * tile[1], level[1] + 2 * tile[1], n)
    w, h = rng.integers(1, 3 * tile[0], n), rng.integers(1, 3 * tile[1], n)
    # past the right / bottom edge but inside the last, partial tile; touching edges
    lw, lh = level
    x0[:6], y0[:6] = [lw, lw + 3, 0, lw - 1, -10, 5], [0, 5, lh + 1, lh - 1, -10, lh]
    w[:6], h[:6] = 8, 8
    x1, y1 = x0 + w, y0 + h
    ranges = np.stack(tile_ranges(x0, y0, x1, y1, tile, level), 1).tolist()
    for k in range(n):
        box = (int(x0[k]), int(y0[k]), int(x1[k]), int(y1[k]))
        assert ranges[k] == list(tile_range(*box, tile, level))
        assert list(tiles_of(*box, tile, level)) == _tiles_by_pixel(box, tile, level), box
    assert list(tiles_of(lw + 3, 5, lw + 11, 13, tile, level)) == []  # in the grid's last
    assert list(tiles_of(-8, -8, 0, 0, tile, level)) == []  # tile, outside the level
