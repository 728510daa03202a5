"""Samplers and label rules against the ground truth of synthetic slides."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from exaslide.annotations import read_annotations
from exaslide.patches import PatchError, PatchSpec, SamplingOptions, is_blank, sample_patches
from exaslide.slides import open_slide


@pytest.fixture(scope="module")
def slide_and_annotations(synth_slide):
    with open_slide(synth_slide.path) as slide:
        yield slide, read_annotations(synth_slide.annotation_path), synth_slide.layout


def _centres_in_tumour(layout, sampled):
    f = sampled.footprint
    return shapely.contains_xy(layout.tumour_region, sampled.x + f / 2, sampled.y + f / 2)


def test_grid_covers_tissue_on_the_grid(slide_and_annotations):
    slide, annotations, layout = slide_and_annotations
    sampled = sample_patches(slide, annotations, PatchSpec(size=128), SamplingOptions())
    assert len(sampled) > 50
    assert (sampled.x % 128 == 0).all() and (sampled.y % 128 == 0).all()
    assert (sampled.x + 128 <= 3072).all() and (sampled.y + 128 <= 2304).all()
    assert (sampled.tissue_fraction >= 0.5).all()
    # every grid cell whose true tissue fraction is high is present
    cells = [shapely.box(x, y, x + 128, y + 128) for x in range(0, 2945, 128)
             for y in range(0, 2177, 128)]
    full = [c for c in cells if c.intersection(layout.tissue).area > 0.9 * c.area]
    found = set(zip(sampled.x.tolist(), sampled.y.tolist(), strict=True))
    assert sum((int(c.bounds[0]), int(c.bounds[1])) in found for c in full) == len(full)
    # centre rule: labels agree with the true tumour region
    truth = _centres_in_tumour(layout, sampled)
    assert ((sampled.label == "tumour") == truth).mean() > 0.97
    assert (sampled.label == "tumour").sum() >= 10


def test_fraction_rule_stride_and_region(slide_and_annotations):
    slide, annotations, layout = slide_and_annotations
    opts = SamplingOptions(label_rule="fraction", tumour_threshold=0.3)
    sampled = sample_patches(slide, annotations, PatchSpec(size=128), opts)
    np.testing.assert_array_equal(sampled.label == "tumour", sampled.tumour_fraction >= 0.3)
    dense = sample_patches(slide, annotations, PatchSpec(size=128), SamplingOptions(stride=64))
    assert 3.2 * len(sampled) < len(dense) < 4.8 * len(sampled)
    region = layout.tumours[0].buffer(200)
    inside = sample_patches(slide, annotations, PatchSpec(size=128), SamplingOptions(),
                            region=region)
    assert 0 < len(inside) < len(sampled)
    assert shapely.contains_xy(region, inside.x + 64, inside.y + 64).all()


def test_random_per_class_is_seeded_and_reports_shortfall(slide_and_annotations):
    slide, annotations, layout = slide_and_annotations
    opts = SamplingOptions(sampler="random", per_class=60, seed=1)
    a = sample_patches(slide, annotations, PatchSpec(size=128), opts, key="s1")
    b = sample_patches(slide, annotations, PatchSpec(size=128), opts, key="s1")
    c = sample_patches(slide, annotations, PatchSpec(size=128), opts, key="s2")
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert a.counts() == {"tumour": 60, "normal": 60} and a.found == a.counts()
    assert (_centres_in_tumour(layout, a)[a.label == "tumour"]).mean() > 0.95
    greedy = sample_patches(slide, annotations, PatchSpec(size=128),
                            SamplingOptions(sampler="random", per_class=100_000), key="s1")
    assert greedy.requested == {"tumour": 100_000, "normal": 100_000}
    assert 0 < greedy.found["tumour"] < greedy.found["normal"] < 100_000


def test_physical_size_and_bad_specs(slide_and_annotations):
    slide, annotations, _ = slide_and_annotations
    sampled = sample_patches(slide, annotations, PatchSpec(size=64, level=None, mpp=2.0),
                             SamplingOptions())
    assert sampled.footprint == pytest.approx(256.0)  # 64 px at 2 um/px on a 0.5 um/px slide
    with pytest.raises(PatchError, match="exactly one"):
        sample_patches(slide, None, PatchSpec(level=0, mpp=1.0), SamplingOptions())
    with pytest.raises(PatchError, match="unknown sampler"):
        sample_patches(slide, None, PatchSpec(), SamplingOptions(sampler="spiral"))
    from exaslide.errors import LevelError

    with pytest.raises(LevelError, match="finer than the finest level"):
        sample_patches(slide, None, PatchSpec(level=None, mpp=0.1), SamplingOptions())


def test_blank_test():
    rng = np.random.default_rng(0)
    tissue = rng.integers(80, 220, (64, 64, 3), dtype=np.uint8)
    glass = np.full((64, 64, 3), 240, np.uint8) + rng.integers(0, 10, (64, 64, 3), np.uint8)
    black = rng.integers(0, 20, (64, 64, 3), dtype=np.uint8)
    flat = np.full((64, 64, 3), 128, np.uint8)
    assert not is_blank(tissue)
    assert is_blank(glass) and is_blank(black) and is_blank(flat)
    half = glass.copy()
    half[:32] = tissue[:32]
    assert not is_blank(half)


def test_random_quota_is_filled_under_strict_rules(slide_and_annotations):
    slide, annotations, _ = slide_and_annotations
    strict = {"label_rule": "fraction", "tumour_threshold": 0.8, "min_tissue": 0.8}
    every = sample_patches(slide, annotations, PatchSpec(size=128),
                           SamplingOptions(sampler="random", per_class=10**6, **strict))
    available = every.found["tumour"]
    assert available >= 50
    some = sample_patches(slide, annotations, PatchSpec(size=128),
                          SamplingOptions(sampler="random", per_class=available - 2, **strict))
    assert some.found["tumour"] == available - 2


def test_slide_without_mpp_and_mask_cap(tmp_path, monkeypatch):
    import tifffile

    rng = np.random.default_rng(0)
    image = np.full((3000, 4000, 3), 245, np.uint8)
    image[500:2500, 800:3200] = rng.integers(120, 200, (2000, 2400, 3), dtype=np.uint8)
    image[500:2500, 800:3200, 1] //= 2  # pink-ish: saturated
    tifffile.imwrite(tmp_path / "nompp.tif", image, tile=(256, 256), photometric="rgb")
    monkeypatch.setattr("exaslide.patches.sampling.MAX_MASK_PIXELS", 100_000)
    with open_slide(tmp_path / "nompp.tif") as slide:
        assert slide.mpp is None
        sampled = sample_patches(slide, None, PatchSpec(size=32), SamplingOptions())
    assert sampled.mask.labels.size <= 101_000  # capped (+ rounding): coarser mask
    x_mid, y_mid = sampled.x + 16, sampled.y + 16
    inside = (x_mid > 800) & (x_mid < 3200) & (y_mid > 500) & (y_mid < 2500)
    assert len(sampled) > 3000 and inside.mean() > 0.97


def test_patch_spec_takes_mpp_without_level_none():
    assert PatchSpec(224, mpp=0.5) == PatchSpec(224, level=None, mpp=0.5)
    PatchSpec(224, mpp=0.5).validate()
    assert PatchSpec().level == 0 and PatchSpec(level=2).level == 2
    with pytest.raises(PatchError, match="exactly one of level or mpp"):
        PatchSpec(224, level=1, mpp=0.5).validate()
