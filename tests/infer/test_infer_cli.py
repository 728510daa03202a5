"""``exaslide infer`` end to end in a subprocess (a small-cnn with random weights)."""

from __future__ import annotations

import subprocess
import sys

from exaslide.evaluate.heatmap import read_heatmap
from exaslide.manifest import write_manifest
from exaslide.models import create_model, save_model


def run(*args):
    return subprocess.run([sys.executable, "-m", "exaslide", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_manifest_failure_then_single_slide_resume(tmp_path, synth_slide):
    model = save_model(tmp_path / "model.pt", create_model("small-cnn", num_classes=2),
                       {"classes": ["normal", "tumour"],
                        "patch": {"size": 32, "level": 2, "mpp": None},
                        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    corrupt = tmp_path / "corrupt.svs"
    corrupt.write_bytes(b"garbage")
    manifest = write_manifest(tmp_path / "cohort.csv", [
        {"slide_id": "slide", "path": synth_slide.path, "annotation": "", "label": "",
         "split": ""},
        {"slide_id": "broken", "path": corrupt, "annotation": "", "label": "", "split": ""},
    ])
    out = tmp_path / "out"
    done = run("infer", model, manifest, "--out", out, "--batch-size", 4, "--workers", 2)
    assert done.returncode == 1, done.stderr
    assert "exaslide: error: broken:" in done.stderr and "corrupt.svs" in done.stderr
    assert "2 slides: 1 done, 0 already done, 1 failed" in done.stdout
    heat = read_heatmap(out, "slide")
    assert heat.shape == (5, 6) and heat.meta["model"] == "small-cnn"  # 512 px cells
    for name in ("slide.overlay.png", "slide.heatmap.tif", "infer_status.json"):
        assert (out / name).is_file()

    again = run("infer", model, synth_slide.path, "--out", out)
    assert again.returncode == 0, again.stderr
    assert "1 slides: 0 done, 1 already done, 0 failed" in again.stdout

    missing = run("infer", tmp_path / "nope.pt", synth_slide.path, "--out", out)
    assert missing.returncode == 2 and "nope.pt: no such model file" in missing.stderr
