"""Model files: round trip, wrapper prefixes, local pretrained weights, bad files."""

from __future__ import annotations

import logging

import pytest
import torch

from exaslide.errors import ModelError
from exaslide.models import (
    CHECKPOINT_FORMAT,
    create_model,
    load_model,
    read_state_dict,
    save_model,
)

META = {"classes": ["normal", "tumour"], "patch": {"size": 224, "level": None, "mpp": 0.5},
        "mean": (0.485, 0.456, 0.406), "std": [0.229, 0.224, 0.225],
        "config": {"out": __import__("pathlib").Path("/runs/x"), "lr": 1e-3}}


@pytest.mark.parametrize("name", ["small-cnn", "resnet18"])
def test_round_trip_identical_outputs(tmp_path, name):
    torch.manual_seed(1)
    model = create_model(name, num_classes=2)
    model.train()(torch.randn(4, 3, 64, 64))  # move the BN running statistics
    path = save_model(tmp_path / "model.pt", model, META)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries
    loaded, meta = load_model(path)
    assert not loaded.training
    assert meta["classes"] == ["normal", "tumour"] and meta["model"] == name
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["config"]["out"] == "/runs/x"
    assert meta["patch"] == {"size": 224, "level": None, "mpp": 0.5}
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model.eval()(x), loaded(x))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["num_classes"] == 2


def test_ddp_and_compiled_prefixes_accepted(tmp_path):
    model = create_model("small-cnn", num_classes=2)
    path = save_model(tmp_path / "model.pt", model, META)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"] = {f"_orig_mod.module.{k}": v for k, v in raw["state_dict"].items()}
    torch.save(raw, path)
    path.with_name("model.pt.sha256").unlink()  # edited on purpose: drop the checksum
    loaded, _ = load_model(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_save_wrapped_model_stores_plain_names(tmp_path):
    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = create_model("small-cnn", num_classes=2)
    path = save_model(tmp_path / "model.pt", Wrapper(model), META)
    assert all(not k.startswith("module.") for k in read_state_dict(path))
    assert load_model(path)[0].exaslide_name == "small-cnn"


def test_pretrained_other_head_loads_backbone(tmp_path, caplog):
    torch.manual_seed(2)
    source = create_model("small-cnn", num_classes=5)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    with caplog.at_level(logging.WARNING, logger="exaslide.models"):
        model = create_model("small-cnn", num_classes=2, pretrained=tmp_path / "weights.pth")
    assert "fc.weight" in caplog.text and "fc.bias" in caplog.text
    state = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key
    assert state["fc.weight"].shape == (2, 400)
    # a save_model file works as pretrained too
    saved = save_model(tmp_path / "model.pt", source, META)
    again = create_model("small-cnn", num_classes=2, pretrained=saved)
    assert torch.equal(again.state_dict()["features.0.0.weight"],
                       source.state_dict()["features.0.0.weight"])


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match=r"missing.pt: no such model file"):
        create_model("small-cnn", pretrained=tmp_path / "missing.pt")
    with pytest.raises(ModelError, match=r"missing.pt"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a torch file at all" * 10)
    with pytest.raises(ModelError, match=r"corrupt.pt: not a readable PyTorch"):
        create_model("small-cnn", pretrained=bad)
    with pytest.raises(ModelError, match=r"corrupt.pt"):
        load_model(bad)
    good = save_model(tmp_path / "model.pt", create_model("small-cnn"), META)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match=r"truncated.pt"):
        load_model(truncated)


def test_wrong_contents(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save(create_model("small-cnn").state_dict(), plain)
    with pytest.raises(ModelError, match="not an exaslide model file"):
        load_model(plain)
    other = tmp_path / "resnet.pth"
    torch.save(create_model("resnet18").state_dict(), other)
    with pytest.raises(ModelError, match=r"only 1 of its .* tensors fit"):
        create_model("small-cnn", pretrained=other)
    path = save_model(tmp_path / "model.pt", create_model("small-cnn", num_classes=3), META)
    path.with_name("model.pt.sha256").unlink()  # edited on purpose below
    raw = torch.load(path, weights_only=True)
    raw["num_classes"] = 2
    torch.save(raw, path)
    with pytest.raises(ModelError, match="do not match model 'small-cnn' with 2 classes"):
        load_model(path)
    raw["name"] = "no-such-model"
    torch.save(raw, path)
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        load_model(path)


def test_save_needs_a_name(tmp_path):
    with pytest.raises(ModelError, match="registry name is unknown"):
        save_model(tmp_path / "m.pt", torch.nn.Linear(3, 2), {})
    path = save_model(tmp_path / "m.pt", create_model("small-cnn"), {}, name="small-cnn")
    assert load_model(path)[1]["num_classes"] == 2
