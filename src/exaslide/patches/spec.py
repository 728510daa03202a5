"""What a patch is: its size and resolution, and how patches are chosen and labelled."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from exaslide.errors import ExaslideError
from exaslide.slides.base import Slide

SAMPLERS = ("grid", "random")
LABEL_RULES = ("centre", "fraction")


class PatchError(ExaslideError):
    """Patch sampling or extraction parameters cannot be met."""


@dataclass(frozen=True)
class PatchSpec:
    """Size and resolution of patches.

    A patch is ``size`` x ``size`` output pixels, read at pyramid ``level`` or at ``mpp``
    microns per pixel (read at the best level, resampled with area interpolation). Give
    one of them: ``PatchSpec(224, mpp=0.5)``, ``PatchSpec(256, level=1)``; with neither,
    level 0.
    """

    size: int = 256
    level: int | None = None
    mpp: float | None = None

    def __post_init__(self) -> None:
        if self.level is None and self.mpp is None:
            object.__setattr__(self, "level", 0)

    def validate(self) -> None:
        """Raise :class:`PatchError` for impossible values."""
        if self.size < 8:
            raise PatchError(f"patch size must be at least 8 pixels, got {self.size}")
        if (self.level is None) == (self.mpp is None):
            raise PatchError("give exactly one of level or mpp for the patch resolution")
        if self.mpp is not None and self.mpp <= 0:
            raise PatchError(f"mpp must be positive, got {self.mpp}")

    def footprint(self, slide: Slide) -> float:
        """Side of a patch in level-0 pixels on ``slide``."""
        if self.mpp is not None:
            slide.best_level(mpp=self.mpp)  # raises LevelError listing the levels
            return self.size * self.mpp / slide.mpp[0]
        slide.check_level(self.level)
        return self.size * slide.level_downsamples[self.level]


@dataclass(frozen=True)
class SamplingOptions:
    """How patches are chosen and labelled.

    Attributes:
        sampler: ``"grid"`` (full coverage) or ``"random"`` (``per_class`` per class).
        stride: grid step in output pixels (default: the patch size, no overlap).
        per_class: patches per class per slide for the random sampler.
        min_tissue: minimum fraction of a patch that is tissue (tumour counts as tissue).
        label_rule: ``"centre"`` (the class of the centre pixel of the label mask) or
            ``"fraction"`` (tumour when ``tumour_fraction >= tumour_threshold``).
        tumour_threshold: threshold of the fraction rule.
        seed: random seed (random sampler).
        mask_resolution: label-mask pixels per patch side used to measure fractions.
    """

    sampler: str = "grid"
    stride: int | None = None
    per_class: int = 2000
    min_tissue: float = 0.5
    label_rule: str = "centre"
    tumour_threshold: float = 0.5
    seed: int = 0
    mask_resolution: int = 8

    def validate(self) -> None:
        """Raise :class:`PatchError` for impossible values."""
        if self.sampler not in SAMPLERS:
            raise PatchError(f"unknown sampler {self.sampler!r}; choose one of {SAMPLERS}")
        if self.label_rule not in LABEL_RULES:
            raise PatchError(f"unknown label rule {self.label_rule!r}; choose {LABEL_RULES}")
        if self.stride is not None and self.stride < 1:
            raise PatchError("stride must be at least 1 pixel")
        if not 0.0 <= self.min_tissue <= 1.0 or not 0.0 <= self.tumour_threshold <= 1.0:
            raise PatchError("min_tissue and tumour_threshold must be between 0 and 1")
        if self.per_class < 1 or self.mask_resolution < 1:
            raise PatchError("per_class and mask_resolution must be positive")

    def to_dict(self) -> dict:
        """JSON-ready form (saved in each slide's status file)."""
        return asdict(self)
