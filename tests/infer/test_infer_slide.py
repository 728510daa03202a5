"""One slide: grid, tissue-only cells, known-model values, the four files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
import torch
from colour_model import colour_meta

from exaslide.errors import InferenceError
from exaslide.evaluate.heatmap import read_heatmap
from exaslide.infer import infer_slide, model_inputs, output_paths, plan_grid
from exaslide.infer.outputs import tiff_values
from exaslide.infer.slide import resolve_device
from exaslide.models import create_model
from exaslide.patches.spec import PatchSpec
from exaslide.slides import open_slide


@pytest.fixture(scope="module")
def heatmap_dir(synth_slide, tmp_path_factory):
    """The colour model's heatmap of the synthetic slide (32 px at level 1: 128 px cells)."""
    out = tmp_path_factory.mktemp("heatmap")
    model = create_model("test-colour", num_classes=2)
    infer_slide(model, colour_meta(), synth_slide.path, out, batch_size=16, workers=2)
    return out


def _boxes(heat, rows, cols):
    """Level-0 patch boxes of cells (rows, cols) of a heatmap."""
    half = heat.meta["patch_footprint"] / 2
    x, y = heat.cell_centres(rows, cols)
    return shapely.box(x - half, y - half, x + half, y + half)


def test_grid_and_values(synth_slide, heatmap_dir):
    heat = read_heatmap(heatmap_dir, "slide")
    assert heat.shape == (18, 24)  # ceil(2304 / 128), ceil(3072 / 128)
    assert heat.meta["cell"] == 128 and heat.meta["patch_footprint"] == 128.0
    assert heat.meta["level0_size"] == [3072, 2304] and heat.meta["mpp"] == [0.5, 0.5]
    assert heat.meta["origin"] == [0, 0] and heat.meta["classes"] == ["normal", "tumour"]
    assert heat.meta["model"] == "test-colour"
    p = heat.probabilities
    computed = np.isfinite(p)
    assert computed.sum() == heat.meta["computed_cells"] > 20
    assert ((p[computed] >= 0) & (p[computed] <= 1)).all()
    rows, cols = np.indices(p.shape)
    boxes = _boxes(heat, rows, cols)
    layout = synth_slide.layout
    far = ~shapely.intersects(boxes, layout.tissue.buffer(64))
    assert far.any() and not computed[far].any()  # NaN away from tissue
    tumour_share = shapely.area(shapely.intersection(boxes, layout.tumour_region)) / 128**2
    tumour = (tumour_share > 0.5) & computed
    normal = shapely.within(boxes, layout.tissue) & computed & \
        ~shapely.intersects(boxes, shapely.union_all(layout.tumours))
    assert tumour.sum() >= 3 and normal.sum() >= 20
    assert p[tumour].mean() > 0.7 > 0.3 > p[normal].mean()


def test_files_written_atomically(synth_slide, heatmap_dir):
    import openslide
    from PIL import Image

    paths = output_paths(heatmap_dir, "slide")
    assert all(p.is_file() for p in paths.values())
    assert not [p for p in heatmap_dir.iterdir() if p.name.startswith(".")]
    heat = read_heatmap(paths["npy"])
    with openslide.OpenSlide(str(paths["tiff"])) as tif:
        assert tif.dimensions == (24, 18)
        assert float(tif.properties["openslide.mpp-x"]) == pytest.approx(64.0)
        assert float(tif.properties["openslide.mpp-y"]) == pytest.approx(64.0)
        pixels = np.asarray(tif.read_region((0, 0), 0, (24, 18)).convert("L"))
    expected = tiff_values(heat.probabilities)  # 1 + round(254 p), 0 where not computed
    assert np.array_equal(pixels, expected)
    assert ((pixels == 0) == np.isnan(heat.probabilities)).all()
    overlay = np.asarray(Image.open(paths["overlay"]))
    assert overlay.shape == (768, 1024, 3)
    meta = json.loads(paths["json"].read_text())
    assert meta["slide"] == str(synth_slide.path) and meta["slide_id"] == "slide"


def test_failure_leaves_no_partial_outputs(synth_slide, tmp_path, monkeypatch):
    import exaslide.infer.outputs as outputs

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "save_heatmap_tiff", broken)
    with pytest.raises(OSError, match="disk full"):
        infer_slide(create_model("test-colour"), colour_meta(), synth_slide.path, tmp_path,
                    workers=0)
    names = {p.name for p in tmp_path.iterdir()}
    assert "slide.heatmap.json" not in names and "slide.heatmap.npy" not in names
    assert not [n for n in names if n.startswith(".")]


def test_mpp_spec_stride_and_readers_agree(synth_slide, tmp_path, heatmap_dir):
    """Patches at 2 um/px are the level-1 patches; half-footprint stride doubles the grid;
    threads and the inline reader give the same map."""
    model = create_model("test-colour")
    meta = colour_meta(level=None, mpp=2.0)
    same = infer_slide(model, meta, synth_slide.path, tmp_path / "a", slide_id="s",
                       workers=0, batch_size=7)
    np.testing.assert_allclose(read_heatmap(same).probabilities,
                               read_heatmap(heatmap_dir, "slide").probabilities,
                               atol=1e-5, equal_nan=True)
    fine = infer_slide(model, meta, synth_slide.path, tmp_path / "b", slide_id="s",
                       stride=64, workers=3)
    heat = read_heatmap(fine)
    assert heat.shape == (36, 48) and heat.meta["cell"] == 64
    assert heat.meta["patch_footprint"] == 128.0
    assert np.isfinite(heat.probabilities).sum() > 3 * read_heatmap(same).meta[
        "computed_cells"]


def test_plan_grid_patch_corners(synth_slide):
    with open_slide(synth_slide.path) as slide:
        grid = plan_grid(slide, PatchSpec(size=50, level=0), stride=40, min_tissue=0.5)
    assert (grid.rows, grid.cols) == (58, 77) and grid.footprint == 50
    assert np.array_equal(grid.xs, (grid.index_c + 0.5) * 40 - 25)
    assert np.array_equal(grid.ys, (grid.index_r + 0.5) * 40 - 25)
    assert (grid.tissue_fraction >= 0.5).all()
    order = grid.index_r * grid.cols + grid.index_c
    assert (np.diff(order) > 0).all()  # raster order


def test_bad_meta_class_and_device():
    with pytest.raises(InferenceError, match="no patch size"):
        model_inputs({"classes": ["normal", "tumour"]})
    with pytest.raises(InferenceError, match="'tumor' is not one of"):
        model_inputs(colour_meta(), class_name="tumor")
    assert model_inputs(colour_meta(), "normal").class_index == 0
    if not torch.cuda.is_available():
        with pytest.raises(InferenceError, match="CUDA is not available"):
            resolve_device("cuda")
