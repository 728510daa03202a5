"""Tissue detection against the ground truth of synthetic slides."""

from __future__ import annotations

import numpy as np
import pytest

from exaslide.errors import MaskError
from exaslide.masks import TissueParams, detect_tissue, rasterize
from exaslide.slides import open_slide


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_detects_synthetic_tissue(synth_slide):
    with open_slide(synth_slide.path) as slide:
        image = slide.read_level(1)
        mpp = slide.level_mpp(1)[0]
    found = detect_tissue(image, mpp)
    truth = rasterize(synth_slide.layout.tissue, found.shape, downsample=4.0)
    assert _iou(found, truth) > 0.95


def test_blank_glass_has_no_tissue():
    rng = np.random.default_rng(0)
    glass = (240 + rng.normal(0, 3, (300, 300, 3))).clip(0, 255).astype(np.uint8)
    assert not detect_tissue(glass, 8.0).any()


def test_small_specks_are_removed_and_threshold_is_exposed():
    img = np.full((200, 200, 3), 245, np.uint8)
    img[20:120, 20:120] = (200, 120, 180)  # 100 x 100 px of tissue
    img[160:163, 160:163] = (200, 120, 180)  # a 3 x 3 speck
    mask = detect_tissue(img, 8.0, TissueParams(min_area_um2=10_000))
    assert mask[70, 70] and not mask[161, 161]
    assert not detect_tissue(img, 8.0, TissueParams(threshold=250)).any()


def test_rejects_non_rgb():
    with pytest.raises(MaskError, match="uint8"):
        detect_tissue(np.zeros((10, 10), np.uint8))


def test_real_h_and_e_tissue_is_found_at_any_resolution(shared_data):
    """CMU-1-Small-Region (real Aperio H&E): about a third of the image is tissue, and the
    answer does not depend on the resolution the mask is requested at."""
    import cv2

    with open_slide(shared_data / "slides/aperio/CMU-1-Small-Region.svs") as slide:
        full = detect_tissue(slide.read_level(0), slide.mpp[0])
        coarse = detect_tissue(slide.read_region((0, 0), (277, 370), mpp=4.0), 4.0)
    assert 0.25 < full.mean() < 0.55 and 0.25 < coarse.mean() < 0.55
    down = cv2.resize(full.astype(np.uint8), coarse.shape[::-1],
                      interpolation=cv2.INTER_NEAREST).astype(bool)
    assert _iou(down, coarse) > 0.85


def test_small_synthetic_slide_keeps_its_tissue(tmp_path):
    """The smallest supported slides (2,000 px) have small tissue pieces: none is lost."""
    from exaslide.synth import SynthSpec, write_synthetic_slide

    made = write_synthetic_slide(tmp_path / "s.tif", SynthSpec(width=2000, height=1500, seed=4))
    with open_slide(made.path) as slide:
        image = slide.read_region((0, 0), (250, 188), mpp=4.0)
    found = detect_tissue(image, 4.0)
    truth = rasterize(made.layout.tissue, found.shape, downsample=8.0)
    assert _iou(found, truth) > 0.9
