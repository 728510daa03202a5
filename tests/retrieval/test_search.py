"""Queries by image and slide region through the CLI, the gallery, evaluate-retrieval,
and one-line errors; a tiny patch store embedded with a random-weight small-cnn."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from exaslide.errors import RetrievalError
from exaslide.retrieval.index import build_index, load_index
from exaslide.retrieval.store import write_info, write_part

SIZE, LEVEL, STEP = 32, 1, 128  # 32 px at level 1 (downsample 4) = 128 level-0 px


def run(*args):
    return subprocess.run([sys.executable, "-m", "exaslide", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tiny(synth_slide, tmp_path_factory):
    """(root, store, index folder, slide path, the patch at (512, 384)) ."""
    import torch

    from exaslide.models import create_model, embedding_dim, load_model, save_model
    from exaslide.retrieval.search import _embed_patches
    from exaslide.slides import open_slide

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("retrieval")
    meta = {"classes": ["normal", "tumour"], "patch": {"size": SIZE, "level": LEVEL,
                                                       "mpp": None},
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    model_path = save_model(root / "model.pt", create_model("small-cnn", num_classes=2), meta)
    model, _ = load_model(model_path)
    spec = {"size": SIZE, "level": LEVEL, "mpp": None, "mean": meta["mean"],
            "std": meta["std"]}
    coords = [(x, y) for y in range(0, 1536, STEP) for x in range(0, 2048, STEP)]
    with open_slide(synth_slide.path) as slide:
        patches = [slide.read_region((x, y), (SIZE, SIZE), level=LEVEL) for x, y in coords]
    vectors = _embed_patches(model, spec, patches)
    n = len(coords)
    table = pa.table({"key": [f"slide:{x}:{y}" for x, y in coords],
                      "slide_id": ["slide" if i % 2 else "other" for i in range(n)],
                      "x": [x for x, _ in coords], "y": [y for _, y in coords],
                      "level": [LEVEL] * n, "size": [SIZE] * n,
                      "label": ["left" if x < 1024 else "right" for x, _ in coords],
                      "split": ["test" if i % 4 == 0 else "train" for i in range(n)]})
    store = root / "store"
    write_info(store, {"kind": "patches", "dim": embedding_dim(model), "model": "small-cnn",
                       "model_path": str(model_path), "patch": meta["patch"],
                       "mean": meta["mean"], "std": meta["std"]})
    write_part(store, "slide", table, vectors)
    index = root / "index"
    build_index(store, index, "flat", slides={"slide": str(synth_slide.path),
                                              "other": str(synth_slide.path)})
    target = int(np.argmax([p.std() for p in patches]))  # tissue, not blank background
    return root, store, index, synth_slide.path, patches[target], coords[target]


def test_index_build_cli(tiny, tmp_path):
    _, store, _, _, _, _ = tiny
    done = run("index", "build", store, "--out", tmp_path / "idx", "--kind", "hnsw")
    assert done.returncode == 0, done.stderr
    assert "192 vectors" in done.stdout and "hnsw" in done.stdout
    assert load_index(tmp_path / "idx").kind == "hnsw"


def test_image_query_finds_the_patch_and_writes_a_gallery(tiny, tmp_path):
    import cv2

    _, _, index, _, patch, (x, y) = tiny
    png = tmp_path / "q.png"
    cv2.imwrite(str(png), cv2.cvtColor(patch, cv2.COLOR_RGB2BGR))
    done = run("search", index, "--image", png, "-k", 3, "--json",
               "--gallery", tmp_path / "g.png")
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert len(hits) == 3 and hits[0]["rank"] == 1 and hits[0]["key"] == f"slide:{x}:{y}"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_region_query_table_output(tiny, tmp_path):
    _, _, index, slide, patch, (x, y) = tiny
    from exaslide.retrieval.search import embed_image, embed_region

    vindex = load_index(index)
    assert np.allclose(embed_region(vindex, slide, x, y, 128, 128),
                       embed_image(vindex, patch), atol=1e-5)
    done = run("search", index, "--slide", slide, "--region", f"{x},{y},128,128", "-k", 2,
               "--gallery", tmp_path / "r.png")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["rank", "score", "id"] and len(lines) == 4
    assert float(lines[1].split()[1]) == pytest.approx(1.0, abs=1e-3)
    assert lines[1].split()[3:6] == [str(x), str(y), "left" if x < 1024 else "right"]
    assert (tmp_path / "r.png").exists()


def test_large_region_is_tiled_and_averaged(tiny):
    from exaslide.retrieval.search import embed_region

    _, _, index, slide, _, (x, y) = tiny
    vindex = load_index(index)
    one = embed_region(vindex, slide, x, y, 128, 128)
    four = embed_region(vindex, slide, x, y, 256, 256)
    cells = [embed_region(vindex, slide, x + dx, y + dy, 128, 128)
             for dy in (0, 128) for dx in (0, 128)]
    assert one.shape == four.shape and np.allclose(four, np.mean(cells, axis=0), atol=1e-4)
    with pytest.raises(RetrievalError, match="max 1024"):
        embed_region(vindex, slide, 0, 0, 3072 * 4, 2304 * 4)


def test_text_hook_and_errors(tiny, tmp_path):
    from exaslide.retrieval.search import embed_text

    _, _, index, _, _, _ = tiny
    assert embed_text("tumour", lambda t: np.ones((1, 4))).shape == (4,)
    with pytest.raises(RetrievalError, match="multimodal"):
        embed_text("tumour", None)
    missing = run("search", tmp_path / "nope", "--image", __file__)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "not a readable vector index" in missing.stderr
    from exaslide.retrieval.search import embed_image

    with pytest.raises(RetrievalError, match="not a readable image"):
        embed_image(load_index(index), __file__)


def test_evaluate_retrieval_cli(tiny):
    _, store, index, _, _, _ = tiny
    done = run("evaluate", "retrieval", index, "--queries", store, "-k", 5, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["queries"] == 48 and result["k"] == 5
    assert 0.0 <= result["precision_at_k"] <= 1.0 and set(result["per_label"]) == {
        "left", "right"}
