"""How well an epoch's batches are mixed: the price of a locality-aware order, measured.

:func:`batch_mixing` summarises a list of batches (index arrays) against the patches'
labels, slides and locality blocks. Compare an order with a full shuffle of the same
draws (``PatchSampler`` without ``blocks``), whose values are what sampling noise alone
gives; ``docs/data.md`` lists both for a synthetic cohort.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def batch_mixing(batches: Sequence[np.ndarray], labels: np.ndarray, slides: np.ndarray,
                 blocks: np.ndarray) -> dict[str, float]:
    """Mixing statistics of ``batches`` (arrays of patch indices).

    Returns:
        ``batches``; ``slides_per_batch`` and ``blocks_per_batch``: mean distinct slides
        and blocks in a batch; ``same_block_pairs``: the fraction of pairs of patches of
        a batch that share a block (about ``1 / blocks_per_batch`` for equal blocks);
        ``label_distance``: mean total-variation distance between a batch's label
        histogram and the whole epoch's (0: every batch has the epoch's class mix);
        ``label_spread``: standard deviation over batches of the fraction of the
        epoch's rarest class.
    """
    labels, slides, blocks = (np.asarray(a) for a in (labels, slides, blocks))
    sized = [np.asarray(b) for b in batches if len(b) > 1]
    if not sized:
        raise ValueError("batch_mixing needs at least one batch of two or more patches")
    drawn = np.concatenate(sized)
    classes, counts = np.unique(labels[drawn], return_counts=True)
    epoch = counts / counts.sum()
    rarest = classes[np.argmin(counts)]
    distance, rare, pairs = [], [], []
    for batch in sized:
        histogram = np.array([(labels[batch] == c).mean() for c in classes])
        distance.append(0.5 * np.abs(histogram - epoch).sum())
        rare.append((labels[batch] == rarest).mean())
        _, per_block = np.unique(blocks[batch], return_counts=True)
        pairs.append((per_block * (per_block - 1)).sum() / (len(batch) * (len(batch) - 1)))
    return {
        "batches": len(sized),
        "slides_per_batch": float(np.mean([len(np.unique(slides[b])) for b in sized])),
        "blocks_per_batch": float(np.mean([len(np.unique(blocks[b])) for b in sized])),
        "same_block_pairs": float(np.mean(pairs)),
        "label_distance": float(np.mean(distance)),
        "label_spread": float(np.std(rare)),
    }
