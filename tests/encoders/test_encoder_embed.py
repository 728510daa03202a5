"""``embed patches --encoder``: patches are read at the encoder's resolution and size,
centred on the indexed patches (an index at another resolution serves every encoder),
normalised and embedded by the encoder's spec."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from click.testing import CliRunner

from exaslide.data import SlidePatchDataset
from exaslide.data.sources import read_index_table
from exaslide.errors import RetrievalError
from exaslide.manifest import read_manifest
from exaslide.patches import ExtractOptions, PatchSpec, SamplingOptions, run_extraction
from exaslide.patches.reader import PatchReader
from exaslide.retrieval.embed import embed_patches
from exaslide.retrieval.store import read_embeddings
from exaslide.synth import SynthSpec, make_cohort


@pytest.fixture(scope="module")
def index_1mpp(tmp_path_factory):
    """One 0.5 µm/px synthetic slide indexed with 128 px patches at 1 µm/px (each covers
    256 level-0 pixels); a few patches only."""
    root = tmp_path_factory.mktemp("enc")
    manifest = make_cohort(root / "cohort", 1, tumour_fraction=1.0, seed=7,
                           base=SynthSpec(width=1024, height=768, tumours=1),
                           size_jitter=0.0)
    options = ExtractOptions(spec=PatchSpec(size=128, mpp=1.0),
                             sampling=SamplingOptions(min_tissue=0.5))
    outcomes = run_extraction(read_manifest(manifest), root / "out", options,
                              scheduler="inline")
    assert [o.status for o in outcomes] == ["done"]
    return root / "out"


def _first(index_dir):
    table = read_index_table(index_dir)
    row = table.slice(0, 1).to_pylist()[0]
    return table, row, SlidePatchDataset(index_dir).patches.paths[0]


def test_the_dataset_reads_at_another_resolution_centred(index_1mpp):
    _, row, path = _first(index_1mpp)
    assert row["mpp"] == 1.0 and row["size"] == 128
    at_encoder = SlidePatchDataset(index_1mpp, size=224, mpp=0.5)
    with PatchReader(path, PatchSpec(size=224, mpp=0.5)) as reader:
        # 256 level-0 px indexed, 224 read: 16 px in on each side
        expected = reader.read(row["x"] + 16, row["y"] + 16, writable=True)
    assert torch.equal(at_encoder[0][0], torch.from_numpy(expected).permute(2, 0, 1))
    assert at_encoder[0][2]["key"] == row["key"]
    same = SlidePatchDataset(index_1mpp, size=64, mpp=1.0)  # the index's own resolution
    assert torch.equal(same[0][0], SlidePatchDataset(index_1mpp)[0][0][:, 32:96, 32:96])
    with pytest.raises(ValueError, match="mpp must be positive"):
        SlidePatchDataset(index_1mpp, mpp=0)


def test_embed_with_an_encoder(index_1mpp, tmp_path):
    from exaslide.encoders import build_encoder, encode

    store = embed_patches(None, index_1mpp, tmp_path / "store", encoder="resnet50_trunc",
                          weights="random", workers=0, batch_size=8, progress=False)
    emb = read_embeddings(store)
    info = emb.info
    assert info["model"] == "encoder:resnet50-trunc" and info["dim"] == 1024
    assert info["weights"] == "random:seed0" and info["model_path"] is None
    assert info["patch"] == {"size": 224, "level": None, "mpp": 0.5, "resample": True}
    assert info["mean"] == [0.485, 0.456, 0.406] and info["std"] == [0.229, 0.224, 0.225]
    table, row, path = _first(index_1mpp)
    assert emb.vectors.shape == (table.num_rows, 1024)
    module, spec = build_encoder("resnet50-trunc", random_weights=True)
    with PatchReader(path, PatchSpec(size=224, mpp=0.5)) as reader:
        patch = reader.read(row["x"] + 16, row["y"] + 16)
    expected = encode(module, spec, patch[None]).numpy()[0]
    got = emb.vectors[emb.table["key"].to_pylist().index(row["key"])]
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)  # stored as float16
    outcomes = []  # seeded random weights: a rerun resumes (nothing redone)
    embed_patches(None, index_1mpp, store, encoder="resnet50-trunc", weights="random",
                  workers=0, progress=False, on_result=outcomes.append)
    assert {o.status for o in outcomes} == {"skipped"}


def test_bad_encoder_arguments(index_1mpp, tmp_path):
    with pytest.raises(RetrievalError, match="give a model or an encoder"):
        embed_patches("small-cnn", index_1mpp, tmp_path / "a", encoder="uni")
    with pytest.raises(RetrievalError, match="input size is fixed"):
        embed_patches(None, index_1mpp, tmp_path / "b", encoder="uni", size=256)


def _cli(*args):
    from exaslide.cli.main import cli

    return CliRunner().invoke(cli, list(args))


def test_embed_patches_cli_with_an_encoder(index_1mpp, tmp_path):
    split = read_index_table(index_1mpp).column("split")[0].as_py()
    out = tmp_path / "store"
    result = _cli("embed", "patches", "--encoder", "resnet50-trunc", "--weights", "random",
                  str(index_1mpp), "--out", str(out), "--workers", "0", "--split", split)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "embeddings.json").read_text())
    assert info["model"] == "encoder:resnet50-trunc"
    n = read_index_table(index_1mpp, pc.field("split") == split).num_rows
    assert read_embeddings(out).vectors.shape == (n, 1024)


@pytest.mark.parametrize("args,message", [
    (["--encoder", "unii"], "unknown encoder 'unii'; did you mean uni"),
    (["--encoder", "uni"], "uni: weights not found at"),
    (["--encoder", "conch"], "conch: not buildable offline"),
    (["--encoder", "uni", "--size", "256"], "--size"),
    (["--weights", "w.bin", "small-cnn"], "--weights goes with --encoder"),
])
def test_embed_patches_cli_errors_are_one_line(index_1mpp, tmp_path, args, message):
    result = _cli("embed", "patches", *args, str(index_1mpp), "--out", str(tmp_path / "o"),
                  "--hf-cache", str(tmp_path))
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
