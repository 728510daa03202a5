"""Export fixtures: a heatmap, a MIL attention heatmap and detections of the session's
synthetic slide (``synth_slide``: 3072 x 2304, three tumours, each cut by an exclusion)."""

from __future__ import annotations

import numpy as np
import pytest

from exaslide.heatmaps import write_heatmap

CELL = 256


def _meta(synth_slide, **extra):
    return {"slide": str(synth_slide.path), "level0_size": [3072, 2304], "mpp": [0.5, 0.5],
            "origin": [0, 0], "cell": CELL, "classes": ["normal", "tumour"], **extra}


def heatmap_values(seed: int = 0) -> np.ndarray:
    """9 x 12 cells: row 0 not computed, a computed 0 at (1, 1), a 1 at (2, 2), a value
    of exactly 0.5 at (3, 3), the rest random."""
    p = np.random.default_rng(seed).random((9, 12)).astype(np.float32)
    p[0, :] = np.nan
    p[1, 1], p[2, 2], p[3, 3] = 0.0, 1.0, 0.5
    return p


@pytest.fixture(scope="session")
def heatmap_folder(synth_slide, tmp_path_factory):
    """``heatmaps/slide.heatmap.{npy,json}`` of the synthetic slide."""
    folder = tmp_path_factory.mktemp("heatmaps")
    write_heatmap(folder, "slide", heatmap_values(0), _meta(synth_slide, model="cnn"))
    return folder


@pytest.fixture(scope="session")
def attention_folder(synth_slide, tmp_path_factory):
    """A MIL attention heatmap of the synthetic slide (``meta["score"] == "attention"``)."""
    folder = tmp_path_factory.mktemp("attention")
    write_heatmap(folder, "slide", heatmap_values(1) / 10,
                  _meta(synth_slide, model="abmil", score="attention"))
    return folder


@pytest.fixture(scope="session")
def detections_csv(tmp_path_factory):
    """``detections.csv`` as ``exaslide evaluate`` writes it, two slides."""
    path = tmp_path_factory.mktemp("evaluation") / "detections.csv"
    path.write_text("slide_id,x,y,p,outcome,lesion\n"
                    "slide,1000.0,1100.0,0.97,tp,2\n"
                    "slide,300.0,400.0,0.6,fp,0\n"
                    "slide,2000.0,500.0,0.55,itc,1\n"
                    "slide,10.0,20.0,0.51,,\n"
                    "other,5.0,5.0,0.9,tp,1\n", encoding="utf-8")
    return path
