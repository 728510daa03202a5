"""A model whose output is known, for the inference tests: the tumour logit grows as the
patch's red channel darkens (synthetic tumour is darker and more purple than normal
tissue)."""

from __future__ import annotations

import torch

from exaslide.models import register_model

#: Mean red (0-1) where the model says 50 % tumour: normal tissue is about 0.85,
#: tumour about 0.6, glass 0.95.
RED_THRESHOLD = 0.75
CLASSES = ["normal", "tumour"]


@register_model("test-colour", overwrite=True)
class ColourModel(torch.nn.Module):
    """Mean colour -> linear layer: ``logit_tumour = 20 * (0.75 - mean red)``."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.fc = torch.nn.Linear(3, num_classes)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            if num_classes > 1:
                self.fc.weight[1, 0] = -20.0
                self.fc.bias[1] = 20.0 * RED_THRESHOLD

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.float().mean(dim=(2, 3)))


def colour_meta(size: int = 32, level: int | None = 1, mpp: float | None = None) -> dict:
    """Meta of the colour model: identity normalisation, so inputs are in [0, 1]."""
    return {"classes": CLASSES, "patch": {"size": size, "level": level, "mpp": mpp},
            "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "config": {}}
