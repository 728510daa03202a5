"""Synthetic pyramidal slides and cohorts with known ground truth (the test fixtures)."""

from exaslide.synth.cohort import make_cohort
from exaslide.synth.shapes import Layout, make_layout
from exaslide.synth.slide import (
    MAX_SIDE,
    SynthError,
    SynthSlide,
    SynthSpec,
    check_disk_space,
    estimated_disk_bytes,
    level_sizes,
    write_synthetic_slide,
)
from exaslide.synth.texture import make_texture

__all__ = [
    "MAX_SIDE", "Layout", "SynthError", "SynthSlide", "SynthSpec", "check_disk_space",
    "estimated_disk_bytes", "level_sizes", "make_cohort", "make_layout", "make_texture",
    "write_synthetic_slide",
]
