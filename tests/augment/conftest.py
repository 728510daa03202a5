"""Fixtures for the augmentation tests: devices and H&E images synthesised from known stains.

A test that takes a ``device`` argument runs on the CPU and, where there is one, on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

#: Stain OD vectors used for synthesis (Ruifrok & Johnston's H and E), as unit columns.
KNOWN_H = (0.65, 0.70, 0.29)
KNOWN_E = (0.07, 0.99, 0.11)
#: A different staining (bluer H, pinker E) to normalise from.
OTHER_H = (0.55, 0.78, 0.30)
OTHER_E = (0.15, 0.85, 0.50)


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        metafunc.parametrize("device", devices)


def stain_matrix(h=KNOWN_H, e=KNOWN_E) -> torch.Tensor:
    """(3, 2) float64 matrix whose columns are the unit OD vectors of H and E."""
    matrix = torch.tensor([h, e], dtype=torch.float64).T
    return matrix / matrix.norm(dim=0, keepdim=True)


def synthesize(matrix: torch.Tensor, size: int = 64, seed: int = 0, io: float = 240.0,
               h_scale: float = 1.0, e_scale: float = 1.0) -> torch.Tensor:
    """A (3, size, size) uint8 H&E image ``Io * exp(-matrix @ C)`` from random concentrations.

    About 30% of the pixels hold haematoxylin only, 30% eosin only, 25% a mixture and 15%
    are background (no stain, intensity ``io``). Eosin-only pixels are dense (2.2-3.2):
    Ruifrok's eosin absorbs little red (0.07), and Macenko keeps only pixels whose OD is
    at least ``beta`` = 0.15 in every channel, so fainter pure eosin would be invisible
    to it and the eosin vector would be estimated from mixtures.
    """
    g = torch.Generator().manual_seed(seed)
    n = size * size
    kind = torch.rand(n, generator=g, dtype=torch.float64)
    u = torch.rand(2, n, generator=g, dtype=torch.float64)
    h = torch.zeros(n, dtype=torch.float64)
    e = torch.zeros(n, dtype=torch.float64)
    only_h, only_e = kind < 0.30, (kind >= 0.30) & (kind < 0.60)
    mixed = (kind >= 0.60) & (kind < 0.85)
    h[only_h] = 0.3 + 1.2 * u[0, only_h]
    e[only_e] = 2.2 + 1.0 * u[1, only_e]
    h[mixed] = 0.2 + 0.8 * u[0, mixed]
    e[mixed] = 0.2 + 0.6 * u[1, mixed]
    concentrations = torch.stack([h * h_scale, e * e_scale])
    intensity = io * torch.exp(-matrix @ concentrations)
    return intensity.round().clamp(0, 255).to(torch.uint8).reshape(3, size, size)


@pytest.fixture
def he_image() -> Callable[..., torch.Tensor]:
    """Factory: ``he_image(seed=0, size=64, stains="known"|"other", h_scale=1, e_scale=1)``."""

    def make(seed: int = 0, size: int = 64, stains: str = "known", **kwargs) -> torch.Tensor:
        matrix = stain_matrix() if stains == "known" else stain_matrix(OTHER_H, OTHER_E)
        return synthesize(matrix, size=size, seed=seed, **kwargs)

    return make


@pytest.fixture
def rgb_batch() -> Callable[..., torch.Tensor]:
    """Factory: a random (n, 3, size, size) uint8 batch, ``rgb_batch(n=4, size=16, seed=0)``."""

    def make(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)

    return make


@pytest.fixture
def stains() -> dict[str, torch.Tensor]:
    """The (3, 2) unit stain matrices used by ``he_image``: ``known`` and ``other``."""
    return {"known": stain_matrix(), "other": stain_matrix(OTHER_H, OTHER_E)}
