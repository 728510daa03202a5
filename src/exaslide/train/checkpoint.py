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

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exaslide.errors import TrainingError
from exaslide.integrity import atomic_write, verify

FORMAT = "exaslide-train/1"
#: Set to 1 to load checkpoints with full unpickling (ones this version did not write).
TRUST_ENV = "EXASLIDE_TRUST_MODELS"


def rng_state() -> dict[str, Any]:
    """The states of every random generator training uses (tensors and plain Python
    values only, so a checkpoint loads with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), int(pos),
                       int(has_gauss), float(cached)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos,
                         has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training checkpoint atomically (a killed write leaves the old one), with
    its ``.sha256`` checksum."""
    with atomic_write(path) as tmp:
        torch.save(_plain({"format": FORMAT, **state}), tmp)
    return Path(path)


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays as Python values (tensors kept), so that
    ``torch.load(weights_only=True)`` reads it back."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return value


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_state`.

    Raises:
        TrainingError: a missing, corrupt, truncated or foreign file.
    """
    verify(path, TrainingError, "delete it to train again from the first epoch, or restore "
           "the run folder from a backup")
    trusted = os.environ.get(TRUST_ENV) == "1"
    try:  # tensors and plain values only: a checkpoint cannot run code when read
        state = torch.load(path, map_location="cpu", weights_only=not trusted)
    except FileNotFoundError as exc:
        raise TrainingError(f"{path}: no checkpoint to resume from") from exc
    except pickle.UnpicklingError as exc:
        raise TrainingError(f"{path}: holds more than tensors and plain values (a checkpoint "
                            "of an older exaslide, or not exaslide's): loading it could run "
                            f"code; if you trust where it came from, set {TRUST_ENV}=1") \
            from exc
    except Exception as exc:
        raise TrainingError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"{path}: not an exaslide training checkpoint")
    return state
