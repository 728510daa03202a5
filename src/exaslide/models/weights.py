"""Reading weights files: a ``state_dict`` in any of the usual wrappings, checked against
its ``.sha256`` sidecar when it has one (see :mod:`exaslide.integrity`).

Below :mod:`exaslide.models.factory` (which loads pretrained weights with it) and
:mod:`exaslide.models.checkpoint` (which writes and rebuilds model files).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exaslide.errors import ModelError

if TYPE_CHECKING:
    import torch

#: Value of the ``"format"`` key of files written by :func:`~exaslide.models.save_model`.
CHECKPOINT_FORMAT = "exaslide-model/1"
#: Key prefixes added by ``DistributedDataParallel`` and ``torch.compile``.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: What to do about a corrupt model file (ends the error message).
REMEDY = "retrain the model, or copy it again from where it was trained"


def torch_load(path: str | os.PathLike, map_location="cpu", *,
               warn_unchecked: bool = True) -> Any:
    """``torch.load(path, weights_only=True)`` after checking the file's checksum.

    Args:
        warn_unchecked: log a warning when the file has no ``.sha256`` sidecar (files
            that exaslide wrote; weights from elsewhere are not expected to have one).

    Raises:
        ModelError: a missing file, a directory, a digest that is not the recorded one,
            or a file torch cannot read.
    """
    import torch

    from exaslide.integrity import verify

    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such model file")
    if p.is_dir():
        raise ModelError(f"{p}: is a directory; give the weights file itself")
    verify(p, ModelError, REMEDY, warn_missing=warn_unchecked)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle garbage, unsafe globals...
        raise ModelError(f"{p}: not a readable PyTorch weights file "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc


def strip_prefixes(state: Mapping[str, Any],
                   prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> dict[str, Any]:
    """``state`` without the wrapper ``prefixes`` (default: the ``module.`` /
    ``_orig_mod.`` that DDP and ``torch.compile`` add); a prefix is removed only when
    every key has it."""
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def extract_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, Any]:
    """The ``state_dict`` in a loaded file: the object itself, or the mapping under
    ``"state_dict"`` or ``"model"``; wrapper prefixes removed.

    Raises:
        ModelError: no mapping of names to tensors.
    """
    import torch

    if isinstance(obj, Mapping):
        if obj.get("format") == CHECKPOINT_FORMAT or isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        elif isinstance(obj.get("model"), Mapping):
            obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or \
            not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: holds no state_dict (expected a mapping of parameter "
                         "names to tensors, or a file written by save_model)")
    return strip_prefixes(obj)


def read_state_dict(path: str | os.PathLike, map_location="cpu") -> dict[str, torch.Tensor]:
    """The weights in a local file: a ``state_dict``, a dict holding one under
    ``"state_dict"`` or ``"model"``, or a :func:`~exaslide.models.save_model` file;
    wrapper prefixes removed. Checked against its ``.sha256`` sidecar when it has one.

    Raises:
        ModelError: missing, corrupt or unreadable file, or no state_dict in it.
    """
    return extract_state_dict(torch_load(path, map_location, warn_unchecked=False), path)
