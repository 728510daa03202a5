"""Sampling reads a slide's integer-downsample levels from its stored tiles (faster than
OpenSlide) and gives exactly what sampling through OpenSlide gives."""

from __future__ import annotations

import numpy as np
import pytest

from exaslide.jobs import SlideEntry
from exaslide.patches import ExtractOptions, PatchSpec, SamplingOptions
from exaslide.patches.job import _SamplingSlide, open_for_sampling, plan_slide
from exaslide.slides import open_slide
from exaslide.synth import SynthSpec, write_synthetic_slide


@pytest.fixture(scope="module")
def odd_slide(tmp_path_factory):
    """3000 x 2100: levels 750 x 525 (downsample 4) and 188 x 131 (not an integer)."""
    out = tmp_path_factory.mktemp("odd") / "odd.tif"
    return write_synthetic_slide(out, SynthSpec(width=3000, height=2100, tumours=2, seed=6,
                                                top_level_max=200))


def test_integer_levels_come_from_tiles_the_others_from_openslide(odd_slide):
    with open_for_sampling(odd_slide.path) as fast, \
            open_slide(odd_slide.path, backend="openslide") as reference:
        assert isinstance(fast, _SamplingSlide)
        downsamples = fast.level_downsamples
        assert downsamples == reference.level_downsamples
        assert downsamples[1] == 4.0 and not float(downsamples[2]).is_integer()
        assert fast.mpp == reference.mpp and fast.level_dimensions == \
            reference.level_dimensions
        for level in range(fast.level_count):
            w, h = fast.level_dimensions[level]
            np.testing.assert_array_equal(fast._read_pixels(level, 3, 5, w - 7, h - 9),
                                          reference._read_pixels(level, 3, 5, w - 7, h - 9))
        np.testing.assert_array_equal(fast.read_downsampled(9.5),
                                      reference.read_downsampled(9.5))
    with open_for_sampling(odd_slide.path, backend="openslide") as slide:
        assert not isinstance(slide, _SamplingSlide)  # an explicit backend is kept


@pytest.mark.parametrize(("size", "sampler"), [(32, "grid"), (1024, "grid"),
                                               (48, "random")])
def test_plans_equal_those_through_openslide(odd_slide, size, sampler):
    entry = SlideEntry("odd", odd_slide.path, odd_slide.annotation_path)
    sampling = SamplingOptions(sampler=sampler, per_class=30, min_tissue=0.2)
    fast = plan_slide(entry, ExtractOptions(spec=PatchSpec(size=size), sampling=sampling))
    slow = plan_slide(entry, ExtractOptions(spec=PatchSpec(size=size), sampling=sampling,
                                            backend="openslide"))
    assert len(fast.columns["x"]) > 0
    for name, column in slow.columns.items():
        np.testing.assert_array_equal(fast.columns[name], column)
    assert (fast.level, fast.found) == (slow.level, slow.found)
