"""Label masks: values, agreement with ground truth, outputs, and the real CAMELYON16 file."""

from __future__ import annotations

import json
from types import MappingProxyType

import numpy as np
import openslide
import pytest
import shapely

from exaslide.annotations import read_annotations
from exaslide.errors import LevelError, MaskError
from exaslide.masks import NORMAL, TUMOUR, annotation_area_um2, make_label_mask, rasterize
from exaslide.masks.run import MaskOptions, mask_slide
from exaslide.slides import Slide, open_slide


def test_label_mask_matches_ground_truth(synth_slide):
    annotations = read_annotations(synth_slide.annotation_path)
    with open_slide(synth_slide.path) as slide:
        mask = make_label_mask(slide, annotations, level=1)
    truth = rasterize(synth_slide.layout.tumour_region, mask.labels.shape, downsample=4.0)
    np.testing.assert_array_equal(mask.labels == TUMOUR, truth)
    assert synth_slide.layout.exclusions  # the fixture has exclusion islands...
    inside_hole = rasterize(shapely.union_all(synth_slide.layout.exclusions),
                            mask.labels.shape, downsample=4.0)
    assert (mask.labels[inside_hole] == NORMAL).mean() > 0.95  # ...which are normal tissue
    assert set(np.unique(mask.labels)) == {0, 1, 2}
    areas = mask.areas_um2()
    exact = annotation_area_um2(annotations, (0.5, 0.5))
    assert areas["tumour"] == pytest.approx(exact, rel=0.01)


def test_mask_by_mpp_and_errors(synth_slide, monkeypatch):
    with open_slide(synth_slide.path) as slide:
        mask = make_label_mask(slide, None, mpp=8.0)
        assert mask.labels.shape == (144, 192) and mask.mpp == pytest.approx((8.0, 8.0))
        assert not (mask.labels == TUMOUR).any()  # no annotations: no tumour
        with pytest.raises(MaskError, match="exactly one"):
            make_label_mask(slide, None)
        monkeypatch.setattr("exaslide.masks.label.MAX_READ_PIXELS", 4 * 1_000_000)
        with pytest.raises(MaskError, match="too large; choose a coarser level"):
            make_label_mask(slide, None, level=0)  # 7 MP > the (lowered) 1 MP limit
        with pytest.raises(LevelError, match="does not exist"):
            make_label_mask(slide, None, level=9)


def test_outputs_written_and_tiff_opens_in_openslide(synth_slide, tmp_path):
    summary = mask_slide(synth_slide.path, synth_slide.annotation_path, tmp_path, "s",
                         MaskOptions(level=1))
    for suffix in ("_mask.png", "_overlay.png", "_figure.png", "_mask.tif", "_summary.json"):
        assert (tmp_path / f"s{suffix}").stat().st_size > 0
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left
    on_disk = json.loads((tmp_path / "s_summary.json").read_text())
    assert on_disk["pixel_counts"] == summary["pixel_counts"]
    assert on_disk["areas_um2"]["tumour"] == pytest.approx(
        on_disk["annotation_tumour_area_um2"], rel=0.01)
    from PIL import Image

    png = np.asarray(Image.open(tmp_path / "s_mask.png"))
    assert png.shape == (576, 768) and set(np.unique(png)) == {0, 1, 2}
    tif = openslide.OpenSlide(tmp_path / "s_mask.tif")
    assert tif.level_count >= 2 and tif.level_dimensions[0] == (768, 576)
    assert float(tif.properties["openslide.mpp-x"]) == pytest.approx(2.0)
    level0 = np.asarray(tif.read_region((0, 0), 0, (768, 576)))[..., 0]
    np.testing.assert_array_equal(level0, png)


class GlassSlide(Slide):
    """A blank CAMELYON-sized slide (110,000 x 110,000 at 0.243 um/px, 8 levels of
    downsample 2): the real test_040 annotations without its 5 GB image."""

    backend = vendor = "glass"
    level_dimensions = tuple((110_000 // 2**k, 110_000 // 2**k) for k in range(8))
    mpp = (0.243, 0.243)
    objective_power = 40.0
    properties = MappingProxyType({})
    associated_images = MappingProxyType({})

    def _read_pixels(self, level, x, y, width, height):
        return np.full((height, width, 3), 245, np.uint8)


def test_camelyon16_test_040_label_mask_at_level_5(shared_data):
    """The 66,697-vertex test_040.xml: 34 tumour and 44 exclusion polygons; the mask's
    tumour area equals shapely's area of (tumour minus exclusion) within 1%."""
    annotations = read_annotations(shared_data / "annotations/camelyon16/test_040.xml")
    assert annotations.labels() == {"tumour": 34, "exclusion": 44}
    mask = make_label_mask(GlassSlide("test_040"), annotations, level=5)
    assert mask.labels.shape == (3437, 3437)
    exact = annotation_area_um2(annotations, (0.243, 0.243))
    assert mask.areas_um2()["tumour"] == pytest.approx(exact, rel=0.01)
    assert mask.counts()["normal"] == 0  # blank glass: no tissue, exclusions are background
    assert not mask.outside and not mask.unused_labels


def test_annotations_outside_the_slide_are_reported(synth_slide, tmp_path, caplog):
    from shapely.geometry import box

    from exaslide.annotations import Annotation, write_annotations

    far, edge = box(1e9, 1e9, 1e9 + 500, 1e9 + 500), box(3000, 2200, 3300, 2500)
    items = [Annotation(geometry=g, label="tumour", group="_0", name=n, kind="polygon",
                        source=g) for g, n in ((far, "far"), (edge, "edge"))]
    path = write_annotations(items, tmp_path / "wrong.xml")
    summary = mask_slide(synth_slide.path, path, tmp_path, "w", MaskOptions(level=2))
    assert summary["annotations_outside_slide"] == ["far"]
    assert summary["annotations_crossing_border"] == ["edge"]
    assert summary["pixel_counts"]["tumour"] > 0  # the clipped part of "edge"
    # the exact area counts only what lies on the slide: the 72 x 104 px part of "edge"
    assert summary["annotation_tumour_area_um2"] == pytest.approx(72 * 104 * 0.25)
    assert "lie entirely outside" in caplog.text


def test_cohort_run_removes_stale_temporaries(synth_slide, tmp_path):
    from exaslide.manifest import read_manifest
    from exaslide.masks.run import mask_cohort

    (tmp_path / "m.csv").write_text("slide_id,path,annotation,label,split\n"
                                    f"s,{synth_slide.path},,normal,train\n")
    out = tmp_path / "out"
    out.mkdir()
    for name in (".mask_status.0badf00d.tmp.json", ".s_mask.12345678.tmp.png",
                 ".s_summary.9abcdef0.tmp.json"):
        (out / name).write_text("half-written by a killed run")
    [result] = mask_cohort(read_manifest(tmp_path / "m.csv"), out, MaskOptions(level=2))
    assert result.status == "done"
    assert [p.name for p in out.glob(".*")] == [".exaslide.lock"]
