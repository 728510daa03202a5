"""The end-to-end demo with its default settings (what `make demo` runs): every step,
metrics.json with the required keys, report.html whose images exist, patch AUC >= 0.95,
and the viewer serving the folder with the heatmaps, masks, annotations and retrieval."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import urllib.request

from exaslide.viewer import serve_in_thread


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo_out"
    done = subprocess.run([sys.executable, "-m", "exaslide", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["patch_auc"] >= 0.95
    assert metrics["slide_auc"] is not None and metrics["froc"] is not None
    assert 0.0 <= metrics["froc"] <= 1.0
    assert 0.0 <= metrics["retrieval_precision_at_10"] <= 1.0
    assert metrics["text_to_image_recall_at_10"] > metrics["captions"]["random"]["10"]
    assert metrics["mil_slide_auc"] >= 0.9 and metrics["stage_kappa"] >= 0.7
    assert metrics["encoder"]["dim"] == 1024 and metrics["encoder"]["patches"] > 0
    staging = metrics["camelyon17"]
    assert staging["nodes"] == 50 and staging["stage"]["patients"] == 5  # one per stage
    assert staging["slide_classes"]["slides"] == 25  # every test node was classified
    assert len(metrics["mil"]["confusion_matrix"]) == 2 and metrics["mil"]["n"] == 4
    page = (out / "report.html").read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert len(images) >= 10  # figure, curves, 4 heatmaps, FROC, ROC, 2 galleries, MIL
    assert all((out / image).is_file() for image in images)
    assert "not produced" not in page
    assert "patch AUC" in done.stdout and "pN-stage kappa" in done.stdout
    assert f"exaslide view {shlex.quote(str(out))}" in done.stdout.splitlines()[-1]
    _check_viewer(out)


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def _check_viewer(out) -> None:
    """What `exaslide view demo_out` serves: every slide, and for a tumour slide of the
    test split a heatmap, a mask and its annotations, and region search."""
    with serve_in_thread([out]) as running:
        slides = _get_json(f"{running.url}api/slides")
        assert len(slides) == 62  # 12 slides and 50 synthetic CAMELYON17 nodes
        assert not any(slide["error"] for slide in slides)
        kinds_seen = set()
        searched = False
        for slide in slides:
            overlays = _get_json(f"{running.url}api/slides/{slide['id']}/overlays")
            assert not any(overlay.get("error") for overlay in overlays), overlays
            kinds = {overlay["kind"] for overlay in overlays}
            kinds_seen |= kinds
            if {"heatmap", "mask", "annotations"} <= kinds and not searched:
                found = _get_json(f"{running.url}api/slides/{slide['id']}/search"
                                  "?x=0&y=0&w=1024&h=1024&k=5")
                assert 0 < len(found["results"]) <= 5
                searched = True
        assert {"heatmap", "mask", "annotations", "patches"} <= kinds_seen
        assert searched
