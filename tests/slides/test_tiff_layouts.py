"""TIFF layouts beyond RGB pyramids: OME pyramids, planar, 16-bit, RGBA, bad metadata;
odd slide sizes; reads at the slide's edges."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from exaslide.errors import SlideOpenError
from exaslide.slides import open_slide
from exaslide.synth import SynthSpec, write_synthetic_slide


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_ome_pyramid_in_subifds_opens_with_tifffile_and_all_levels(tmp_path):
    path = tmp_path / "pyr.ome.tif"
    data = np.random.default_rng(1).integers(0, 4000, (3, 1024, 1024), dtype=np.uint16)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        meta = {"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
        tif.write(data, subifds=1, tile=(256, 256), metadata=meta)
        tif.write(data[:, ::2, ::2], subfiletype=1, tile=(256, 256))
    with open_slide(path) as slide:  # OpenSlide would see one level and no mpp
        assert slide.backend == "tifffile" and slide.vendor == "ome-tiff"
        assert slide.level_dimensions == ((1024, 1024), (512, 512))
        assert slide.mpp == pytest.approx((0.5, 0.5))
        rgb = slide.read_region((0, 0), (64, 64), level=1)
        assert rgb.dtype == np.uint8 and rgb.mean() > 30  # composite, not a dark 16-bit cast


def test_planar_separate_rgb_reads_like_contiguous(tmp_path):
    img = _rgb(300, 200)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(img, 2, 0), planarconfig="separate",
                     photometric="rgb", tile=(64, 64))
    with open_slide(tmp_path / "planar.tif", backend="tifffile") as slide:
        np.testing.assert_array_equal(slide.read_region((10, 20), (150, 200)),
                                      img[20:220, 10:160])


def test_16_bit_grey_is_grey_and_rgba_is_composited_on_white(tmp_path):
    grey = np.linspace(0, 60000, 128 * 128).reshape(128, 128).astype(np.uint16)
    tifffile.imwrite(tmp_path / "grey16.tif", grey, tile=(64, 64))
    with open_slide(tmp_path / "grey16.tif") as slide:
        rgb = slide.read_region((0, 0), (128, 128))
    assert (rgb[..., 0] == rgb[..., 2]).all() and rgb[0, 0, 0] < 5 and rgb[-1, -1, 0] > 250
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:32, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"],
                     tile=(64, 64))
    with open_slide(tmp_path / "rgba.tif", backend="tifffile") as slide:
        out = slide.read_region((0, 0), (64, 64))
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[-1, -1]) == (255, 255, 255)


def test_malformed_svs_metadata_does_not_crash(tmp_path):
    desc = "Aperio Image Library v11\n64x64 (64x64) JPEG/RGB Q=70|AppMag = x|MPP = n/a"
    tifffile.imwrite(tmp_path / "bad.svs", _rgb(64, 64), tile=(64, 64), description=desc,
                     photometric="rgb")
    with open_slide(tmp_path / "bad.svs", backend="tifffile") as slide:
        assert slide.vendor == "aperio" and slide.mpp is None and slide.objective_power is None


@pytest.fixture(scope="module")
def odd_slide(tmp_path_factory):
    """Sizes not divisible by the level factor: non-integer downsamples above level 0."""
    path = tmp_path_factory.mktemp("odd") / "odd.tif"
    return write_synthetic_slide(path, SynthSpec(width=3001, height=2043, tumours=2, seed=5))


def test_odd_sizes_identical_at_level_0_and_close_above(odd_slide):
    cx, cy = (int(v) for v in odd_slide.layout.tumours[0].centroid.coords[0])
    with open_slide(odd_slide.path) as a, open_slide(odd_slide.path, "tifffile") as b:
        assert a.level_dimensions == b.level_dimensions == ((3001, 2043), (750, 510), (187, 127))
        np.testing.assert_array_equal(a.read_region((cx - 111, cy - 77), (333, 257)),
                                      b.read_region((cx - 111, cy - 77), (333, 257)))
        np.testing.assert_array_equal(a.read_region((2900, 1950), (200, 200)),
                                      b.read_region((2900, 1950), (200, 200)))
        # above level 0 the downsample is 4.003, not 4: OpenSlide interpolates sub-pixel
        pa = a.read_region((cx, cy), (100, 80), level=1).astype(int)
        pb = b.read_region((cx, cy), (100, 80), level=1).astype(int)
        assert np.abs(pa - pb).mean() < 25


def test_resampled_reads_at_and_beyond_the_edges(odd_slide):
    with open_slide(odd_slide.path) as slide:
        h = slide.dimensions[1]
        tail = slide.read_region((0, h - 100), (500, 400), mpp=2.0)  # 1/4 inside
        assert tail.shape == (400, 500, 3)
        assert (tail[60:] == 255).all() and not (tail[:20, :300] == 255).all()
        assert slide.read_region((0, 0), (1, 1), mpp=1e9).shape == (1, 1, 3)
        thumb = slide.thumbnail((100, 100))
        assert thumb.shape == (68, 100, 3)


def test_half_pixel_locations_round_half_up(synth_slide):
    with open_slide(synth_slide.path, "tifffile") as slide:
        ref = slide.read_region((0, 0), (8, 1), level=1)[0]
        for x0 in (2, 6, 10, 14):  # x / 4 = 0.5, 1.5, 2.5, 3.5 -> columns 1, 2, 3, 4
            got = slide.read_region((x0, 0), (4, 1), level=1)[0]
            np.testing.assert_array_equal(got, ref[(x0 + 2) // 4 : (x0 + 2) // 4 + 4])


def test_ndpi_directories_are_not_walked(tmp_path):
    """NDPI's 32-bit offsets wrap past 4 GB: a file with the NDPI tag is not refused by
    the directory-chain check even when its next-directory offset looks out of range."""
    from exaslide.slides.tifffile_backend import tiff_structure_problem

    tifffile.imwrite(tmp_path / "plain.tif", _rgb(64, 64), tile=(64, 64))
    tifffile.imwrite(tmp_path / "ndpi.tif", _rgb(64, 64), tile=(64, 64),
                     extratags=[(65420, 4, 1, 1, True)])  # 4 = LONG
    for name in ("plain.tif", "ndpi.tif"):  # point the first directory's "next" far away
        data = bytearray((tmp_path / name).read_bytes())
        first = int.from_bytes(data[4:8], "little")
        count = int.from_bytes(data[first : first + 2], "little")
        at = first + 2 + 12 * count
        data[at : at + 4] = (10**9).to_bytes(4, "little")
        (tmp_path / name).write_bytes(bytes(data))
    assert "beyond the end" in tiff_structure_problem(str(tmp_path / "plain.tif"))
    assert tiff_structure_problem(str(tmp_path / "ndpi.tif")) is None
    # open_slide refuses the damaged plain TIFF whatever its backends would make of it
    with pytest.raises(SlideOpenError, match=r"plain\.tif: truncated or damaged TIFF"):
        open_slide(tmp_path / "plain.tif")
