"""Patch embeddings: one row per patch, the model's features, resume, ranks, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from exaslide.data import SlidePatchDataset
from exaslide.data.sources import read_index_table
from exaslide.errors import RetrievalError
from exaslide.models import create_model, embedding_dim, forward_features, save_model
from exaslide.retrieval import embed as embed_module
from exaslide.retrieval.embed import embed_patches
from exaslide.retrieval.store import read_embeddings

VAL = pc.field("split") == "val"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("small-cnn")
    path = tmp_path_factory.mktemp("model") / "model.pt"
    meta = {"classes": ["normal", "tumour"], "patch": {"size": 64, "level": 0, "mpp": None},
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    return save_model(path, model, meta)


def _slides(extracted, filter=None):
    return sorted(set(read_index_table(extracted, filter).column("slide_id").to_pylist()))


def test_one_row_per_patch_with_the_models_features(extracted, model_file, tmp_path):
    store = embed_patches(model_file, extracted, tmp_path / "store", workers=0,
                          batch_size=32, progress=False)
    emb = read_embeddings(store)
    index = read_index_table(extracted)
    assert sorted(emb.table["key"].to_pylist()) == sorted(index["key"].to_pylist())
    assert {"key", "slide_id", "x", "y", "level", "size", "label", "split"} <= \
        set(emb.table.column_names)
    from exaslide.models import load_model

    model, _ = load_model(model_file)
    assert emb.vectors.shape == (index.num_rows, embedding_dim(model))
    info = emb.info
    assert info["kind"] == "patches" and info["model"] == "small-cnn"
    assert info["model_path"] == str(model_file.resolve())
    assert info["patch"]["size"] == 64 and info["mean"] == [0.5, 0.5, 0.5]
    # the stored vectors are forward_features of the dataset's images
    dataset = SlidePatchDataset(extracted)
    rows = {k: i for i, k in enumerate(emb.table["key"].to_pylist())}
    picks = [0, 7, len(dataset) - 1]
    images = torch.stack([dataset[i][0] for i in picks]).float().div(255)
    x = (images - 0.5) / 0.25
    with torch.inference_mode():
        expected = forward_features(model, x).numpy()
    got = emb.vectors[[rows[dataset[i][2]["key"]] for i in picks]]
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)
    status = json.loads((store / "embed_status.json").read_text())
    assert [s["status"] for s in status] == ["done"] * len(_slides(extracted))


def test_resume_skips_done_slides_and_redoes_a_lost_part(extracted, model_file, tmp_path,
                                                         monkeypatch):
    store = tmp_path / "store"
    embed_patches(model_file, extracted, store, filter=VAL, workers=0, progress=False)
    slides = _slides(extracted, VAL)
    parts = {s: store / "parts" / f"{s}.npy" for s in slides}
    mtimes = {s: p.stat().st_mtime_ns for s, p in parts.items()}
    calls = []
    original = embed_module._embed_slide

    def counting(module, rows, *args, **kwargs):
        calls.append(rows.column("slide_id")[0].as_py())
        return original(module, rows, *args, **kwargs)

    monkeypatch.setattr(embed_module, "_embed_slide", counting)
    outcomes = []
    embed_patches(model_file, extracted, store, filter=VAL, workers=0, progress=False,
                  on_result=outcomes.append)
    assert calls == [] and {o.status for o in outcomes} == {"skipped"}
    lost = slides[0]
    (store / "parts" / f"{lost}.parquet").unlink()  # a run killed before the part ended
    embed_patches(model_file, extracted, store, filter=VAL, workers=0, progress=False)
    assert calls == [lost]
    assert all(parts[s].stat().st_mtime_ns == mtimes[s] for s in slides[1:])


def test_resuming_with_new_random_weights_is_refused(extracted, tmp_path):
    store = tmp_path / "store"
    embed_patches("small-cnn", extracted, store, filter=VAL, workers=0, progress=False)
    with pytest.raises(RetrievalError, match="random weights"):
        embed_patches("small-cnn", extracted, store, filter=VAL, workers=0, progress=False)


def test_ranks_embed_disjoint_slides(extracted, model_file, tmp_path):
    store = tmp_path / "store"
    done = {0: [], 1: []}
    for rank in (0, 1):
        embed_patches(model_file, extracted, store, workers=0, progress=False, rank=rank,
                      world_size=2, on_result=lambda o, r=rank: done[r].append(o.slide_id))
    assert set(done[0]).isdisjoint(done[1])
    assert sorted(done[0] + done[1]) == _slides(extracted)
    assert (store / "embed_status.rank1.json").is_file()


def test_a_failing_slide_does_not_stop_the_others(extracted, tmp_path, monkeypatch):
    original = embed_module._embed_slide
    first = _slides(extracted)[0]

    def failing(module, rows, *args, **kwargs):
        if rows.column("slide_id")[0].as_py() == first:
            raise OSError("disk on fire")
        return original(module, rows, *args, **kwargs)

    monkeypatch.setattr(embed_module, "_embed_slide", failing)
    outcomes = []
    embed_patches("small-cnn", extracted, tmp_path / "s", workers=0, progress=False,
                  on_result=outcomes.append)
    assert [o.status for o in outcomes] == ["failed", "done"]
    assert "disk on fire" in outcomes[0].error


def test_another_model_in_the_same_store_is_refused(extracted, tmp_path):
    store = tmp_path / "store"
    embed_patches("small-cnn", extracted, store, filter=VAL, workers=0, progress=False)
    with pytest.raises(RetrievalError, match="model_path"):
        save_model(tmp_path / "m.pt", create_model("small-cnn"),
                   {"classes": ["normal", "tumour"]})
        embed_patches(tmp_path / "m.pt", extracted, store, filter=VAL, workers=0,
                      progress=False)


def test_unknown_models_are_clear_errors(extracted, tmp_path):
    from exaslide.errors import ModelError

    with pytest.raises(ModelError, match="no such model file"):
        embed_patches(tmp_path / "missing.pt", extracted, tmp_path / "s", progress=False)
    with pytest.raises(ModelError):
        embed_patches("no-such-model", extracted, tmp_path / "s", progress=False)


def test_cli_embed_and_embed_slides(extracted, model_file, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "exaslide", *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=120)

    store = tmp_path / "store"
    result = run("embed", "patches", model_file, extracted, "--out", store, "--split", "val",
                 "--workers", "0", "--batch-size", "64")
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout and "failed" in result.stdout
    assert set(read_embeddings(store).table["split"].to_pylist()) == {"val"}
    from click.testing import CliRunner

    from exaslide.cli.main import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["embed", "slides", str(store), "--out", str(tmp_path / "slides"),
                                 "--method", "mosaic", "--mosaic-size", "4"])
    assert result.exit_code == 0, result.output
    assert "2 slides: 2 done" in result.output or "1 slides: 1 done" in result.output
    slides = read_embeddings(tmp_path / "slides")
    assert slides.info["kind"] == "slides" and slides.info["method"] == "mosaic"
    result = runner.invoke(cli, ["embed", "patches", str(model_file), str(extracted), "--out",
                                 str(store), "--split", "nosuch"])
    assert result.exit_code == 2 and "selects no patches" in result.output


def test_other_settings_or_moved_patches_are_never_mixed_into_a_store(extracted, model_file,
                                                                      tmp_path):
    import shutil

    import pyarrow.parquet as pq

    store = embed_patches(model_file, extracted, tmp_path / "store", workers=0,
                          filter=VAL, progress=False)
    with pytest.raises(RetrievalError, match="patch="):  # another --size: another space
        embed_patches(model_file, extracted, store, workers=0, filter=VAL, size=48,
                      progress=False)
    # a re-extraction that moves one slide's patches but keeps their number
    moved = tmp_path / "moved"
    shutil.copytree(extracted, moved)
    slide = _slides(extracted, VAL)[0]
    path = moved / "index" / f"{slide}.parquet"
    table = pq.read_table(path)
    keys = [k + "m" for k in table["key"].to_pylist()]
    pq.write_table(table.set_column(table.column_names.index("key"), "key",
                                    __import__("pyarrow").array(keys)), path)
    outcomes = []
    embed_patches(model_file, moved, store, workers=0, filter=VAL, progress=False,
                  on_result=outcomes.append)
    status = {o.slide_id: o.status for o in outcomes}
    assert status[slide] == "done"
    assert all(s == "skipped" for k, s in status.items() if k != slide)
