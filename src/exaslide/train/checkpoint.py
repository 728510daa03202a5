"""Training checkpoints: everything needed to continue a killed run exactly.

``checkpoints/last.pt`` is rewritten atomically at the end of every epoch with the model,
optimiser and scheduler states, the epoch, the best validation score so far, the metric
history and the random-number states (Python, NumPy, torch CPU and CUDA). The samplers
and augmentations draw from ``(seed, epoch)``, so with these states a resumed run repeats
the epochs an uninterrupted run would have run.

Beside it, ``last.pt.sha256`` records its SHA-256 (:mod:`exaslide.integrity`); a
checkpoint whose digest differs is refused (a checkpoint without one, written by an
earlier release, is read with a warning).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exaslide.errors import TrainingError
from exaslide.integrity import atomic_write, verify

FORMAT = "exaslide-train/1"


def rng_state() -> dict[str, Any]:
    """The states of every random generator training uses."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training checkpoint atomically (a killed write leaves the old one), with
    its ``.sha256`` checksum."""
    with atomic_write(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return Path(path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_state`.

    Raises:
        TrainingError: a missing, corrupt, truncated or foreign file.
    """
    verify(path, TrainingError, "delete it to train again from the first epoch, or restore "
           "the run folder from a backup")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise TrainingError(f"{path}: no checkpoint to resume from") from exc
    except Exception as exc:
        raise TrainingError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"{path}: not an exaslide training checkpoint")
    return state
