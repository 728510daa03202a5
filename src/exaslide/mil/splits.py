"""Train / validation / test slides: the manifest's split column, or k-fold
cross-validation grouped by patient.

Cross-validation (``cv_folds = k >= 3``) uses scikit-learn's ``StratifiedGroupKFold``
(shuffled, seeded): no patient's slides are in two folds, and each fold's class mix is as
close to the cohort's as the groups allow. Fold ``i`` tests on part ``i``, validates
(early stopping) on part ``(i + 1) mod k`` and trains on the rest, so every slide is
tested exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

from exaslide.mil.bags import Slide
from exaslide.mil.errors import MILError


@dataclass
class Fold:
    """The slides of one training run."""

    name: str  #: "" for a single run, "fold<i>" under cross-validation
    train: list[Slide]
    val: list[Slide]
    test: list[Slide]


def manifest_split(slides: list[Slide], train: str, val: str, test: str) -> Fold:
    """One run on the manifest's split column.

    Raises:
        MILError: no training slide.
    """
    fold = Fold("", [s for s in slides if s.split == train],
                [s for s in slides if s.split == val], [s for s in slides if s.split == test])
    if not fold.train:
        found = sorted({s.split for s in slides})
        raise MILError(f"no slide of split {train!r} with features and a label (splits "
                       f"found: {', '.join(map(repr, found)) or 'none'}); set train_split, "
                       "or cv_folds for cross-validation")
    return fold


def cv_folds(slides: list[Slide], k: int, seed: int) -> list[Fold]:
    """``k`` folds grouped by :attr:`Slide.group`, stratified by label.

    Raises:
        MILError: fewer groups than folds.
    """
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    groups = [s.group for s in slides]
    if len(set(groups)) < k:
        raise MILError(f"cv_folds={k} needs at least {k} patients (groups), found "
                       f"{len(set(groups))}; lower cv_folds")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    labels = [s.label for s in slides]
    with warnings.catch_warnings():  # "least populated class has only n members"
        warnings.simplefilter("ignore", UserWarning)
        parts = [list(test) for _, test in splitter.split(slides, labels, groups)]
    folds = []
    for i in range(k):
        test, val = set(parts[i]), set(parts[(i + 1) % k])
        folds.append(Fold(f"fold{i}",
                          [s for j, s in enumerate(slides) if j not in test | val],
                          [slides[j] for j in sorted(val)], [slides[j] for j in sorted(test)]))
    return folds
