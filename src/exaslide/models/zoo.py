"""The built-in models. Builders import torch / torchvision only when called."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exaslide.models.registry import register_model

if TYPE_CHECKING:
    import torch


@register_model("small-cnn")
def small_cnn(num_classes: int) -> torch.nn.Module:
    """:class:`~exaslide.models.small_cnn.SmallCNN`: six conv-BN-ReLU blocks, 2.75 M
    parameters, for 224 x 224 patches (any size >= 32 works)."""
    from exaslide.models.small_cnn import SmallCNN

    return SmallCNN(num_classes)


def _resnet(arch: str, num_classes: int) -> torch.nn.Module:
    import torch
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model


@register_model("resnet18")
def resnet18(num_classes: int) -> torch.nn.Module:
    """torchvision's ResNet-18 (11.2 M parameters), random weights, ``num_classes``
    outputs."""
    return _resnet("resnet18", num_classes)


@register_model("resnet50")
def resnet50(num_classes: int) -> torch.nn.Module:
    """torchvision's ResNet-50 (23.5 M parameters), random weights, ``num_classes``
    outputs."""
    return _resnet("resnet50", num_classes)
