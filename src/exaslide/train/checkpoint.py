"""Training checkpoints: everything needed to continue a killed run exactly.

``checkpoints/last.pt`` is rewritten atomically at the end of every epoch with the model,
optimiser and scheduler states, the epoch, the best validation score so far, the metric
history and the random-number states (Python, NumPy, torch CPU and CUDA). The samplers
and augmentations draw from ``(seed, epoch)``, so with these states a resumed run repeats
the epochs an uninterrupted run would have run.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exaslide.atomic import atomic_path
from exaslide.errors import TrainingError

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
    """Write a training checkpoint atomically (a killed write leaves the old one)."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return Path(path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_state`.

    Raises:
        TrainingError: a missing, truncated or foreign file.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise TrainingError(f"{path}: no checkpoint to resume from") from exc
    except Exception as exc:
        raise TrainingError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"{path}: not an exaslide training checkpoint")
    return state
