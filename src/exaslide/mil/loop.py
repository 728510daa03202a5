"""The steps of MIL training: one epoch over the training bags, predictions over a list
of slides, checkpoints. :mod:`exaslide.mil.train` strings them together.

One bag per optimiser step (as CLAM). Under ``torchrun`` the model is wrapped in
``DistributedDataParallel``; every epoch the training bags are shuffled from ``(seed,
fold, epoch)``, padded by repetition to a multiple of the world size, and rank ``r``
takes every ``world``-th bag from ``r``, so all ranks take the same number of steps.
Predictions are split the same way and gathered.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from exaslide.mil.bags import FeatureStore, Slide
from exaslide.mil.errors import MILError

logger = logging.getLogger(__name__)


def class_weights(slides: list[Slide], n_classes: int, mode: str) -> torch.Tensor | None:
    """``n / (C * n_c)`` per class (0 for a class without training slides), or None."""
    if mode == "none":
        return None
    counts = np.bincount([s.label for s in slides], minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def bag_loss(out: dict, label: torch.Tensor, weight: torch.Tensor | None,
             bag_weight: float) -> torch.Tensor:
    """Cross-entropy of the bag (class-weighted), combined with CLAM-SB's instance loss
    as ``bag_weight * bag + (1 - bag_weight) * instance`` when the model gave one."""
    loss = F.cross_entropy(out["logits"], label,
                           weight=None if weight is None else weight.to(label.device))
    if "instance_loss" in out:
        loss = bag_weight * loss + (1.0 - bag_weight) * out["instance_loss"]
    return loss


def rank_share(n: int, rank: int, world: int, rng: np.random.Generator | None
               ) -> np.ndarray:
    """This rank's indices of ``n`` items (shuffled by ``rng`` when given), padded by
    repetition so every rank gets ``ceil(n / world)``."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if world > 1 and n % world:
        order = np.resize(order, -(-n // world) * world)  # repeats cyclically
    return order[rank::world]


def train_epoch(model, store: FeatureStore, slides: list[Slide], optimizer, *, device,
                weight, bag_weight: float, max_patches: int | None, seed: tuple,
                rank: int, world: int) -> dict[str, float]:
    """One pass over this rank's share of ``slides``; ``{"train_loss",
    "train_accuracy"}`` of this rank's bags."""
    model.train()
    mine = rank_share(len(slides), rank, world, np.random.default_rng(list(seed)))
    total, correct = 0.0, 0
    for step, index in enumerate(mine):
        slide = slides[int(index)]
        rows = None
        n = store.rows(slide.slide_id)
        if max_patches is not None and n > max_patches:
            rows = np.random.default_rng([*seed, step]).choice(n, max_patches, replace=False)
        h = store.bag(slide.slide_id, rows, device)
        label = torch.tensor([slide.label], device=device)
        out = model(h, label)
        loss = bag_loss(out, label, weight, bag_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        correct += int(out["logits"].detach().argmax(dim=1).item() == slide.label)
    count = max(1, len(mine))
    return {"train_loss": total / count, "train_accuracy": correct / count}


@torch.no_grad()
def predict(model, store: FeatureStore, slides: list[Slide], *, device, weight=None,
            rank: int = 0, world: int = 1) -> list[dict[str, Any]]:
    """This rank's share of ``slides`` through ``model`` (eval mode): rows of
    ``slide_id``, ``label``, ``probs`` (list) and ``loss``; a slide whose bag cannot be
    read gives ``slide_id`` and ``error`` instead. Not padded: the plain model runs
    (no collective call of a DDP wrapper)."""
    from exaslide.models.features import unwrap

    model = unwrap(model).eval()
    rows = []
    for index in range(rank, len(slides), world):
        slide = slides[index]
        try:
            h = store.bag(slide.slide_id, device=device)
        except MILError as exc:
            rows.append({"slide_id": slide.slide_id, "error": str(exc)})
            continue
        logits = model(h)["logits"].float()
        label = torch.tensor([max(slide.label, 0)], device=device)
        loss = F.cross_entropy(logits, label,
                               weight=None if weight is None else weight.to(device))
        rows.append({"slide_id": slide.slide_id, "label": slide.label,
                     "probs": F.softmax(logits, dim=1)[0].cpu().tolist(),
                     "loss": float(loss)})
    return rows


def summarise(rows: list[dict[str, Any]], classes: list[str], prefix: str
              ) -> dict[str, float]:
    """``<prefix>_loss``, ``<prefix>_auc``, ``<prefix>_balanced_accuracy`` of prediction
    rows (errors left out)."""
    from exaslide.mil.metrics import slide_metrics

    good = [r for r in rows if "probs" in r]
    if not good:
        return {f"{prefix}_loss": float("nan")}
    metrics = slide_metrics(np.array([r["label"] for r in good]),
                            np.array([r["probs"] for r in good]), classes)
    return {f"{prefix}_loss": float(np.mean([r["loss"] for r in good])),
            f"{prefix}_auc": metrics["slide_auc"],
            f"{prefix}_balanced_accuracy": metrics["balanced_accuracy"]}


def improved(best: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether ``row`` beats ``best`` (lower validation loss; without validation slides
    every epoch is the latest best)."""
    loss = row.get("val_loss")
    if loss is None or not np.isfinite(loss):
        return True
    return best.get("loss") is None or loss < best["loss"]


def weights_copy(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the plain model's weights."""
    from exaslide.models.features import unwrap

    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def weights_digest(model) -> str:
    """SHA-256 of the plain model's weights (ranks of one run must agree)."""
    import hashlib

    digest = hashlib.sha256()
    for name, value in sorted(weights_copy(model).items()):
        digest.update(name.encode())
        digest.update(value.float().numpy().tobytes())
    return digest.hexdigest()
