"""Every registered model with random weights: shapes, gradients, features; timm hint."""

from __future__ import annotations

import sys

import pytest
import torch

from exaslide.errors import ModelError
from exaslide.models import (
    available_models,
    create_model,
    embedding_dim,
    forward_features,
    model_name,
    register_model,
)

BUILTIN = ["small-cnn", "resnet18", "resnet50"]
EMBEDDING = {"small-cnn": 400, "resnet18": 512, "resnet50": 2048}


def test_builtins_registered():
    assert set(BUILTIN) <= set(available_models())


@pytest.mark.parametrize("name", BUILTIN)
def test_forward_backward_features(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
    assert model_name(model) == name and model.exaslide_num_classes == 3
    x = torch.randn(2, 3, 224, 224)
    out = model(x)
    assert out.shape == (2, 3)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert embedding_dim(model) == EMBEDDING[name]
    model.eval()
    with torch.inference_mode():
        features = forward_features(model, x)
        assert features.shape == (2, EMBEDDING[name])
        # the features are the classifier's input
        head = model.fc
        torch.testing.assert_close(head(features), model(x), rtol=1e-4, atol=1e-4)


def test_small_cnn_parameter_count():
    model = create_model("small-cnn", num_classes=2)
    count = sum(p.numel() for p in model.parameters())
    assert 2_600_000 <= count <= 2_800_000, count
    with torch.inference_mode():  # any patch of at least 32 pixels
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


def test_unknown_model_and_bad_classes():
    with pytest.raises(ModelError, match=r"unknown model 'nope'.*small-cnn"):
        create_model("nope")
    with pytest.raises(ModelError, match="num_classes"):
        create_model("small-cnn", num_classes=0)


def test_register_rules():
    with pytest.raises(ModelError, match="timm"):
        register_model("timm:mine")
    with pytest.raises(ModelError, match="already registered"):
        register_model("small-cnn")(lambda n: torch.nn.Linear(3, n))


def test_fallback_features_of_custom_model():
    @register_model("test-registry-mlp", overwrite=True)
    class Mlp(torch.nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5),
                                            torch.nn.ReLU())
            self.head = torch.nn.Linear(5, num_classes)

        def forward(self, x):
            return self.head(self.body(x))

    model = create_model("test-registry-mlp", num_classes=4)
    assert embedding_dim(model) == 5
    assert forward_features(model, torch.randn(2, 3, 2, 2)).shape == (2, 5)


def test_timm_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ModelError, match="pip install timm"):
        create_model("timm:resnet18")
