"""TransMIL (Shao et al. 2021) with the Nyström attention it is built on.

Written from the reference code (``szc19990412/TransMIL``, ``models/TransMIL.py``) and
the ``nystrom-attention`` package it imports (``lucidrains/nystrom-attention``,
``NystromAttention`` and ``moore_penrose_iter_pinv``), with their parameter names, so a
TransMIL state dict loads unchanged (``_fc1.0``, ``cls_token``, ``layer1.norm``,
``layer1.attn.to_qkv``, ``layer1.attn.to_out.0``, ``layer1.attn.res_conv``,
``pos_layer.proj``/``proj1``/``proj2``, ``norm``, ``_fc2``).

The forward pass: ``h = ReLU(_fc1(x))`` (``N x dim``); the bag is padded to the next square
``S x S`` by repeating its first patches, a class token is put in front, then
``TransLayer`` (``x + NystromAttention(LayerNorm(x))``), ``PPEG`` (the patch tokens as an
``S x S`` image through 7/5/3 depthwise convolutions, added to themselves), a second
``TransLayer``, ``LayerNorm`` and ``_fc2`` on the class token.

Nyström attention (Xiong et al. 2021, eq. 15): the sequence is padded at the front with
zeros to a multiple of ``m`` landmarks; landmarks are the means of ``ceil(n/m)``
consecutive queries and keys; ``softmax(Q K_l^T) pinv(softmax(Q_l K_l^T)) softmax(Q_l
K^T) V``, the pseudo-inverse by 6 Newton-Schulz iterations, plus a depthwise convolution
of ``V`` along the sequence (``res_conv``). With ``m = n`` and enough iterations it is
exact softmax attention (tested).

This module imports torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from exaslide.mil.models import MILModel, _check_bag


def moore_penrose_iter_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Iterative Moore-Penrose pseudo-inverse of the last two dimensions (Razavi et al.
    2014), initialised as in the reference with ``x^T / (max col sum * max row sum)``."""
    abs_x = torch.abs(x)
    col = abs_x.sum(dim=-1)
    row = abs_x.sum(dim=-2)
    z = x.transpose(-1, -2) / (torch.max(col) * torch.max(row))
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype).unsqueeze(0)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - (xz @ (15 * eye - (xz @ (7 * eye - xz)))))
    return z


class NystromAttention(nn.Module):
    """``nystrom_attention.NystromAttention`` (no mask): same arguments, parameters and
    arithmetic."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8, num_landmarks: int = 256,
                 pinv_iterations: int = 6, residual: bool = True,
                 residual_conv_kernel: int = 33, eps: float = 1e-8,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.eps = eps
        inner_dim = heads * dim_head
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout))
        self.residual = residual
        if residual:
            padding = residual_conv_kernel // 2
            self.res_conv = nn.Conv2d(heads, heads, (residual_conv_kernel, 1),
                                      padding=(padding, 0), groups=heads, bias=False)

    def forward(self, x: torch.Tensor, return_cls_attention: bool = False):
        """``(b, n, dim) -> (b, n, dim)``; with ``return_cls_attention`` also the first
        token's attention over the ``n`` tokens, ``(b, heads, n)``."""
        b, n, _ = x.shape
        h, m = self.heads, self.num_landmarks
        padding = (m - n % m) if n % m else 0
        if padding:
            x = F.pad(x, (0, 0, padding, 0), value=0)
        q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2)
                   for t in self.to_qkv(x).chunk(3, dim=-1))
        q = q * self.scale
        size = math.ceil(n / m)  # tokens per landmark
        q_landmarks = q.reshape(b, h, m, size, -1).sum(dim=3) / size
        k_landmarks = k.reshape(b, h, m, size, -1).sum(dim=3) / size
        attn1 = (q @ k_landmarks.transpose(-1, -2)).softmax(dim=-1)
        attn2 = (q_landmarks @ k_landmarks.transpose(-1, -2)).softmax(dim=-1)
        attn3 = (q_landmarks @ k.transpose(-1, -2)).softmax(dim=-1)
        attn2_inv = moore_penrose_iter_pinv(attn2, self.pinv_iterations)
        out = (attn1 @ attn2_inv) @ (attn3 @ v)
        if self.residual:
            out = out + self.res_conv(v)
        out = out.transpose(1, 2).reshape(b, out.shape[2], -1)
        out = self.to_out(out)[:, -n:]
        if not return_cls_attention:
            return out
        row = (attn1[:, :, padding:padding + 1] @ attn2_inv) @ attn3
        return out, row[:, :, 0, padding:]


class TransLayer(nn.Module):
    """``x + NystromAttention(LayerNorm(x))`` with the reference's settings (8 heads of
    ``dim // 8``, ``dim // 2`` landmarks, 6 pseudo-inverse iterations, value residual,
    dropout 0.1)."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim=dim, dim_head=dim // 8, heads=8,
                                     num_landmarks=dim // 2, pinv_iterations=6,
                                     residual=True, dropout=0.1)

    def forward(self, x: torch.Tensor, return_cls_attention: bool = False):
        if not return_cls_attention:
            return x + self.attn(self.norm(x))
        out, attention = self.attn(self.norm(x), return_cls_attention=True)
        return x + out, attention


class PPEG(nn.Module):
    """Pyramid position encoding: the patch tokens as an ``H x W`` image plus its 7x7,
    5x5 and 3x3 depthwise convolutions; the class token passes through."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = x.shape
        cls_token, feat_token = x[:, 0], x[:, 1:]
        cnn_feat = feat_token.transpose(1, 2).reshape(B, C, H, W)
        x = self.proj(cnn_feat) + cnn_feat + self.proj1(cnn_feat) + self.proj2(cnn_feat)
        x = x.flatten(2).transpose(1, 2)
        return torch.cat((cls_token.unsqueeze(1), x), dim=1)


class TransMIL(MILModel):
    """TransMIL with the reference's structure and names; ``in_dim`` and ``dim`` are
    arguments (the reference fixes 1024 and 512). Patch scores: the class token's
    attention in the second layer (mean over heads; a patch repeated by the square
    padding gets both its weights), relative to the most attended patch."""

    exaslide_name = "transmil"

    def __init__(self, in_dim: int, n_classes: int, dim: int = 512) -> None:
        super().__init__(in_dim, n_classes)
        if dim < 16 or dim % 16:
            raise ValueError(f"TransMIL's dim must be a multiple of 16 (8 heads, dim // 2 "
                             f"landmarks), got {dim}")
        self.dim = int(dim)
        self.pos_layer = PPEG(dim=dim)
        self._fc1 = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = TransLayer(dim=dim)
        self.layer2 = TransLayer(dim=dim)
        self.norm = nn.LayerNorm(dim)
        self._fc2 = nn.Linear(dim, n_classes)

    def dims(self) -> dict[str, Any]:
        return {**super().dims(), "hidden": [self.dim]}

    def forward(self, h: torch.Tensor, label: torch.Tensor | None = None,
                return_attention: bool = False) -> dict:
        _check_bag(h, self.in_dim)
        h = self._fc1(h.unsqueeze(0))  # [1, n, dim]
        n = h.shape[1]
        side = math.isqrt(n - 1) + 1  # ceil(sqrt(n))
        h = torch.cat([h, h[:, :side * side - n]], dim=1)
        h = torch.cat((self.cls_token.expand(1, -1, -1), h), dim=1)
        h = self.layer1(h)
        h = self.pos_layer(h, side, side)
        out: dict[str, Any] = {}
        if return_attention:
            h, row = self.layer2(h, return_cls_attention=True)
            tokens = row.mean(dim=1)[0, 1:]  # over heads; drop the class token itself
            attention = tokens[:n].clone()
            attention[:side * side - n] += tokens[n:]
            out["attention"] = attention
        else:
            h = self.layer2(h)
        out["logits"] = self._fc2(self.norm(h)[:, 0])
        return out

    @torch.no_grad()
    def patch_scores(self, h: torch.Tensor, kind: str = "attention") -> torch.Tensor:
        attention = self(h, return_attention=True)["attention"].clamp_min(0)
        return attention / attention.max().clamp_min(torch.finfo(attention.dtype).tiny)
