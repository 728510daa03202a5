"""open_slide: backend choice, fallback, errors; metadata of real and synthetic slides."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from exaslide.errors import LevelError, SlideOpenError, SlideReadError, StorageError
from exaslide.slides import open_slide


def test_synthetic_slide_metadata_same_in_both_backends(synth_slide):
    with open_slide(synth_slide.path) as a, open_slide(synth_slide.path, "tifffile") as b:
        assert a.backend == "openslide" and b.backend == "tifffile"
        assert a.level_dimensions == b.level_dimensions == tuple(synth_slide.level_dimensions)
        assert a.level_count == 3
        assert a.mpp == pytest.approx((0.5, 0.5)) and b.mpp == pytest.approx((0.5, 0.5))
        assert a.vendor == b.vendor == "generic-tiff"
        assert a.level_downsamples == pytest.approx(b.level_downsamples)


@pytest.mark.parametrize(("level", "aligned", "size"), [
    (0, True, (512, 512)),     # tile-aligned
    (0, False, (333, 257)),    # unaligned, several tiles
    (1, True, (200, 150)),     # a lower level
    (2, None, (192, 144)),     # the whole smallest level
])
def test_pixels_identical_between_backends(synth_slide, level, aligned, size):
    cx, cy = synth_slide.layout.tumours[0].centroid.coords[0]  # inside tissue
    location = (0, 0) if aligned is None else (int(cx) // 256 * 256, int(cy) // 256 * 256)
    if aligned is False:
        location = (int(cx) - 101, int(cy) - 77)
    with open_slide(synth_slide.path) as a, open_slide(synth_slide.path, "tifffile") as b:
        pa, pb = a.read_region(location, size, level), b.read_region(location, size, level)
    assert pa.shape == (size[1], size[0], 3) and pa.dtype == np.uint8
    np.testing.assert_array_equal(pa, pb)
    assert pa.std() > 5  # real content, not a blank canvas


def test_out_of_bounds_is_white_and_fully_outside_is_an_error(synth_slide):
    with open_slide(synth_slide.path) as slide:
        w, h = slide.dimensions
        edge = slide.read_region((w - 10, h - 10), (20, 20))
        assert (edge[10:, :] == 255).all() and (edge[:, 10:] == 255).all()
        assert not (edge[:10, :10] == 255).all()
        with pytest.raises(SlideReadError, match="outside the slide"):
            slide.read_region((w + 5, 0), (10, 10))
        with pytest.raises(SlideReadError, match="must be positive"):
            slide.read_region((0, 0), (0, 10))
        with pytest.raises(LevelError, match=r"level 7 does not exist.*level 0: 3072x2304"):
            slide.read_region((0, 0), (10, 10), level=7)


def test_best_level_and_mpp_reads(synth_slide):
    with open_slide(synth_slide.path) as slide:
        assert slide.best_level(1.0) == 0
        assert slide.best_level(3.7) == 0
        assert slide.best_level(3.9) == 1  # within the 5% tolerance of level 1
        assert slide.best_level(4.0) == 1
        assert slide.best_level(100.0) == 2
        assert slide.best_level(mpp=2.0) == 1
        with pytest.raises(LevelError, match=r"finer than the finest level.*level 0"):
            slide.best_level(mpp=0.1)
        patch = slide.read_region((512, 512), (100, 80), mpp=1.0)
        assert patch.shape == (80, 100, 3)
        ref = slide.read_region((512, 512), (200, 160), level=0)
        # area resampling by 2 of the level-0 pixels
        expected = ref.reshape(80, 2, 100, 2, 3).mean(axis=(1, 3))
        assert np.abs(patch.astype(float) - expected).mean() < 1.5


def test_thumbnail_keeps_aspect_ratio(synth_slide):
    with open_slide(synth_slide.path) as slide:
        thumb = slide.thumbnail(300)
    assert thumb.shape == (225, 300, 3)


def test_plain_image_is_a_one_level_slide(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "figure.png")
    with open_slide(tmp_path / "figure.png") as slide:
        assert slide.backend == "image" and slide.level_dimensions == ((80, 60),)
        assert slide.mpp is None
        np.testing.assert_array_equal(slide.read_region((0, 0), (80, 60)), arr)
        with pytest.raises(LevelError, match="no resolution metadata"):
            slide.read_region((0, 0), (10, 10), mpp=0.5)


def test_missing_unknown_and_truncated_files(tmp_path, synth_slide):
    with pytest.raises(SlideOpenError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SlideOpenError, match="not a recognised slide"):
        open_slide(tmp_path / "notes.txt")
    with pytest.raises(StorageError, match=r"127\.0\.0\.1:9/slide\.svs: cannot reach"):
        open_slide("http://127.0.0.1:9/slide.svs")  # nothing listens on the discard port
    with pytest.raises(SlideOpenError, match="unknown backend"):
        open_slide(synth_slide.path, backend="nonsense")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99, 0.9999])
def test_truncated_slides_are_refused_at_open(synth_slide, tmp_path, keep):
    """Cut anywhere (even just the last bytes of the smallest level) a pyramid is refused,
    never opened as a smaller pyramid or as a plain first-page image."""
    data = synth_slide.path.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SlideOpenError, match=r"cut\.tif.*(truncated|damaged|Short read)"):
        open_slide(tmp_path / "cut.tif")


def test_truncated_real_svs_is_refused(shared_data, tmp_path):
    data = (shared_data / "slides/aperio/CMU-1-Small-Region.svs").read_bytes()
    (tmp_path / "cut.svs").write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideOpenError, match=r"cut\.svs"):
        open_slide(tmp_path / "cut.svs")


def test_file_url_is_accepted(synth_slide):
    with open_slide(synth_slide.path.as_uri()) as slide:
        assert slide.dimensions == (3072, 2304)


# ----------------------------------------------------------------- real files (optional)
def test_cmu_small_region_both_backends_identical(shared_data):
    path = shared_data / "slides/aperio/CMU-1-Small-Region.svs"
    with open_slide(path) as a, open_slide(path, backend="tifffile") as b:
        assert a.vendor == b.vendor == "aperio"
        assert a.dimensions == b.dimensions == (2220, 2967)
        assert a.mpp == b.mpp == (0.499, 0.499)
        assert a.objective_power == b.objective_power == 20.0
        assert sorted(a.associated_images) == ["label", "macro", "thumbnail"]
        assert "thumbnail" in b.associated_images
        np.testing.assert_array_equal(a.read_level(0), b.read_level(0))
        np.testing.assert_array_equal(a.read_region((1234, 567), (300, 200)),
                                      b.read_region((1234, 567), (300, 200)))
        assert a.associated_images["label"].shape[2] == 3


def test_broken_fixtures_give_clear_errors(shared_data):
    fixtures = shared_data / "slides/openslide-python-fixtures"
    with pytest.raises(SlideOpenError, match=r"unopenable.tiff.*Unsupported TIFF compression"):
        open_slide(fixtures / "unopenable.tiff")
    with open_slide(fixtures / "unreadable.svs") as slide, \
            pytest.raises(SlideReadError, match=r"unreadable.svs: cannot read region"):
        slide.read_region((0, 0), (16, 16))


def test_dicom_qptiff_and_ome(shared_data):
    with open_slide(shared_data / "slides/dicom/highdicom_sm_image.dcm") as dcm:
        assert dcm.backend == "openslide" and dcm.dimensions == (50, 50)
    with pytest.raises(SlideOpenError, match="pathml_small_dicom"):
        open_slide(shared_data / "slides/dicom/pathml_small_dicom_TCGA-XK-AAJU.dcm")
    with open_slide(shared_data / "slides/qptiff/small_vectra.qptiff") as qp:
        assert qp.backend == "tifffile" and qp.vendor == "qptiff"
        assert qp.dimensions == (1920, 1440) and qp.mpp == (0.5, 0.5)
        rgb = qp.read_region((0, 0), (1920, 1440))
        # DAPI (channel 0) is drawn in the file's own colour, blue
        assert rgb[..., 2].mean() > 5 and rgb.dtype == np.uint8
    with open_slide(shared_data / "slides/ome-tiff/multi-channel-z-series.ome.tif") as ome:
        assert ome.backend == "tifffile" and ome.vendor == "ome-tiff"
        assert ome.dimensions == (439, 167)
        assert ome.read_region((0, 0), (439, 167)).shape == (167, 439, 3)


def test_boxes_tiff_levels_match_openslide(shared_data):
    path = shared_data / "slides/openslide-python-fixtures/boxes.tiff"
    with open_slide(path) as a, open_slide(path, backend="tifffile") as b:
        assert a.level_dimensions == b.level_dimensions
        assert a.mpp == pytest.approx(b.mpp)
        np.testing.assert_array_equal(a.read_level(0), b.read_level(0))
