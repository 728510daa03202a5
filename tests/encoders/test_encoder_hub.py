"""Weights from local files and a local Hugging Face cache (never downloaded): the cache
layout ``models--ORG--NAME/{refs,snapshots,blobs}`` is resolved, and what is missing is
one line naming the expected path and the model card."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from exaslide.encoders import (
    EncoderError,
    build_backbone,
    build_encoder,
    find_in_cache,
    get_spec,
    resolve_weights,
    weights_id,
    weights_status,
)

TINY = {"embed_dim": 64, "depth": 1, "num_heads": 4}


def _fake_cache(root, repo="MahmoodLab/UNI", name="pytorch_model.bin", revision="0123abcd",
                refs=True, content=b"weights"):
    """The tree huggingface_hub writes: the file is a link into blobs/<sha256>."""
    folder = root / ("models--" + repo.replace("/", "--"))
    digest = hashlib.sha256(content).hexdigest()
    (folder / "blobs").mkdir(parents=True)
    (folder / "blobs" / digest).write_bytes(content)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    os.symlink(os.path.relpath(folder / "blobs" / digest, snapshot), snapshot / name)
    if refs:
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(revision)
    return snapshot / name, digest


@pytest.mark.parametrize("refs", [True, False])
def test_a_local_cache_is_resolved(tmp_path, refs):
    path, digest = _fake_cache(tmp_path, refs=refs)
    spec = get_spec("uni")
    assert find_in_cache(spec, tmp_path) == path
    status = weights_status(spec, tmp_path)
    assert status.state == "found" and status.path == path
    assert resolve_weights(spec, cache_dir=tmp_path) == path
    assert resolve_weights(spec, tmp_path) == path  # the cache folder given as weights
    assert weights_id(path) == f"sha256:{digest}"  # the blob's name, not read again


def test_refs_main_wins_over_other_snapshots(tmp_path):
    path, _ = _fake_cache(tmp_path)
    other = path.parents[1] / "ffff0000"
    other.mkdir()
    (other / "pytorch_model.bin").write_bytes(b"older revision")
    assert find_in_cache(get_spec("uni"), tmp_path) == path


def test_an_encoder_builds_from_the_cache(tmp_path):
    torch.manual_seed(0)
    source = build_backbone(get_spec("uni"), TINY).eval()
    weights = tmp_path / "w.bin"
    torch.save(source.state_dict(), weights)
    path, digest = _fake_cache(tmp_path / "hub", content=weights.read_bytes())
    module, _ = build_encoder("uni", cache_dir=tmp_path / "hub", overrides=TINY)
    assert module.exaslide_weights == f"sha256:{digest}"
    assert module.exaslide_weights_path == str(path)
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(module(x), source(x))


def test_a_folder_holding_the_file_is_resolved(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert resolve_weights(get_spec("phikon-v2"), tmp_path) == tmp_path / "model.safetensors"


def test_missing_weights_name_the_expected_path_and_the_card(tmp_path):
    with pytest.raises(EncoderError) as info:
        build_encoder("uni2-h", cache_dir=tmp_path)
    message = str(info.value)
    expected = tmp_path / "models--MahmoodLab--UNI2-h" / "snapshots" / "<revision>" / \
        "pytorch_model.bin"
    assert "\n" not in message and f"weights not found at {expected}" in message
    assert "https://huggingface.co/MahmoodLab/UNI2-h (gated: request access there)" in message
    with pytest.raises(EncoderError, match=r"no such weights file for uni; get "
                                           r"pytorch_model.bin from https://hugging"):
        build_encoder("uni", weights=tmp_path / "nope.bin")
    with pytest.raises(EncoderError, match=r"no weights of virchow2 in this folder \(expected "
                                           r".*pytorch_model.bin or .*models--paige-ai--"
                                           r"Virchow2/snapshots/\*/pytorch_model.bin\)"):
        build_encoder("virchow2", weights=tmp_path)
    status = weights_status(get_spec("h-optimus-0"), tmp_path)
    assert status.state == "not found" and "models--bioptimus--H-optimus-0" in status.expected
