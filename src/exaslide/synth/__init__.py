"""Synthetic pyramidal slides and cohorts with known ground truth (the test fixtures)."""

from exaslide.synth.cohort import make_cohort
from exaslide.synth.shapes import Layout, make_layout
from exaslide.synth.slide import SynthSlide, SynthSpec, level_sizes, write_synthetic_slide
from exaslide.synth.texture import make_texture

__all__ = [
    "Layout", "SynthSlide", "SynthSpec", "level_sizes", "make_cohort", "make_layout",
    "make_texture", "write_synthetic_slide",
]
