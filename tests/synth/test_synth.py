"""Synthetic slides: pyramid, metadata, determinism, ground truth, bounded memory, cohorts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import openslide
import pytest

from exaslide.annotations import read_annotations
from exaslide.manifest import read_manifest
from exaslide.synth import SynthSpec, level_sizes, make_cohort, write_synthetic_slide
from exaslide.synth.slide import SynthError, check_disk_space, estimated_disk_bytes


def test_openslide_sees_levels_and_mpp(synth_slide):
    slide = openslide.OpenSlide(synth_slide.path)
    assert slide.level_dimensions == ((3072, 2304), (768, 576), (192, 144))
    assert slide.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert slide.properties["openslide.vendor"] == "generic-tiff"
    assert json.loads(slide.properties["openslide.comment"])["exaslide_synthetic"]["seed"] == 3


def test_tumour_looks_different_from_normal_tissue(synth_slide):
    slide = openslide.OpenSlide(synth_slide.path)
    tumour = synth_slide.layout.tumours[0].centroid
    normal = synth_slide.layout.tissue.difference(
        synth_slide.layout.tumour_region.buffer(200)).representative_point()
    def patch(p):
        return np.asarray(slide.read_region((int(p.x) - 64, int(p.y) - 64), 0, (128, 128)))[..., :3]
    t, n = patch(tumour).astype(float), patch(normal).astype(float)
    assert n.mean() - t.mean() > 25  # tumour is darker (crowded nuclei)
    assert (n[..., 1] - t[..., 1]).mean() > 20


def test_annotations_match_layout(synth_slide):
    annotations = read_annotations(synth_slide.annotation_path)
    assert annotations.labels() == {"tumour": 3, "exclusion": 3}
    assert not annotations.repairs
    for ann, poly in zip(annotations.select("tumour"), synth_slide.layout.tumours, strict=True):
        assert ann.group == "_0"
        np.testing.assert_array_equal(np.asarray(ann.source.exterior.coords),
                                      np.asarray(poly.exterior.coords))


def test_deterministic_for_a_seed(tmp_path):
    spec = SynthSpec(width=1024, height=768, tumours=2, seed=11)
    a = write_synthetic_slide(tmp_path / "a.tif", spec)
    b = write_synthetic_slide(tmp_path / "b.tif", spec)
    c = write_synthetic_slide(tmp_path / "c.tif", SynthSpec(width=1024, height=768, seed=12))
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a.path, b.path, c.path)]
    assert digest[0] == digest[1] != digest[2]
    assert a.annotation_path.read_bytes() == b.annotation_path.read_bytes()


def test_no_tumours_means_no_annotation_file(tmp_path):
    made = write_synthetic_slide(tmp_path / "n.tif", SynthSpec(width=600, height=400, tumours=0))
    assert made.annotation_path is None and not (tmp_path / "n.xml").exists()


def test_invalid_specs_are_rejected(tmp_path):
    for bad in (SynthSpec(width=100), SynthSpec(tile=100), SynthSpec(tumours=-1),
                SynthSpec(level_factor=3), SynthSpec(width=250_001),
                SynthSpec(height=10_000_000), SynthSpec(tumours=1001),
                SynthSpec(width=200_000, tile=512), SynthSpec(mpp=float("nan"))):
        with pytest.raises(SynthError):
            write_synthetic_slide(tmp_path / "sub" / "x.tif", bad)
    assert not list(tmp_path.iterdir())
    SynthSpec(width=250_000, height=250_000).validate()  # the documented maximum


def test_disk_estimate_covers_the_written_file(tmp_path):
    for quality in (50, 90, 100):
        spec = SynthSpec(width=2048, height=2048, quality=quality, seed=3)
        made = write_synthetic_slide(tmp_path / f"q{quality}.tif", spec)
        spooled = sum(w * h * 3 for w, h in level_sizes(spec)[1:3])
        assert made.path.stat().st_size < estimated_disk_bytes(spec) - spooled
    big = estimated_disk_bytes(SynthSpec(width=200_000, height=200_000))
    assert 10e9 < big < 20e9


def test_not_enough_disk_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(SynthError, match=r"needs about 2.0 GB .* 1.0 GB are free"):
        check_disk_space(tmp_path / "a" / "b", 2_000_000_000, free=1_000_000_000)
    check_disk_space(tmp_path / "a" / "b", 10)  # the nearest existing parent is measured
    assert not (tmp_path / "a").exists()


def test_cohort_sizes_stay_within_the_maximum(tmp_path):
    from exaslide.synth.cohort import _slide_spec

    rng = np.random.default_rng(0)
    base = SynthSpec(width=250_000, height=250_000)
    for _ in range(20):
        spec = _slide_spec(base, rng, 0.25, True)
        assert max(spec.width, spec.height) <= 250_000
    with pytest.raises(SynthError, match="1 to 100000 slides"):
        make_cohort(tmp_path / "c", 0)
    assert not (tmp_path / "c").exists()


def test_level_sizes():
    assert level_sizes(SynthSpec(width=100_000, height=80_000)) == [
        (100_000, 80_000), (25_000, 20_000), (6250, 5000), (1562, 1250), (390, 312)]


def test_cohort_manifest(tmp_path):
    manifest = make_cohort(tmp_path, 4, tumour_fraction=0.5, seed=5,
                           base=SynthSpec(width=800, height=600, tumours=2))
    entries = read_manifest(manifest)
    assert [e.slide_id for e in entries] == [f"synth_00{i}" for i in range(4)]
    assert sorted(e.label for e in entries) == ["normal", "normal", "tumour", "tumour"]
    for e in entries:
        assert e.path.exists() and e.split in ("train", "val", "test")
        assert (e.annotation is not None) == (e.label == "tumour")
        assert int(e.extra["tumours"]) >= (1 if e.label == "tumour" else 0)
    assert "synth_000.tif" in manifest.read_text()  # paths are relative to the manifest


MEMORY_SCRIPT = """
import sys
from exaslide.resources import peak_rss_mb
from exaslide.synth import SynthSpec, write_synthetic_slide
write_synthetic_slide(sys.argv[1], SynthSpec(width=50_000, height=50_000, tumours=4, seed=1))
print(peak_rss_mb())
"""


def test_50k_slide_in_bounded_memory(tmp_path):
    """A 50,000 x 50,000 slide (2.5 gigapixels, 7.5 GB raw) is written in under 1 GB."""
    out = tmp_path / "big.tif"
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(out)], check=True,
                          capture_output=True, text=True, timeout=900)
    peak_mb = float(done.stdout.strip())
    assert peak_mb < 1024, f"peak memory {peak_mb:.0f} MB"
    slide = openslide.OpenSlide(out)
    assert slide.level_dimensions[0] == (50_000, 50_000) and slide.level_count == 5
def test_a_height_just_over_a_tile_row_writes_every_level(tmp_path):
    """The last strip (1 row here) is thinner than the level factor: no crash, and the
    next level has height // factor rows."""


    made = write_synthetic_slide(tmp_path / "odd.tif", SynthSpec(width=1024, height=1025,
                                                                  tumours=1, seed=2))
    with openslide.OpenSlide(str(made.path)) as slide:
        assert slide.level_dimensions[:2] == ((1024, 1025), (256, 256))
