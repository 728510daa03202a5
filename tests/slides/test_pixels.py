"""RGBA to RGB: composited on white, exactly, whether or not the region is opaque."""

from __future__ import annotations

import numpy as np
import pytest

from exaslide.slides.pixels import rgba_to_rgb


def _reference(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:].astype(np.float64) / 255
    return np.floor(rgba[..., :3] * a + 255 * (1 - a) + 0.5).astype(np.uint8)


@pytest.mark.parametrize("opaque", [True, False])
def test_rgba_to_rgb_composites_on_white(opaque):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    if opaque:
        rgba[..., 3] = 255
    else:
        rgba[0, 0, 3] = 0  # fully transparent: white
    rgb = rgba_to_rgb(rgba)
    assert rgb.shape == (37, 53, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    error = np.abs(rgb.astype(int) - _reference(rgba)).max()
    assert error == 0 if opaque else error <= 1  # integer rounding of a blend: off by one
    assert (rgb[0, 0] == 255).all() or opaque
    view = np.asarray(rgba)  # a read-only array, as np.asarray(PIL image) gives
    view.flags.writeable = False
    assert np.array_equal(rgba_to_rgb(view), rgb)
    assert np.array_equal(rgba_to_rgb(rgba[:, ::2]), rgb[:, ::2])  # not contiguous


def test_rgba_to_rgb_keeps_other_dtypes_and_shapes():
    """Only (H, W, 4) uint8 takes the cv2 path; batches and other dtypes keep numpy's."""
    batch = np.full((2, 3, 5, 4), 255, np.uint8)
    batch[..., 0] = 7
    assert rgba_to_rgb(batch).shape == (2, 3, 5, 3) and (rgba_to_rgb(batch)[..., 0] == 7).all()
    wide = np.full((3, 5, 4), 255, np.uint16)
    assert rgba_to_rgb(wide).dtype == np.uint16 and rgba_to_rgb(wide).shape == (3, 5, 3)
