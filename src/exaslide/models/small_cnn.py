"""A compact CNN for 224 x 224 H&E patches (the project's reference model, 2.75 M
parameters).

Six blocks of 3 x 3 convolution, batch norm and ReLU. The first convolution has stride 2,
the next four blocks end with a 2 x 2 max pool, so a 224-pixel patch is 7 x 7 at the last
block (112, 56, 28, 14, 7); then global average pooling gives a 400-dimensional
embedding, followed by dropout and a linear classifier. Any input of at least 32 pixels a
side works (the pooling is global).
"""

from __future__ import annotations

import torch
from torch import nn

#: Output channels of the six blocks.
WIDTHS = (32, 64, 128, 256, 400, 400)


def _block(cin: int, cout: int, stride: int = 1, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Six conv-BN-ReLU blocks, global average pooling, dropout, linear.

    Args:
        num_classes: outputs of the classifier.
        dropout: dropout probability before the classifier.
        widths: output channels of the six blocks.
    """

    def __init__(self, num_classes: int = 2, dropout: float = 0.3,
                 widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        blocks, cin = [], 3
        for i, cout in enumerate(widths):
            blocks.append(_block(cin, cout, stride=2 if i == 0 else 1,
                                 pool=0 < i < len(widths) - 1))
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        #: Size of :meth:`forward_features`' output.
        self.embedding_dim = cin
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, embedding_dim)`` pooled features (the classifier's input)."""
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, num_classes)`` logits."""
        return self.fc(self.dropout(self.forward_features(x)))
