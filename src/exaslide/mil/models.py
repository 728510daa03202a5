"""MIL slide models on bags of patch features: mean-pool + MLP, ABMIL, CLAM-SB.

Every model takes one bag ``h`` (``N x in_dim`` features of a slide's patches) and
returns a dict with ``logits`` (``1 x n_classes``) and, for the attention models,
``attention`` (``N``, softmax over the bag) and ``attention_raw`` (before the softmax);
CLAM-SB given the bag's ``label`` also returns ``instance_loss``.

ABMIL and CLAM-SB follow CLAM's code (``mahmoodlab/CLAM``, ``models/model_clam.py``:
``Attn_Net_Gated``, ``CLAM_SB``) equation for equation, with its parameter names, so a
CLAM state dict loads with the key table of ``docs/mil.md``
(:func:`exaslide.mil.weights.load_reference_weights`)::

    h   = Dropout(ReLU(W_1 x + b_1))                    attention_net.0   (L_in -> L)
    a   = Tanh(V h + b_V),  g = Sigmoid(U h + b_U)      attention_net.3.attention_a.0 / _b.0
    s   = w^T (a * g) + b_w                             attention_net.3.attention_c
    A   = softmax_N(s),  M = A h                        (Ilse et al. 2018, eq. 9)
    logits = W_c M + b_c                                classifiers

CLAM-SB (Lu et al. 2021) adds one ``Linear(L, 2)`` per class (``instance_classifiers``):
for the bag's class, the ``k_sample`` most attended patches are positives and the
``k_sample`` least attended negatives (cross-entropy); with ``subtyping`` the other
classes' classifiers also learn the most attended patches as negatives and the sum is
divided by the number of classes. The training loss is ``bag_weight * bag_loss + (1 -
bag_weight) * instance_loss`` (:mod:`exaslide.mil.train`). CLAM's default instance loss is
the smooth top-1 SVM of the ``topk`` package; exaslide uses CLAM's alternative,
``nn.CrossEntropyLoss`` (no extra package), as ``--inst_loss ce`` does in CLAM.

This module imports torch; import it only where a model is built.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: CLAM's ``size_dict`` without the input dimension: ``[L, D]``.
SIZES = {"small": (512, 256), "big": (512, 384)}
#: Dropout of the attention branches when dropout is on (CLAM: a fixed 0.25).
ATTENTION_DROPOUT = 0.25


class GatedAttention(nn.Module):
    """CLAM's ``Attn_Net_Gated``: ``attention_c(attention_a(h) * attention_b(h))``, an
    ``N x n_heads`` score per patch (before the softmax)."""

    def __init__(self, L: int = 512, D: int = 256, dropout: bool = False,
                 n_heads: int = 1) -> None:
        super().__init__()
        a: list[nn.Module] = [nn.Linear(L, D), nn.Tanh()]
        b: list[nn.Module] = [nn.Linear(L, D), nn.Sigmoid()]
        if dropout:
            a.append(nn.Dropout(ATTENTION_DROPOUT))
            b.append(nn.Dropout(ATTENTION_DROPOUT))
        self.attention_a = nn.Sequential(*a)
        self.attention_b = nn.Sequential(*b)
        self.attention_c = nn.Linear(D, n_heads)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(h).mul(self.attention_b(h)))


class MILModel(nn.Module):
    """What every MIL model has: its registry name, input dimension, class count, and
    the per-patch scores its heatmaps show (:meth:`patch_scores`)."""

    exaslide_name = "mil"
    #: "attention" (relative attention, scaled by the slide's tumour probability on the
    #: heatmap) or "instance" (a per-patch tumour probability).
    score_kind = "attention"

    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__()
        if in_dim < 1 or n_classes < 2:
            raise ValueError(f"in_dim must be >= 1 and n_classes >= 2, got {in_dim}, "
                             f"{n_classes}")
        self.in_dim, self.n_classes = int(in_dim), int(n_classes)

    def dims(self) -> dict[str, Any]:
        """The numbers that rebuild this architecture (stored in the model file)."""
        return {"in_dim": self.in_dim, "n_classes": self.n_classes}

    @torch.no_grad()
    def patch_scores(self, h: torch.Tensor, kind: str = "attention") -> torch.Tensor:
        """Per-patch scores in ``[0, 1]`` (``N``): attention relative to the most attended
        patch (``A_i / max A``) for attention models."""
        attention = self(h)["attention"]
        return attention / attention.max().clamp_min(torch.finfo(attention.dtype).tiny)


def _check_bag(h: torch.Tensor, in_dim: int) -> None:
    if h.dim() != 2 or h.shape[0] < 1 or h.shape[1] != in_dim:
        raise ValueError(f"expected a bag of shape (N >= 1, {in_dim}), got "
                         f"{tuple(h.shape)}")


class MeanPoolMLP(MILModel):
    """The baseline: the mean of the bag's features through an MLP,
    ``classifiers(Dropout(ReLU(fc(mean_i x_i))))``. Its heatmap shows every patch through
    the same MLP (an instance tumour probability)."""

    exaslide_name = "meanpool"
    score_kind = "instance"

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 512,
                 dropout: float = 0.25) -> None:
        super().__init__(in_dim, n_classes)
        self.hidden = int(hidden)
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifiers = nn.Linear(hidden, n_classes)

    def dims(self) -> dict[str, Any]:
        return {**super().dims(), "hidden": [self.hidden]}

    def forward(self, h: torch.Tensor, label: torch.Tensor | None = None) -> dict:
        _check_bag(h, self.in_dim)
        return {"logits": self.classifiers(self.fc(h.mean(dim=0, keepdim=True)))}

    @torch.no_grad()
    def patch_scores(self, h: torch.Tensor, kind: str = "instance") -> torch.Tensor:
        """``1 - p(first class)`` of every patch alone through the MLP."""
        return 1.0 - F.softmax(self.classifiers(self.fc(h)), dim=1)[:, 0]


class ABMIL(MILModel):
    """Gated-attention MIL (Ilse et al. 2018) in CLAM's form and parameter names (see the
    module docstring): ``attention_net`` = ``[Linear(L_in, L), ReLU, Dropout,
    GatedAttention(L, D)]``, ``classifiers`` = ``Linear(L, n_classes)``."""

    exaslide_name = "abmil"

    def __init__(self, in_dim: int, n_classes: int, hidden: tuple[int, int] = SIZES["small"],
                 dropout: float = 0.25) -> None:
        super().__init__(in_dim, n_classes)
        L, D = (int(v) for v in hidden)
        self.hidden = (L, D)
        self.attention_net = nn.Sequential(
            nn.Linear(in_dim, L), nn.ReLU(), nn.Dropout(dropout),
            GatedAttention(L=L, D=D, dropout=dropout > 0, n_heads=1))
        self.classifiers = nn.Linear(L, n_classes)

    def dims(self) -> dict[str, Any]:
        return {**super().dims(), "hidden": list(self.hidden)}

    def attend(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw attention 1 x N, embedded patches N x L)``."""
        _check_bag(h, self.in_dim)
        embedded = self.attention_net[:3](h)
        return self.attention_net[3](embedded).transpose(1, 0), embedded

    def forward(self, h: torch.Tensor, label: torch.Tensor | None = None) -> dict:
        raw, embedded = self.attend(h)
        attention = F.softmax(raw, dim=1)
        pooled = torch.mm(attention, embedded)
        return {"logits": self.classifiers(pooled), "attention": attention[0],
                "attention_raw": raw[0], "embedded": embedded}


class CLAMSB(ABMIL):
    """CLAM single-branch (Lu et al. 2021): :class:`ABMIL` plus one ``Linear(L, 2)``
    instance classifier per class and the instance-level clustering loss (given
    ``label``, in training)."""

    exaslide_name = "clam_sb"

    def __init__(self, in_dim: int, n_classes: int, hidden: tuple[int, int] = SIZES["small"],
                 dropout: float = 0.25, k_sample: int = 8, subtyping: bool = False) -> None:
        super().__init__(in_dim, n_classes, hidden, dropout)
        self.instance_classifiers = nn.ModuleList(
            [nn.Linear(self.hidden[0], 2) for _ in range(n_classes)])
        self.k_sample, self.subtyping = int(k_sample), bool(subtyping)

    def dims(self) -> dict[str, Any]:
        return {**super().dims(), "k_sample": self.k_sample, "subtyping": self.subtyping}

    def forward(self, h: torch.Tensor, label: torch.Tensor | None = None) -> dict:
        out = super().forward(h)
        if label is not None:
            out["instance_loss"] = self.instance_loss(out["attention"], out["embedded"],
                                                      int(label.reshape(-1)[0]))
        return out

    def instance_loss(self, attention: torch.Tensor, embedded: torch.Tensor,
                      label: int) -> torch.Tensor:
        """CLAM's ``inst_eval`` / ``inst_eval_out`` summed over the classes (divided by
        their number with ``subtyping``); ``k = min(k_sample, N)``."""
        k = min(self.k_sample, attention.shape[0])
        total = attention.new_zeros(())
        for index, classifier in enumerate(self.instance_classifiers):
            top = torch.topk(attention, k)[1]
            if index == label:  # in the class: top k positive, bottom k negative
                bottom = torch.topk(-attention, k)[1]
                instances = torch.cat([embedded[top], embedded[bottom]])
                targets = torch.cat([torch.ones(k), torch.zeros(k)]).long()
            elif self.subtyping:  # out of the class: top k negative
                instances, targets = embedded[top], torch.zeros(k).long()
            else:
                continue
            total = total + F.cross_entropy(classifier(instances),
                                            targets.to(embedded.device))
        return total / len(self.instance_classifiers) if self.subtyping else total

    @torch.no_grad()
    def patch_scores(self, h: torch.Tensor, kind: str = "attention") -> torch.Tensor:
        """Relative attention, or with ``kind="instance"`` the highest positive
        probability of the instance classifiers of the classes after the first."""
        if kind != "instance":
            return super().patch_scores(h)
        _, embedded = self.attend(h)
        probs = [F.softmax(c(embedded), dim=1)[:, 1] for c in self.instance_classifiers[1:]]
        return torch.stack(probs).amax(dim=0)

