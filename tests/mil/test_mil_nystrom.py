"""Nyström attention: exact softmax attention when every token is a landmark, the
iterative pseudo-inverse, and the reference's front zero-padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from exaslide.mil.transmil import NystromAttention, moore_penrose_iter_pinv


def _exact(att: NystromAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d)) V through the same projections (no value residual)."""
    b, n, _ = x.shape
    q, k, v = (t.reshape(b, n, att.heads, -1).transpose(1, 2)
               for t in att.to_qkv(x).chunk(3, dim=-1))
    weights = F.softmax((q * att.scale) @ k.transpose(-1, -2), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
    return att.to_out(out), weights[:, :, 0]


def test_nystrom_with_every_token_a_landmark_is_exact_attention():
    torch.manual_seed(0)
    n = 12
    att = NystromAttention(16, dim_head=8, heads=2, num_landmarks=n, pinv_iterations=30,
                           residual=False).double().eval()
    x = torch.randn(2, n, 16, dtype=torch.float64)
    with torch.no_grad():
        out, row = att(x, return_cls_attention=True)
        expected, expected_row = _exact(att, x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(row, expected_row, atol=1e-6, rtol=0)


def test_iterative_pseudo_inverse_converges_to_the_inverse():
    torch.manual_seed(1)
    matrix = F.softmax(torch.randn(3, 8, 8, dtype=torch.float64) * 3, dim=-1)
    inverse = moore_penrose_iter_pinv(matrix, iters=40)
    torch.testing.assert_close(inverse @ matrix, torch.eye(8, dtype=torch.float64).expand(
        3, 8, 8), atol=1e-8, rtol=0)


def test_sequences_are_zero_padded_in_front_to_a_multiple_of_the_landmarks():
    torch.manual_seed(2)
    att = NystromAttention(16, dim_head=4, heads=4, num_landmarks=4).eval()
    x = torch.randn(1, 13, 16)  # 13 = 4 * 4 - 3: three zero tokens in front
    with torch.no_grad():
        out = att(x)
        padded = att(F.pad(x, (0, 0, 3, 0)))
    assert out.shape == (1, 13, 16)
    torch.testing.assert_close(out, padded[:, 3:])
