"""Reinhard colour normalisation, batched on any device.

Reinhard et al. (2001): convert to CIE LAB, standardise each channel of the image (its
mean and standard deviation over all pixels) and give it the target's mean and standard
deviation, then convert back to RGB (clipped).

Written here, with torchstain's formulas and constants (sRGB with the D65 white, the
same RGB -> XYZ matrix and thresholds as ``torchstain.torch.utils.rgb2lab``/``lab2rgb``,
unbiased standard deviations as ``TorchReinhardNormalizer``), because torchstain's torch
Reinhard (1.4.1) keeps its colour matrices on the CPU (it fails on a CUDA tensor), works
on one image at a time, and turns a flat image (standard deviation 0, e.g. a white patch)
into NaN and then black. The tests check this module against torchstain on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from exaslide.augment.base import AugmentError, from_unit, to_unit
from exaslide.augment.stain import Reference, StainNormalizer, check_keys, pool_reference

#: sRGB (linear) -> XYZ, as in torchstain (and OpenCV).
RGB_TO_XYZ: tuple[tuple[float, float, float], ...] = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
#: XYZ of the D65 reference white.
WHITE_D65: tuple[float, float, float] = (0.95047, 1.0, 1.08883)


def _matrix(values: Any, like: torch.Tensor, invert: bool = False) -> torch.Tensor:
    matrix = torch.tensor(values, dtype=torch.float64)
    if invert:
        matrix = torch.linalg.inv(matrix)
    return matrix.to(device=like.device, dtype=like.dtype)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE LAB (L in 0-100, a and b around 0) of float RGB in [0, 1], ``(..., 3, H, W)``."""
    rgb = rgb.to(torch.float32)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("...chw,dc->...dhw", linear, _matrix(RGB_TO_XYZ, linear))
    xyz = xyz / _matrix(WHITE_D65, xyz).view(3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0.0) ** (1.0 / 3.0),
                    7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(dim=-3)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Float RGB in [0, 1] (clipped) from CIE LAB shaped ``(..., 3, H, W)``."""
    lightness, a, b = lab.to(torch.float32).unbind(dim=-3)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack((a / 500.0 + fy, fy, fy - b / 200.0), dim=-3)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16.0 / 116.0) / 7.787)
    xyz = xyz * _matrix(WHITE_D65, xyz).view(3, 1, 1)
    linear = torch.einsum("...dhw,cd->...chw", xyz, _matrix(RGB_TO_XYZ, xyz, invert=True))
    rgb = torch.where(linear > 0.0031308,
                      1.055 * linear.clamp(min=0.0031308) ** (1.0 / 2.4) - 0.055,
                      linear * 12.92)
    return rgb.clamp(0.0, 1.0)


class ReinhardNormalizer(StainNormalizer):
    """Give each image the LAB channel means and standard deviations of a reference.

    Args:
        min_std: images whose standard deviation in some LAB channel is below this (flat
            images: blank glass, white patches) are returned unchanged and counted in
            ``skipped``.
    """

    method = "reinhard"

    def __init__(self, min_std: float = 1e-3) -> None:
        super().__init__()
        self.min_std = float(min_std)
        self.target_means: torch.Tensor | None = None  #: (3,) L, a, b means
        self.target_stds: torch.Tensor | None = None  #: (3,) L, a, b standard deviations

    @property
    def fitted(self) -> bool:
        return self.target_means is not None

    def fit(self, reference: Reference) -> ReinhardNormalizer:
        """Fit the target LAB statistics to the pooled pixels of the reference(s).

        Raises:
            AugmentError: the reference is flat in some LAB channel.
        """
        lab = rgb_to_lab(pool_reference(reference) / 255.0).flatten(1)
        means, stds = lab.mean(dim=1), lab.std(dim=1)
        if not bool((stds >= self.min_std).all()) or not bool(means.isfinite().all()):
            raise AugmentError(f"the Reinhard reference is flat (LAB standard deviations "
                               f"{stds.tolist()}); choose a patch with stained tissue")
        self.target_means, self.target_stds = means, stds
        return self

    def normalize_batch(self, batch: torch.Tensor) -> torch.Tensor:
        assert self.target_means is not None and self.target_stds is not None
        lab = rgb_to_lab(to_unit(batch))
        pixels = lab.flatten(2)
        means = pixels.mean(dim=2)[..., None, None]
        stds = pixels.std(dim=2)[..., None, None]
        target_means = self.target_means.to(lab.device).view(1, 3, 1, 1)
        target_stds = self.target_stds.to(lab.device).view(1, 3, 1, 1)
        valid = (stds >= self.min_std).all(dim=1).flatten() & lab.isfinite().flatten(1).all(1)
        scaled = (lab - means) / stds.clamp(min=self.min_std) * target_stds + target_means
        out = from_unit(lab_to_rgb(scaled), batch)
        skipped = int((~valid).sum())
        if skipped:
            self.skip("flat image (LAB standard deviation below min_std)", count=skipped)
            out = torch.where(valid.view(-1, 1, 1, 1), out, batch)
        return out

    def state_dict(self) -> dict[str, Any]:
        if not self.fitted:
            raise AugmentError("ReinhardNormalizer is not fitted: call .fit(reference) first")
        assert self.target_means is not None and self.target_stds is not None
        return {"method": self.method, "min_std": self.min_std,
                "target_means": self.target_means.tolist(),
                "target_stds": self.target_stds.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_keys(state, ("target_means", "target_stds"), "Reinhard")
        means = torch.tensor(state["target_means"], dtype=torch.float32)
        stds = torch.tensor(state["target_stds"], dtype=torch.float32)
        if means.shape != (3,) or stds.shape != (3,):
            raise AugmentError(f"Reinhard state: expected 3 means and 3 standard deviations, "
                               f"got {tuple(means.shape)} and {tuple(stds.shape)}")
        if "min_std" in state:
            self.min_std = float(state["min_std"])
        self.target_means, self.target_stds = means, stds

    def __repr__(self) -> str:
        return (f"ReinhardNormalizer(min_std={self.min_std}, fitted={self.fitted}, "
                f"skipped={self.skipped})")
