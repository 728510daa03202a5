"""Colour jitter with per-sample factors and torchvision's colour maths.

``torchvision.transforms.v2.ColorJitter`` draws one set of factors per call, shared by a
whole batch. :class:`ColorJitter` draws the factors per sample, with torchvision's range
semantics, and applies torchvision's formulas:

- brightness, contrast, saturation: the formulas of
  ``torchvision.transforms.v2.functional.adjust_brightness / adjust_contrast /
  adjust_saturation`` (a blend with black, the grey mean, the grey image; the grey image
  is floored for uint8 input, results clipped and truncated to uint8 as torchvision does),
  written here with a per-sample factor tensor instead of one float. The tests check them
  against torchvision's functions, per sample, within 1/255;
- hue: torchvision's own RGB <-> HSV conversion, vectorised over the batch with a
  per-sample hue shift, or ``adjust_hue`` per sample if that helper is not available.

The four adjustments are applied in the fixed order brightness, contrast, saturation, hue
(torchvision's ColorJitter shuffles the order per call; a per-sample order would break
batching, and the order matters little for small factors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms.v2 import functional as F

from exaslide.augment.base import AugmentError, RandomTransform, require_rgb, uniform

Range = tuple[float, float]


def factor_range(value: float | Sequence[float] | None, name: str, center: float = 1.0,
                 bound: Range = (0.0, float("inf")), clip_at_zero: bool = True
                 ) -> Range | None:
    """torchvision's ColorJitter range semantics: ``v`` -> ``[center - v, center + v]``.

    A pair ``(low, high)`` is taken as is. Returns None when the range is the single
    value ``center`` (the adjustment is off).
    """
    if value is None:
        return None
    if isinstance(value, int | float):
        if value < 0:
            raise AugmentError(f"{name}={value}: a single number must be non-negative")
        low, high = center - float(value), center + float(value)
        if clip_at_zero:
            low = max(low, 0.0)
    elif isinstance(value, Sequence) and len(value) == 2:
        low, high = float(value[0]), float(value[1])
    else:
        raise AugmentError(f"{name}={value!r}: expected a number or a (low, high) pair")
    if not bound[0] <= low <= high <= bound[1]:
        raise AugmentError(f"{name}: range ({low}, {high}) must be increasing and within "
                           f"{bound}")
    return None if low == high == center else (low, high)


def _bound(batch: torch.Tensor) -> float:
    return 255.0 if batch.dtype == torch.uint8 else 1.0


def _blend(batch: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend`` with a per-sample ``ratio`` shaped (N, 1, 1, 1)."""
    out = (batch * ratio + other * (1.0 - ratio)).clamp_(0.0, _bound(batch))
    return out if batch.is_floating_point() else out.to(batch.dtype)


def _grey(batch: torch.Tensor) -> torch.Tensor:
    """torchvision's grey level (ITU-R 601-2 luma), floored for integer input."""
    r, g, b = batch.unbind(dim=-3)
    grey = (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(-3)
    return grey if batch.is_floating_point() else grey.floor_()


def adjust_brightness(batch: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_brightness`` with one factor per sample (``factor`` shaped (N,))."""
    out = (batch * factor.view(-1, 1, 1, 1)).clamp_(0.0, _bound(batch))
    return out if batch.is_floating_point() else out.to(batch.dtype)


def adjust_contrast(batch: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_contrast`` with one factor per sample: blend with the mean grey level."""
    mean = _grey(batch).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(batch, mean, factor.view(-1, 1, 1, 1))


def adjust_saturation(batch: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_saturation`` with one factor per sample: blend with the grey image."""
    return _blend(batch, _grey(batch), factor.view(-1, 1, 1, 1))


def adjust_hue(batch: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``F.adjust_hue`` with one hue shift (in [-0.5, 0.5]) per sample."""
    try:  # torchvision's own (private) HSV helpers, vectorised over the batch
        from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv
    except ImportError:  # pragma: no cover - depends on the torchvision version
        return torch.stack([F.adjust_hue(image, float(s)) for image, s in zip(batch, shift,
                                                                               strict=True)])
    hsv = _rgb_to_hsv(F.to_dtype(batch, torch.float32, scale=True))
    h, s, v = hsv.unbind(dim=-3)
    h = (h + shift.view(-1, 1, 1).to(h.dtype)).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    return F.to_dtype(rgb, batch.dtype, scale=True)


class ColorJitter(RandomTransform):
    """Random brightness, contrast, saturation and hue, drawn per sample.

    Ranges follow ``torchvision.transforms.v2.ColorJitter``: a number ``v`` gives factors
    uniform in ``[max(0, 1 - v), 1 + v]`` (hue: shifts in ``[-v, v]``, ``v <= 0.5``); a
    pair gives ``[low, high]``; 0 or None turns the adjustment off.

    Args:
        brightness: brightness range (multiplies the image).
        contrast: contrast range (blend with the image's mean grey level).
        saturation: saturation range (blend with the grey image).
        hue: hue shift range, as a fraction of the colour wheel.
        seed: seed of the transform's own generator (see :mod:`exaslide.augment.base`).
    """

    def __init__(self, brightness: float | Sequence[float] | None = 0.0,
                 contrast: float | Sequence[float] | None = 0.0,
                 saturation: float | Sequence[float] | None = 0.0,
                 hue: float | Sequence[float] | None = 0.0, seed: int | None = None) -> None:
        super().__init__(seed)
        self.brightness = factor_range(brightness, "brightness")
        self.contrast = factor_range(contrast, "contrast")
        self.saturation = factor_range(saturation, "saturation")
        self.hue = factor_range(hue, "hue", center=0.0, bound=(-0.5, 0.5), clip_at_zero=False)

    def draw(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample factors (float64, CPU) of the enabled adjustments, in fixed order."""
        names = ("brightness", "contrast", "saturation", "hue")
        return {name: uniform(generator, (n,), *getattr(self, name))
                for name in names if getattr(self, name) is not None}

    def forward_batch(self, batch: torch.Tensor, generator: torch.Generator | None
                      ) -> torch.Tensor:
        assert generator is not None
        require_rgb(batch, "ColorJitter")
        factors = self.draw(batch.shape[0], generator)
        adjust = {"brightness": adjust_brightness, "contrast": adjust_contrast,
                  "saturation": adjust_saturation, "hue": adjust_hue}
        dtype = batch.dtype if batch.is_floating_point() else torch.float32
        out = batch
        for name, factor in factors.items():
            out = adjust[name](out, factor.to(device=batch.device, dtype=dtype))
        return out

    def __repr__(self) -> str:
        return (f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue={self.hue}, seed={self.seed})")
