"""MIL score heatmaps: patches at the cells of their centres, the geometry of a real
slide, and a slide whose footprint cannot be found."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from exaslide.heatmaps import read_heatmap
from exaslide.mil.bags import FeatureStore
from exaslide.mil.errors import MILError
from exaslide.mil.heatmaps import score_grid, write_score_heatmap
from exaslide.retrieval.store import write_info, write_part

sys.path.insert(0, str(Path(__file__).parent))
import mil_fixtures as fx


def test_scores_land_on_the_cells_of_the_patch_centres():
    x = np.array([0.0, 256.0, 300.0, 1000.0])
    y = np.array([0.0, 0.0, 10.0, 500.0])
    grid, cell = score_grid(x, y, np.array([0.1, 0.2, 0.9, 0.4]), 256.0, (1100, 800))
    assert cell == 256 and grid.shape == (4, 5)
    assert grid[0, 0] == pytest.approx(0.1)
    assert grid[0, 1] == pytest.approx(0.9)  # two patches share a cell: the higher score
    assert grid[2, 4] == pytest.approx(0.4)  # centre (1128, 628), clipped to the last column
    assert np.isnan(grid).sum() == grid.size - 3


def test_heatmap_takes_the_real_slides_size_and_resolution(synth_slide, tmp_path):
    store = tmp_path / "features"
    write_info(store, {"kind": "patches", "dim": 4, "model": "m", "model_path": None,
                       "patch": {"size": 64, "level": 1, "mpp": None}})
    coords = [(0, 0), (1024, 512), (2816, 2048)]
    table = pa.table({"key": ["a", "b", "c"], "slide_id": ["s"] * 3,
                      "x": pa.array([c[0] for c in coords], pa.int64()),
                      "y": pa.array([c[1] for c in coords], pa.int64()),
                      "level": pa.array([1] * 3, pa.int16()),
                      "size": pa.array([64] * 3, pa.int32())})
    write_part(store, "s", table, np.ones((3, 4), np.float32))
    path = write_score_heatmap(tmp_path / "h", FeatureStore(store), "s",
                               np.array([0.2, 0.5, 1.0]), slide_path=str(synth_slide.path),
                               classes=["normal", "tumour"], model="abmil",
                               score="attention")
    heatmap = read_heatmap(path)
    assert heatmap.level0_size == (3072, 2304) and heatmap.mpp == (0.5, 0.5)
    assert heatmap.cell == 256  # 64 px at level 1 (downsample 4)
    assert heatmap.probabilities[8, 11] == pytest.approx(1.0)
    assert heatmap.meta["slide"] == str(synth_slide.path)


def test_no_footprint_without_index_or_slide_is_one_line(tmp_path):
    store = tmp_path / "features"
    write_info(store, {"kind": "patches", "dim": fx.DIM, "model": "m", "model_path": None})
    fx.write_slide(store, "s", np.ones((3, fx.DIM)))
    (tmp_path / "extract" / "index" / "s.parquet").unlink()
    with pytest.raises(MILError, match=r"^s: no heatmap: the patch footprint is unknown"):
        write_score_heatmap(tmp_path / "h", FeatureStore(store), "s", np.ones(3),
                            slide_path=None, classes=["normal", "tumour"], model="abmil",
                            score="attention")


def test_overlapping_grid_patches_each_get_a_cell_like_infer():
    xs, ys = np.meshgrid(np.arange(0, 1024, 64.0), np.arange(0, 512, 64.0))  # stride 64
    x, y = xs.ravel(), ys.ravel()  # footprint 128: half-overlapping, as in the demo
    grid, cell = score_grid(x, y, np.arange(len(x), dtype=float), 128.0, (1152, 640))
    assert cell == 64 and np.isfinite(grid).sum() == len(x)  # no two patches share a cell
