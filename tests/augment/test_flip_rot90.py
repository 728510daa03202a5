"""The D4 symmetries: exact group elements, per-sample draws, shapes, dtypes and devices."""

from __future__ import annotations

import pytest
import torch

from exaslide.augment import (
    D4_ELEMENTS,
    AugmentError,
    RandomFlipRot90,
    flip_rot90,
    invert_flip_rot90,
)
from exaslide.augment.geometry import SHAPE_PRESERVING_ELEMENTS


def _element_of(output: torch.Tensor, source: torch.Tensor) -> int:
    matches = [e for e in D4_ELEMENTS if output.shape == flip_rot90(source, e).shape
               and torch.equal(output, flip_rot90(source, e))]
    assert len(matches) == 1, "output is not a unique D4 image of the input"
    return matches[0]


def test_the_eight_elements_are_distinct_and_invertible():
    image = torch.arange(3 * 5 * 5, dtype=torch.float32).reshape(3, 5, 5)
    images = [flip_rot90(image, e) for e in D4_ELEMENTS]
    assert len({tuple(x.flatten().tolist()) for x in images}) == 8
    for e in D4_ELEMENTS:
        assert torch.equal(invert_flip_rot90(flip_rot90(image, e), e), image)
    assert torch.equal(flip_rot90(image, 1), torch.rot90(image, 1, dims=(1, 2)))
    assert torch.equal(flip_rot90(image, 4), image.flip(-1))
    with pytest.raises(AugmentError, match=r"0\.\.7"):
        flip_rot90(image, 8)


def test_each_sample_gets_its_own_element(device):
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8).to(device)
    batch = image.expand(64, 3, 8, 8).contiguous()
    out = RandomFlipRot90(seed=1)(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8 and out.device == batch.device
    elements = [_element_of(out[i].cpu(), image.cpu()) for i in range(64)]
    assert set(elements) == set(D4_ELEMENTS)  # 64 draws hit all 8 (p of missing one < 1e-3)


def test_float_single_sample_and_non_square_images(device):
    image = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0)).to(device)
    out = RandomFlipRot90(seed=0)(image)
    assert out.shape == image.shape and out.dtype == image.dtype
    _element_of(out.cpu(), image.cpu())
    wide = torch.rand(16, 3, 4, 7, generator=torch.Generator().manual_seed(0)).to(device)
    out = RandomFlipRot90(seed=0)(wide)
    assert out.shape == wide.shape
    elements = {_element_of(out[i].cpu(), wide[i].cpu()) for i in range(16)}
    assert elements <= set(SHAPE_PRESERVING_ELEMENTS) and len(elements) > 1
