"""Compose, building from a config, to_float, and import hygiene."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from exaslide.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentError,
    ColorJitter,
    Compose,
    HEDJitter,
    MacenkoNormalizer,
    RandomFlipRot90,
    ReinhardNormalizer,
    build_augmentation,
    load_image,
    to_float,
)


@pytest.fixture
def reference_png(he_image, tmp_path):
    path = tmp_path / "reference.png"
    Image.fromarray(he_image().permute(1, 2, 0).numpy()).save(path)
    return path


def test_config_builds_the_pipeline_in_order(reference_png, he_image, device):
    config = {"seed": 3, "normalize": {"method": "macenko", "reference": reference_png.name},
              "flip_rot90": True, "hed": {"sigma": 0.03, "bias": 0.02},
              "color_jitter": {"brightness": 0.1, "hue": 0.02}}
    pipeline = Compose.from_config(config, base_dir=reference_png.parent)
    kinds = [type(t) for t in pipeline.transforms]
    assert kinds == [MacenkoNormalizer, RandomFlipRot90, HEDJitter, ColorJitter]
    assert pipeline.transforms[2].sigma == 0.03 and pipeline.seed == 3
    batch = he_image(seed=1, stains="other", size=32).expand(4, 3, 32, 32).to(device)
    out = pipeline(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8 and out.device == batch.device
    assert torch.equal(build_augmentation(config, reference_png.parent)(batch), out)
    assert build_augmentation(None).transforms == []
    assert len(build_augmentation({"hed": True, "flip_rot90": False}).transforms) == 1


def test_config_with_a_saved_target_and_errors(reference_png, tmp_path):
    state = ReinhardNormalizer().fit(reference_png).save(tmp_path / "target.json")
    pipeline = build_augmentation({"normalize": {"method": "reinhard", "state": str(state)}})
    assert isinstance(pipeline.transforms[0], ReinhardNormalizer)
    image = load_image(reference_png)
    assert torch.equal(pipeline(image), ReinhardNormalizer.load(state)(image))
    bad_configs = [
        {"flip": True},
        {"normalize": {"method": "vahadane", "reference": str(reference_png)}},
        {"normalize": {"method": "macenko"}},
        {"normalize": {"method": "macenko", "reference": "x.png", "state": "y.json"}},
        {"normalize": {"method": "macenko", "reference": str(tmp_path / "missing.png")}},
        {"hed": {"sigmaa": 0.1}},
        {"color_jitter": 0.1},
    ]
    for config in bad_configs:
        with pytest.raises(AugmentError):
            build_augmentation(config)


def test_to_float_normalises_like_torchvision(rgb_batch, device):
    batch = rgb_batch(n=2, size=8).to(device)
    out = to_float(batch)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.device == batch.device
    assert torch.allclose(out, (batch.float() / 255 - mean) / std, atol=1e-6)
    plain = to_float(batch[0], mean=None, std=None)
    assert plain.shape == (3, 8, 8) and float(plain.max()) <= 1.0
    assert torch.allclose(to_float(batch.float() / 255), out, atol=1e-6)
    assert to_float(batch, channels_last=True).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(AugmentError, match="both"):
        to_float(batch, mean=None)


def test_load_image_is_chw_uint8(reference_png, he_image):
    image = load_image(reference_png)
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert np.array_equal(image.numpy(), he_image().numpy())


def test_importing_exaslide_does_not_import_torch():
    code = "import sys, exaslide; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
