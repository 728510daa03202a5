"""Synthetic figures with captions: deterministic, captions name the labels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from exaslide.synth.figures import (
    MAG_WORDS,
    STAIN_WORDS,
    TISSUE_WORDS,
    TISSUES,
    make_figures,
    paint_figure,
)


def _rows(folder):
    return [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]


def test_figures_are_deterministic_and_captions_name_the_labels(tmp_path):
    a = make_figures(tmp_path / "a", 12, seed=3, size=(48, 64))
    b = make_figures(tmp_path / "b", 12, seed=3, size=(48, 64))
    rows = _rows(a)
    assert rows == _rows(b) and len(rows) == 12
    for row in rows:
        img_a = np.asarray(Image.open(a / row["image"]))
        assert img_a.shape == (48, 64, 3)
        assert np.array_equal(img_a, np.asarray(Image.open(b / row["image"])))
        caption = row["caption"].lower()
        for words in (TISSUE_WORDS[row["tissue"]], STAIN_WORDS[row["stain"]],
                      MAG_WORDS[row["magnification"]]):
            assert any(w.lower() in caption for w in words), (caption, words)
    with open(a / "captions.csv", newline="") as fh:
        assert list(csv.DictReader(fh)) == rows
    assert _rows(make_figures(tmp_path / "c", 12, seed=4, size=(48, 64))) != rows


def test_tissues_stains_and_magnifications_look_different():
    imgs = {t: paint_figure(t, "he", "high", (64, 64), 0).astype(float) for t in TISSUES}
    means = np.array([im.mean((0, 1)) for im in imgs.values()])
    assert np.min([np.abs(means[i] - means[j]).sum() for i in range(4) for j in range(i)]) > 5
    he = paint_figure("tumour", "he", "high", (64, 64), 0).astype(float)
    ihc = paint_figure("tumour", "ihc", "high", (64, 64), 0).astype(float)
    assert (ihc[..., 0] - ihc[..., 2]).mean() > (he[..., 0] - he[..., 2]).mean() + 10  # brown


def test_figure_size_is_bounded_and_checked_before_writing(tmp_path):
    from exaslide.synth.slide import SynthError

    for size in ((100_000, 100_000), (8, 64), (64, 5000)):
        with pytest.raises(SynthError, match="each side from 16 to 4096"):
            make_figures(tmp_path / "f", 3, size=size)
    assert not (tmp_path / "f").exists()
