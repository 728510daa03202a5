"""The heatmap TIFF: a computed probability of 0 differs from a cell not computed."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from exaslide.infer.outputs import (
    TIFF_NODATA,
    save_heatmap_tiff,
    tiff_probabilities,
    tiff_values,
)
from exaslide.slides import open_slide


@pytest.fixture
def probabilities():
    """600 x 700 cells (a 3-level pyramid at 256-px tiles), most not computed; a block of
    computed 0s, one 1, one 0.5, and a lone computed 0 in a 2 x 2 block of NaN."""
    p = np.full((600, 700), np.nan, np.float32)
    p[10:200, 5:600] = 0.0
    p[50, 50], p[60, 60] = 1.0, 0.5
    p[401, 401] = 0.0
    return p


def test_values_encode_probability_and_not_computed(probabilities):
    values = tiff_values(probabilities)
    assert values[0, 0] == TIFF_NODATA == 0  # not computed
    assert values[10, 5] == 1 and values[50, 50] == 255 and values[60, 60] == 128
    back = tiff_probabilities(values)
    assert np.array_equal(np.isnan(back), np.isnan(probabilities))
    assert np.nanmax(np.abs(back - probabilities)) <= 0.5 / 254 + 1e-7
    assert tiff_values(np.array([[-0.5, 1.5, np.inf]])).tolist() == [[1, 255, 0]]


def test_file_keeps_zero_apart_from_not_computed(tmp_path, probabilities):
    path = save_heatmap_tiff(tmp_path / "s.heatmap.tif", probabilities, 128, (0.25, 0.25))
    assert [p.name for p in tmp_path.iterdir()] == ["s.heatmap.tif"]
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3
        assert all(page.tags["GDAL_NODATA"].value == "0" for page in tif.pages)
        x_res = tif.pages[0].tags["XResolution"].value  # px per cm: 0.25 um x 128 a cell
        assert x_res[0] / x_res[1] == pytest.approx(1e4 / 32)
        base = tif.pages[0].asarray()
        assert base[0, 0] == 0 and base[10, 5] == 1  # uncomputed != computed 0
        assert np.array_equal(base, tiff_values(probabilities))
        level1 = tif.pages[1].asarray()  # 2 x 2 maximum: a computed cell wins over NaN
        assert level1[200, 200] == 1 and level1[0, 0] == 0 and level1[25, 25] == 255


def test_openslide_and_exaslide_read_it(tmp_path, probabilities):
    import openslide

    path = save_heatmap_tiff(tmp_path / "s.heatmap.tif", probabilities, 128, (0.25, 0.25))
    with openslide.OpenSlide(str(path)) as osr:
        assert osr.dimensions == (700, 600) and osr.level_count == 3
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(32.0)
        grey = np.asarray(osr.read_region((0, 0), 0, (700, 600)).convert("L"))
    assert np.array_equal(grey, tiff_values(probabilities))
    for backend in ("tifffile", "openslide"):
        with open_slide(path, backend=backend) as slide:
            rgb = slide.read_region((0, 0), (700, 600), level=0)
        assert np.array_equal(rgb[..., 0], tiff_values(probabilities)), backend
        decoded = tiff_probabilities(rgb[..., 0])
        assert np.isnan(decoded[0, 0]) and decoded[10, 5] == 0.0
