"""``exaslide infer --decode`` and ``exaslide embed patches --decode / --workers``: the
compressed batch path decoded on the CPU gives what the pixel path gives, the heatmap
records the decode used, and bad settings are usage errors (exit code 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from exaslide.cli.main import cli
from exaslide.evaluate.heatmap import read_heatmap
from exaslide.models import create_model, save_model


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    """A small-cnn with seeded random weights: 32-pixel patches at level 2 (30 cells of
    the 3072 x 2304 synthetic slide)."""
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("model") / "model.pt",
                      create_model("small-cnn", num_classes=2),
                      {"classes": ["normal", "tumour"],
                       "patch": {"size": 32, "level": 2, "mpp": None},
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})


def test_decode_choices_are_the_inference_modes():
    from exaslide.cli.options import DECODE_CHOICES
    from exaslide.infer.decoded import DECODE_MODES

    assert DECODE_CHOICES == DECODE_MODES


@pytest.mark.parametrize("command", [("infer",), ("embed", "patches")])
def test_decode_defaults_to_off_until_nvjpeg_is_measured(command):
    """Off by default, also on CUDA: auto is the documented setting for a GPU node."""
    shown = invoke(*command, "--help")
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "Use auto on a GPU node" in text
    option = text.split("--decode [auto|gpu|cpu|off]")[1].split(" --")[0]
    assert option.endswith("[default: off]")


def test_infer_decode_cpu_gives_the_heatmap_of_decode_off(tmp_path, synth_slide, small_cnn,
                                                          one_torch_thread):
    heatmaps = {}
    for decode in ("off", "cpu", "auto"):
        out = tmp_path / decode
        done = invoke("infer", small_cnn, synth_slide.path, "--out", out, "--workers", 0,
                      "--batch-size", 8, "--decode", decode)
        assert done.exit_code == 0, done.output
        heatmaps[decode] = read_heatmap(out, "slide")
    assert heatmaps["off"].shape == (5, 6)
    assert np.isfinite(heatmaps["off"].probabilities).sum() >= 5  # tissue cells computed
    np.testing.assert_array_equal(heatmaps["cpu"].probabilities,
                                  heatmaps["off"].probabilities)
    assert heatmaps["cpu"].meta["decode"] == "cpu"
    assert heatmaps["off"].meta["decode"] == "off"
    assert heatmaps["auto"].meta["decode"] == "off"  # auto on the CPU: off


def test_infer_bad_decode_is_a_usage_error(tmp_path, synth_slide, small_cnn):
    bogus = invoke("infer", small_cnn, synth_slide.path, "--out", tmp_path, "--decode",
                   "bogus")
    assert bogus.exit_code == 2 and "'bogus' is not one of" in bogus.output
    gpu = invoke("infer", small_cnn, synth_slide.path, "--out", tmp_path, "--decode", "gpu")
    assert gpu.exit_code == 2 and "decode 'gpu' needs a CUDA device" in gpu.output


@pytest.fixture(scope="module")
def embed_model(tmp_path_factory):
    """A small-cnn model file reading 64-pixel level-0 patches (those of ``extracted``)."""
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("embed") / "model.pt", create_model("small-cnn"),
                      {"classes": ["normal", "tumour"],
                       "patch": {"size": 64, "level": 0, "mpp": None},
                       "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})


def _sorted_vectors(store) -> np.ndarray:
    from exaslide.retrieval.store import read_embeddings

    emb = read_embeddings(store)
    order = np.argsort(emb.table["key"].to_numpy(zero_copy_only=False))
    return np.asarray(emb.vectors)[order]


def test_embed_decode_cpu_gives_the_vectors_of_decode_off(tmp_path, extracted, embed_model,
                                                          one_torch_thread):
    vectors = {}
    for decode, workers in (("off", ()), ("cpu", ("--workers", 1))):
        store = tmp_path / decode
        done = invoke("embed", "patches", embed_model, extracted, "--out", store, "--split",
                      "val", "--batch-size", 32, "--decode", decode, *workers)
        assert done.exit_code == 0, done.output
        vectors[decode] = _sorted_vectors(store)
    assert len(vectors["off"]) > 10
    np.testing.assert_array_equal(vectors["cpu"], vectors["off"])


def test_embed_bad_decode_or_workers_is_a_usage_error(tmp_path, extracted, embed_model):
    def run(*options):
        return invoke("embed", "patches", embed_model, extracted, "--out", tmp_path / "s",
                      *options)

    bogus = run("--decode", "bogus")
    assert bogus.exit_code == 2 and "'bogus' is not one of" in bogus.output
    negative = run("--workers", -1)
    assert negative.exit_code == 2 and "--workers" in negative.output
    gpu = run("--decode", "gpu")
    assert gpu.exit_code == 2 and "decode 'gpu' needs a CUDA device" in gpu.output
