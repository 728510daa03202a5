"""HED stain augmentation (Tellez et al. 2018), batched on any device.

An RGB pixel is turned into optical density ``OD = -ln(max(rgb, 1e-6))`` (rgb in [0, 1])
and deconvolved into haematoxylin, eosin and DAB concentrations with the matrix of
Ruifrok & Johnston (2001), the one scikit-image uses (``rgb_from_hed`` below, whose rows
are the OD vectors of the three stains; ``hed_from_rgb`` is its inverse)::

    hed = OD @ hed_from_rgb          OD = hed @ rgb_from_hed          rgb = exp(-OD)

The augmentation scales and shifts each concentration per sample,
``hed' = alpha * hed + beta`` with ``alpha ~ U(1 - sigma, 1 + sigma)`` and
``beta ~ U(-bias, bias)`` drawn per sample and per stain, and goes back to RGB (clipped).
The whole map is linear in OD, so it is applied as one 3x3 matrix and one offset per
sample.

Differences from ``skimage.color.rgb2hed``/``hed2rgb``, on purpose:

- concentrations are in optical-density units (natural log, white = 0); scikit-image
  divides them by ``ln(1e6)`` (about 13.8), so ``bias=0.05`` here is ``0.0036`` there
  (and scikit-image's ``0.05`` is ``0.69`` OD here, which turns white background grey);
- negative concentrations are kept, not clipped to 0, so ``sigma = bias = 0`` is the
  identity and RGB -> HED -> RGB is exact.

Hand-written: no maintained PyTorch library offers batched HED jitter (scikit-image is
NumPy-only and per image; torchstain's augmentor is Macenko-based and per image).
"""

from __future__ import annotations

import torch

from exaslide.augment.base import (
    AugmentError,
    RandomTransform,
    from_unit,
    require_rgb,
    to_unit,
    uniform,
)

#: Stain OD vectors (rows: haematoxylin, eosin, DAB), Ruifrok & Johnston; skimage's matrix.
RGB_FROM_HED: tuple[tuple[float, float, float], ...] = (
    (0.65, 0.70, 0.29),
    (0.07, 0.99, 0.11),
    (0.27, 0.57, 0.78),
)
_EPS = 1e-6  # smallest intensity, as in scikit-image: black has OD ln(1e6)


def rgb_from_hed(device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 3x3 matrix ``rgb_from_hed`` (rows: stain OD vectors)."""
    return torch.tensor(RGB_FROM_HED, dtype=torch.float64).to(device=device, dtype=dtype)


def hed_from_rgb(device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 3x3 inverse of :func:`rgb_from_hed` (computed in float64)."""
    return torch.linalg.inv(torch.tensor(RGB_FROM_HED, dtype=torch.float64)).to(
        device=device, dtype=dtype)


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """HED concentrations (OD units) of float RGB in [0, 1] shaped ``(..., 3, H, W)``."""
    od = -torch.log(rgb.clamp(min=_EPS))
    return torch.einsum("...chw,cd->...dhw", od, hed_from_rgb(rgb.device, rgb.dtype))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Float RGB in [0, 1] from HED concentrations shaped ``(..., 3, H, W)``."""
    od = torch.einsum("...dhw,dc->...chw", hed, rgb_from_hed(hed.device, hed.dtype))
    return torch.exp(-od).clamp_(0.0, 1.0)


def hed_jitter(batch: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Apply ``hed' = alpha * hed + beta`` per sample and stain to an RGB batch.

    Args:
        batch: ``(N, 3, H, W)`` uint8 or float (0-1) RGB.
        alpha: ``(N, 3)`` scales of the H, E and D concentrations.
        beta: ``(N, 3)`` shifts of the H, E and D concentrations (OD units).

    Returns:
        The batch's shape, dtype and device.
    """
    require_rgb(batch, "HED jitter")
    n = batch.shape[0]
    if alpha.shape != (n, 3) or beta.shape != (n, 3):
        raise AugmentError(f"alpha and beta must be shaped ({n}, 3), got "
                           f"{tuple(alpha.shape)} and {tuple(beta.shape)}")
    m = torch.tensor(RGB_FROM_HED, dtype=torch.float64)
    alpha64 = alpha.to(device="cpu", dtype=torch.float64)
    beta64 = beta.to(device="cpu", dtype=torch.float64)
    # OD' = OD @ (M^-1 diag(alpha) M) + beta @ M, one matrix and one offset per sample.
    matrix = torch.linalg.inv(m) @ torch.diag_embed(alpha64) @ m  # (N, 3, 3)
    offset = beta64 @ m  # (N, 3)
    rgb = to_unit(batch)
    od = -torch.log(rgb.clamp(min=_EPS))
    od = torch.einsum("nchw,ncd->ndhw", od, matrix.to(device=od.device, dtype=od.dtype))
    od += offset.to(device=od.device, dtype=od.dtype).view(n, 3, 1, 1)
    return from_unit(torch.exp(od.neg_()), batch)


class HEDJitter(RandomTransform):
    """Random per-sample, per-stain scale and shift of H, E and D concentrations.

    Args:
        sigma: concentrations are scaled by ``alpha ~ U(1 - sigma, 1 + sigma)``.
        bias: concentrations are shifted by ``beta ~ U(-bias, bias)`` (OD units).
        seed: seed of the transform's own generator (see :mod:`exaslide.augment.base`).
    """

    def __init__(self, sigma: float = 0.05, bias: float = 0.05, seed: int | None = None
                 ) -> None:
        super().__init__(seed)
        if not 0.0 <= sigma < 1.0 or bias < 0.0:
            raise AugmentError(f"HEDJitter needs 0 <= sigma < 1 and bias >= 0, got "
                               f"sigma={sigma}, bias={bias}")
        self.sigma = float(sigma)
        self.bias = float(bias)

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ``alpha`` and ``beta``, each ``(n, 3)`` float64 on the CPU."""
        alpha = uniform(generator, (n, 3), 1.0 - self.sigma, 1.0 + self.sigma)
        beta = uniform(generator, (n, 3), -self.bias, self.bias)
        return alpha, beta

    def forward_batch(self, batch: torch.Tensor, generator: torch.Generator | None
                      ) -> torch.Tensor:
        assert generator is not None
        alpha, beta = self.draw(batch.shape[0], generator)
        return hed_jitter(batch, alpha, beta)

    def __repr__(self) -> str:
        return f"HEDJitter(sigma={self.sigma}, bias={self.bias}, seed={self.seed})"
