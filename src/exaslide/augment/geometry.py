"""Flips and 90-degree rotations: the 8 symmetries of the square (dihedral group D4).

Histology has no "up": a patch and its flips and quarter turns are equally likely, so these
8 exact, lossless symmetries are the standard geometric augmentation. Element ``e`` in
0..7 means "flip left-right if ``e >= 4``, then rotate by ``(e % 4) * 90`` degrees
counter-clockwise" (``torch.flip`` then ``torch.rot90``).

Hand-written because torchvision has no discrete rot90 transform and its v2 transforms
draw one random parameter for a whole batch; here every sample of a batch gets its own
element, and the batch is processed with one ``flip``/``rot90`` per distinct element.
"""

from __future__ import annotations

import torch

from exaslide.augment.base import AugmentError, RandomTransform

#: All 8 elements of D4; with non-square images only the shape-preserving ones are drawn.
D4_ELEMENTS: tuple[int, ...] = tuple(range(8))
#: Elements that keep an H x W image H x W when H != W: identity, rot180, flip, flip+rot180.
SHAPE_PRESERVING_ELEMENTS: tuple[int, ...] = (0, 2, 4, 6)


def flip_rot90(x: torch.Tensor, element: int) -> torch.Tensor:
    """Apply one D4 element to an image or batch shaped ``(..., H, W)``.

    Args:
        x: tensor whose last two dimensions are height and width.
        element: 0..7; ``>= 4`` flips left-right first, then ``element % 4`` quarter turns
            counter-clockwise. Useful for test-time augmentation: average the model's
            outputs over ``flip_rot90(x, e)`` for ``e`` in :data:`D4_ELEMENTS`.
    """
    if element not in D4_ELEMENTS:
        raise AugmentError(f"D4 element must be an integer in 0..7, got {element!r}")
    if element >= 4:
        x = torch.flip(x, dims=(-1,))
    turns = element % 4
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def invert_flip_rot90(x: torch.Tensor, element: int) -> torch.Tensor:
    """Undo :func:`flip_rot90` (maps a test-time-augmented prediction map back)."""
    if element not in D4_ELEMENTS:
        raise AugmentError(f"D4 element must be an integer in 0..7, got {element!r}")
    turns = element % 4
    if turns:
        x = torch.rot90(x, -turns, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if element >= 4 else x


class RandomFlipRot90(RandomTransform):
    """A uniformly random D4 symmetry per sample (each of the 8 with probability 1/8).

    Square images (the usual patches) draw from all 8 elements. Non-square images draw
    from the 4 that keep the shape (:data:`SHAPE_PRESERVING_ELEMENTS`), so the output always
    has the input's shape.

    Args:
        seed: seed of the transform's own generator (see :mod:`exaslide.augment.base`).
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)

    def draw(self, n: int, square: bool, generator: torch.Generator) -> torch.Tensor:
        """``n`` random elements (int64, CPU)."""
        allowed = torch.tensor(D4_ELEMENTS if square else SHAPE_PRESERVING_ELEMENTS)
        return allowed[torch.randint(len(allowed), (n,), generator=generator)]

    def forward_batch(self, batch: torch.Tensor, generator: torch.Generator | None
                      ) -> torch.Tensor:
        assert generator is not None
        elements = self.draw(batch.shape[0], batch.shape[-1] == batch.shape[-2], generator)
        out = torch.empty_like(batch)
        for element in elements.unique().tolist():
            index = (elements == element).nonzero().squeeze(1).to(batch.device)
            out.index_copy_(0, index, flip_rot90(batch.index_select(0, index), element))
        return out

    def __repr__(self) -> str:
        return f"RandomFlipRot90(seed={self.seed})"
