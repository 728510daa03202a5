"""Penultimate-layer features of any registered model (embeddings for retrieval).

One rule per family, tried in order:

1. timm models (``forward_head``): ``forward_head(forward_features(x), pre_logits=True)``.
2. Models with their own ``forward_features`` method and ``embedding_dim`` attribute
   (:class:`~exaslide.models.small_cnn.SmallCNN`, and the convention for new models).
3. torchvision ResNets: everything up to and including the global average pool.
4. Any other model: the input of its last ``nn.Linear`` (captured with a hook).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exaslide.errors import ModelError

if TYPE_CHECKING:
    import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside ``DistributedDataParallel`` / ``torch.compile`` wrappers."""
    import torch

    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _is_resnet(model) -> bool:
    from torchvision.models import ResNet

    return isinstance(model, ResNet)


def _last_linear(model: torch.nn.Module) -> torch.nn.Linear:
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ModelError(f"{type(model).__name__}: no forward_features method and no "
                         "nn.Linear layer; cannot tell its penultimate features")
    return linears[-1]


def embedding_dim(model: torch.nn.Module) -> int:
    """Length of the vectors :func:`forward_features` returns."""
    model = unwrap(model)
    if hasattr(model, "forward_head") and hasattr(model, "forward_features"):  # timm
        return int(getattr(model, "head_hidden_size", None) or model.num_features)
    if hasattr(model, "forward_features") and hasattr(model, "embedding_dim"):
        return int(model.embedding_dim)
    if _is_resnet(model):
        return int(model.fc.in_features)
    return int(_last_linear(model).in_features)


def forward_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(N, embedding_dim(model))`` features of a normalised ``(N, 3, H, W)`` batch: the
    classifier's input (after global pooling, before dropout and the last linear layer).

    Runs in whatever grad / autocast mode the caller set; use ``torch.inference_mode()``
    and ``model.eval()`` for embeddings.
    """
    import torch

    model = unwrap(model)
    if hasattr(model, "forward_head") and hasattr(model, "forward_features"):  # timm
        return model.forward_head(model.forward_features(x), pre_logits=True)
    if hasattr(model, "forward_features") and hasattr(model, "embedding_dim"):
        return model.forward_features(x)
    if _is_resnet(model):
        m = model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return torch.flatten(m.avgpool(x), 1)
    captured: list[torch.Tensor] = []
    handle = _last_linear(model).register_forward_pre_hook(
        lambda _module, args: captured.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    if not captured:
        raise ModelError(f"{type(model).__name__}: its last nn.Linear was not called in "
                         "forward; give the model a forward_features method")
    return torch.flatten(captured[-1], 1)
