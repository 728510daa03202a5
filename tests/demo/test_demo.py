"""The end-to-end demo with its default settings (what `make demo` runs): every step,
metrics.json with the required keys, report.html whose images exist, patch AUC >= 0.95."""

from __future__ import annotations

import json
import re
import subprocess
import sys


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
