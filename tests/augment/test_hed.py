"""HED jitter: the Ruifrok & Johnston deconvolution and its known properties."""

from __future__ import annotations

import pytest
import torch

from exaslide.augment import AugmentError, HEDJitter, hed_jitter, hed_to_rgb, rgb_to_hed
from exaslide.augment.hed import hed_from_rgb, rgb_from_hed

# scikit-image's skimage.color.rgb_from_hed (rows: H, E, DAB OD vectors).
SKIMAGE_RGB_FROM_HED = [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]


def _no_change(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones(n, 3, dtype=torch.float64), torch.zeros(n, 3, dtype=torch.float64)


def test_matrices_are_skimages_and_inverse():
    assert torch.equal(rgb_from_hed(dtype=torch.float64),
                       torch.tensor(SKIMAGE_RGB_FROM_HED, dtype=torch.float64))
    product = hed_from_rgb(dtype=torch.float64) @ rgb_from_hed(dtype=torch.float64)
    assert torch.allclose(product, torch.eye(3, dtype=torch.float64), atol=1e-12)


def test_matches_skimage_when_installed(rgb_batch):
    color = pytest.importorskip("skimage.color", reason="scikit-image is not installed")
    rgb = rgb_batch(n=1, size=16)[0].double() / 255
    theirs = torch.from_numpy(color.rgb2hed(rgb.permute(1, 2, 0).numpy())).permute(2, 0, 1)
    ours = rgb_to_hed(rgb) / torch.log(torch.tensor(1e6, dtype=torch.float64))
    assert torch.allclose(ours.clamp(min=0), theirs, atol=1e-6)  # skimage clips at 0


def test_round_trip_is_exact(rgb_batch, device):
    rgb = (rgb_batch(n=2, size=16).double() / 255).clamp(min=1 / 255).to(device)
    assert torch.allclose(hed_to_rgb(rgb_to_hed(rgb)), rgb, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_zero_jitter_is_the_identity(dtype, he_image, rgb_batch, device):
    batch = torch.cat([he_image(size=16).unsqueeze(0), rgb_batch(n=3, size=16)])
    batch = (batch if dtype == torch.uint8 else batch.float() / 255).to(device)
    out = hed_jitter(batch, *_no_change(4))
    limit = 0 if dtype == torch.uint8 else 1e-5
    assert out.dtype == dtype and float((out.double() - batch.double()).abs().max()) <= limit
    assert torch.equal(HEDJitter(sigma=0, bias=0, seed=0)(batch), out)


def test_scaling_h_scales_only_the_h_concentration(device):
    g = torch.Generator().manual_seed(0)
    hed = torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64) * torch.tensor(
        [0.8, 0.6, 0.1], dtype=torch.float64).view(1, 3, 1, 1)
    rgb = hed_to_rgb(hed).to(device)
    alpha, beta = _no_change(1)
    alpha[0, 0] = 1.3
    beta[0, 1] = 0.05
    recovered = rgb_to_hed(hed_jitter(rgb, alpha, beta)).cpu()
    assert torch.allclose(recovered[:, 0], 1.3 * hed[:, 0], atol=1e-5)  # H scaled
    assert torch.allclose(recovered[:, 1], hed[:, 1] + 0.05, atol=1e-5)  # E shifted
    assert torch.allclose(recovered[:, 2], hed[:, 2], atol=1e-5)  # DAB untouched


def test_white_background_stays_white_and_params_are_per_sample(he_image, device):
    white = torch.full((32, 3, 8, 8), 255, dtype=torch.uint8, device=device)
    out = HEDJitter(sigma=0.05, bias=0.05, seed=0)(white)
    assert int(out.min()) >= 240  # at most 0.05 OD per stain: >= 255 * exp(-0.05 * 1.0)
    tissue = he_image(size=16).to(device).expand(8, 3, 16, 16)
    jittered = HEDJitter(seed=0)(tissue)
    assert len({tuple(x.flatten().tolist()) for x in jittered.cpu()}) == 8
    assert float((jittered.float() - tissue.float()).abs().mean()) < 8.0  # light jitter


def test_bad_parameters():
    with pytest.raises(AugmentError):
        HEDJitter(sigma=-0.1)
    with pytest.raises(AugmentError, match="shaped"):
        hed_jitter(torch.zeros(2, 3, 4, 4), torch.ones(1, 3), torch.zeros(1, 3))
