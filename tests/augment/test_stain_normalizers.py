"""Macenko and Reinhard normalisation against known stains and against torchstain."""

from __future__ import annotations

import json

import pytest
import torch
import torchstain

from exaslide.augment import (
    AugmentError,
    MacenkoNormalizer,
    ReinhardNormalizer,
    rgb_to_lab,
)


def _cosines(found: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(found.double(), known.double(), dim=0)


def _lab_stats(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lab = rgb_to_lab(image.float() / 255).flatten(-2)
    return lab.mean(-1), lab.std(-1)


def _mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean())


# ---------------------------------------------------------------------------- Macenko


def test_macenko_recovers_the_known_stain_matrix(he_image, stains):
    normalizer = MacenkoNormalizer().fit(he_image(size=96))
    cosines = _cosines(normalizer.stain_matrix, stains["known"])  # columns: H, E
    assert (cosines > 0.99).all(), cosines


def test_macenko_maps_other_stains_onto_the_target(he_image, stains, device):
    normalizer = MacenkoNormalizer().fit(he_image(seed=0))
    source = he_image(seed=1, stains="other", h_scale=1.4, e_scale=0.7).to(device)
    out = normalizer(source)
    assert out.dtype == torch.uint8 and out.shape == source.shape and out.device == source.device
    refit = MacenkoNormalizer().fit(out.cpu())
    assert (_cosines(refit.stain_matrix, stains["known"]) > 0.99).all()
    assert not (_cosines(MacenkoNormalizer().fit(source.cpu()).stain_matrix,
                         stains["known"]) > 0.99).all()
    # An image already stained like the target changes little.
    same = he_image(seed=2).to(device)
    assert _mean_abs(normalizer(same), same) < 3.0


def test_macenko_fits_a_set_as_one_pooled_image(he_image):
    a, b = he_image(seed=3, size=32), he_image(seed=4, size=48)
    side_by_side = torch.cat([a.reshape(3, 1, -1), b.reshape(3, 1, -1)], dim=2)
    pooled = MacenkoNormalizer().fit([a, b])
    assert torch.allclose(pooled.stain_matrix, MacenkoNormalizer().fit(side_by_side).stain_matrix)
    c = he_image(seed=5, size=32)
    batch_fit = MacenkoNormalizer().fit(torch.stack([a[:, :32, :32], c]))
    list_fit = MacenkoNormalizer().fit([a[:, :32, :32], c])
    assert torch.equal(batch_fit.stain_matrix, list_fit.stain_matrix)


def test_macenko_leaves_white_patches_unchanged(he_image, device):
    normalizer = MacenkoNormalizer().fit(he_image())
    white = torch.full((3, 32, 32), 255, dtype=torch.uint8, device=device)
    assert torch.equal(normalizer(white), white) and normalizer.skipped == 1
    tissue = he_image(seed=1, stains="other", size=32).to(device)
    out = normalizer(torch.stack([white, tissue]))
    assert torch.equal(out[0], white) and not torch.equal(out[1], tissue)
    assert normalizer.skipped == 2
    with pytest.raises(AugmentError, match="tissue pixels"):
        MacenkoNormalizer().fit(white.cpu())
    # Without the tissue-pixel guard torchstain itself fails; that is caught too.
    unguarded = MacenkoNormalizer(min_tissue_pixels=0)
    unguarded.load_state_dict({**normalizer.state_dict(), "min_tissue_pixels": 0})
    assert torch.equal(unguarded(white), white) and unguarded.skipped == 1


def test_macenko_float_input_and_saved_target(he_image, tmp_path):
    normalizer = MacenkoNormalizer(Io=240, alpha=1, beta=0.15).fit(he_image())
    source = he_image(seed=1, stains="other", size=32)
    as_uint8 = normalizer(source)
    as_float = normalizer(source.float() / 255)
    assert as_float.dtype == torch.float32
    assert float((as_float * 255 - as_uint8.float()).abs().max()) <= 1.0
    path = normalizer.save(tmp_path / "macenko.json")
    assert json.loads(path.read_text())["method"] == "macenko"
    restored = MacenkoNormalizer.load(path)
    assert torch.equal(restored(source), as_uint8)
    with pytest.raises(AugmentError, match="not fitted"):
        MacenkoNormalizer()(source)
    with pytest.raises(AugmentError, match="'macenko'"):
        MacenkoNormalizer.load(ReinhardNormalizer().fit(source).save(tmp_path / "r.json"))


def test_macenko_matches_torchstain_on_the_cpu(he_image):
    normalizer = MacenkoNormalizer().fit(he_image(seed=0))
    source = he_image(seed=1, stains="other", h_scale=1.4, e_scale=0.7)
    theirs = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    theirs.HERef, theirs.maxCRef = normalizer.stain_matrix, normalizer.max_concentrations
    expected, _, _ = theirs.normalize(source, Io=240, alpha=1, beta=0.15, stains=False)
    assert torch.equal(normalizer(source), expected.permute(2, 0, 1).to(torch.uint8))


def test_macenko_nan_is_caught_before_the_integer_cast(he_image, device, monkeypatch):
    """A normalisation that comes out NaN returns the image unchanged and counts in
    ``skipped``, whatever NaN becomes when cast to an integer: a negative value on the
    CPU, 0 on CUDA (emulated on the CPU, where a NaN-to-int cast would else be caught by
    its sign)."""
    normalizer = MacenkoNormalizer().fit(he_image(seed=0))
    source = he_image(seed=1, stains="other", size=32).to(device)
    assert not torch.equal(normalizer(source), source) and normalizer.skipped == 0

    def nan_lstsq(a, b, *args, **kwargs):  # least squares that failed: NaN concentrations
        return (torch.full((a.shape[-1], b.shape[-1]), float("nan"), device=b.device),)

    def int_like_cuda(tensor):
        return torch.nan_to_num(tensor, nan=0.0).to(torch.int32)

    monkeypatch.setattr(torch.linalg, "lstsq", nan_lstsq)
    monkeypatch.setattr(torch.Tensor, "int", int_like_cuda)
    for image in (source, source.float() / 255):
        assert torch.equal(normalizer(image), image)
    assert normalizer.skipped == 2


# ---------------------------------------------------------------------------- Reinhard


def test_reinhard_output_has_the_target_lab_statistics(he_image, device):
    # Moderate eosin: exact in LAB, the statistics move only where RGB clipping bites.
    target = he_image(seed=0, e_scale=0.4)
    normalizer = ReinhardNormalizer().fit(target)
    source = he_image(seed=1, stains="other", h_scale=1.3, e_scale=0.3).to(device)
    out = normalizer(source)
    assert out.dtype == torch.uint8 and out.device == source.device
    means, stds = _lab_stats(out.cpu())
    target_means, target_stds = _lab_stats(target)
    assert not torch.allclose(_lab_stats(source.cpu())[0], target_means, atol=2.0)
    assert torch.allclose(means, target_means, atol=0.5), (means, target_means)
    assert torch.allclose(stds, target_stds, atol=1.0), (stds, target_stds)


def test_reinhard_matches_torchstain_on_the_cpu(he_image):
    target, source = he_image(seed=0), he_image(seed=1, stains="other")
    theirs = torchstain.normalizers.ReinhardNormalizer(backend="torch")
    theirs.fit(target)
    ours = ReinhardNormalizer().fit(target)
    assert torch.allclose(ours.target_means, theirs.target_means, rtol=1e-4, atol=1e-3)
    assert torch.allclose(ours.target_stds, theirs.target_stds, rtol=1e-4)
    # torchstain returns (H, W, 3) and truncates to uint8 where we round: one step apart.
    expected = theirs.normalize(source).permute(2, 0, 1).float()
    assert float((ours(source).float() - expected).abs().max()) <= 1.0


def test_reinhard_batches_skips_flat_images_and_saves(he_image, tmp_path, device):
    normalizer = ReinhardNormalizer().fit([he_image(seed=0), he_image(seed=9)])
    white = torch.full((3, 64, 64), 255, dtype=torch.uint8)
    sources = torch.stack([he_image(seed=1, stains="other"), white, he_image(seed=2)])
    out = normalizer(sources.to(device)).cpu()
    assert torch.equal(out[1], white) and normalizer.skipped == 1
    for i in (0, 2):
        assert torch.equal(out[i], normalizer(sources[i]))
    restored = ReinhardNormalizer.load(normalizer.save(tmp_path / "reinhard.json"))
    assert torch.equal(restored(sources), out)
    with pytest.raises(AugmentError, match="flat"):
        ReinhardNormalizer().fit(white)
