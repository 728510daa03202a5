"""The modules an encoder is made of: :class:`Encoder` (a backbone and its embedding
rule) and :class:`ResNet50Trunc` (CLAM's truncated ResNet-50). Imports torch: only the
builder imports this module, when an encoder is built."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """A backbone plus its embedding rule.

    ``forward_features(x)`` (and ``forward``) maps a normalised ``(N, 3, H, W)`` batch to
    ``(N, embedding_dim)`` embeddings, so :func:`exaslide.models.forward_features` and
    :func:`exaslide.models.embedding_dim` treat an encoder like any exaslide model. The
    backbone's state dict is the published one (``encoder.backbone.state_dict()``).

    Args:
        backbone: a timm ``VisionTransformer``, a :class:`ResNet50Trunc` or a model whose
            ``forward_features`` already gives the embedding (``pooling == "model"``).
        pooling: ``cls``, ``cls+mean``, ``avgpool`` or ``model`` (see
            :data:`exaslide.encoders.specs.POOLINGS`).
        embedding_dim: length of the embeddings.
        name: the registry name (recorded as ``exaslide_name``).
    """

    def __init__(self, backbone: nn.Module, pooling: str, embedding_dim: int, name: str):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.embedding_dim = int(embedding_dim)
        self.exaslide_name = f"encoder:{name}"

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's output tokens after its final norm, ``(N, prefix + patches,
        D)`` (ViTs)."""
        return self.backbone.forward_features(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, embedding_dim)`` embeddings by the encoder's rule."""
        if self.pooling == "cls":
            return self.tokens(x)[:, 0]
        if self.pooling == "cls+mean":
            tokens = self.tokens(x)
            prefix = int(getattr(self.backbone, "num_prefix_tokens", 1))
            return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(dim=1)], dim=-1)
        if self.pooling == "model":
            from exaslide.models.features import forward_features

            return forward_features(self.backbone, x)
        return self.backbone(x)  # avgpool: the trunk pools itself

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class ResNet50Trunc(nn.Module):
    """torchvision's ResNet-50 up to and including ``layer3``, then global average
    pooling: 1024-d embeddings, as CLAM's ``resnet50_baseline``. Its parameters keep
    torchvision's names (``conv1``, ``bn1``, ``layer1``..``layer3``), so torchvision's and
    timm's ``resnet50`` weights load directly (their ``layer4`` and ``fc`` are ignored)."""

    def __init__(self):
        super().__init__()
        import torchvision

        full = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = full.conv1, full.bn1, full.relu, \
            full.maxpool
        self.layer1, self.layer2, self.layer3 = full.layer1, full.layer2, full.layer3
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)
