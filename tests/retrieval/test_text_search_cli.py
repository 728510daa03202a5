"""Text search end to end through the command line: synthetic captioned figures ->
joint image-text store -> index -> `exaslide search --text` (finds the stain asked for)."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args):
    done = subprocess.run([sys.executable, "-m", "exaslide", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_figures_embed_index_and_search_by_text(tmp_path):
    run("figures", "synth", tmp_path / "figs", "-n", 120, "--size", 64, 64)
    run("figures", "embed", tmp_path / "figs", tmp_path / "store", "--patch-size", 64,
        "--steps", 200)
    run("index", "build", tmp_path / "store", "--out", tmp_path / "index")
    done = run("search", tmp_path / "index", "--text",
               "immunohistochemistry, brown DAB staining", "-k", 10, "--json",
               "--gallery", tmp_path / "gallery.png")
    hits = json.loads(done.stdout)
    hits = hits["hits"] if isinstance(hits, dict) else hits
    assert len(hits) == 10 and (tmp_path / "gallery.png").is_file()
    stains = [h.get("meta", h).get("stain") for h in hits]
    assert stains.count("ihc") >= 7, stains  # half the figures are IHC
