"""ColorJitter: torchvision's maths and range semantics, with per-sample factors."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from exaslide.augment import AugmentError, ColorJitter
from exaslide.augment.color import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
)

OPS = {
    "brightness": (adjust_brightness, F.adjust_brightness, [0.0, 0.6, 1.0, 1.7]),
    "contrast": (adjust_contrast, F.adjust_contrast, [0.0, 0.5, 1.0, 1.8]),
    "saturation": (adjust_saturation, F.adjust_saturation, [0.0, 0.4, 1.0, 2.0]),
    "hue": (adjust_hue, F.adjust_hue, [-0.5, -0.1, 0.0, 0.37]),
}


def _as(batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return batch if dtype == torch.uint8 else batch.to(dtype) / 255.0


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = 1.0 if a.dtype == torch.uint8 else 255.0
    return float((a.double() - b.double()).abs().max()) * scale


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_batched_ops_equal_torchvision_per_sample(name, dtype, rgb_batch, device):
    ours, theirs, factors = OPS[name]
    batch = _as(rgb_batch(n=4, size=16), dtype).to(device)
    out = ours(batch, torch.tensor(factors, device=device))
    assert out.dtype == batch.dtype and out.shape == batch.shape
    for i, factor in enumerate(factors):
        assert _max_error(out[i], theirs(batch[i], factor)) <= 1.0, (name, factor)


def test_ranges_follow_torchvision():
    ours = ColorJitter(brightness=0.2, contrast=(0.5, 1.5), saturation=1.5, hue=0.1)
    theirs = v2.ColorJitter(brightness=0.2, contrast=(0.5, 1.5), saturation=1.5, hue=0.1)
    for name in ("brightness", "contrast", "saturation", "hue"):
        assert getattr(ours, name) == pytest.approx(getattr(theirs, name)), name
    assert ColorJitter().brightness is None and ColorJitter(hue=0).hue is None
    for bad in ({"brightness": -0.1}, {"hue": 0.6}, {"contrast": (1.5, 0.5)},
                {"saturation": "a lot"}):
        with pytest.raises(AugmentError):
            ColorJitter(**bad)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_jitter_is_torchvision_applied_with_the_drawn_factors(dtype, rgb_batch):
    jitter = ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
    batch = _as(rgb_batch(n=6, size=16, seed=3), dtype)
    out = jitter(batch, generator=torch.Generator().manual_seed(5))
    factors = jitter.draw(6, torch.Generator().manual_seed(5))
    assert len({round(float(f), 6) for f in factors["brightness"]}) == 6
    for i in range(6):
        expected = batch[i]
        for name, op in (("brightness", F.adjust_brightness), ("contrast", F.adjust_contrast),
                         ("saturation", F.adjust_saturation), ("hue", F.adjust_hue)):
            expected = op(expected, float(factors[name][i]))
        # Off-by-one uint8 steps can compound over the four adjustments.
        assert _max_error(out[i], expected) <= 2.0


def test_needs_rgb():
    with pytest.raises(AugmentError, match="3 channels"):
        ColorJitter(brightness=0.1, seed=0)(torch.zeros(1, 8, 8, dtype=torch.uint8))
