"""Model files: :func:`save_model` / :func:`load_model`.

A model file is a ``torch.save`` of a plain dict (read back with ``weights_only=True``,
so loading never runs code from the file)::

    {"format": "exaslide-model/1", "name": "small-cnn", "num_classes": 2,
     "state_dict": {...}, "meta": {...}}

``meta`` is JSON-ready (:func:`exaslide.jsonio.to_jsonable`: paths become strings,
tuples lists). The training loop stores ``classes``, ``patch`` (``{"size", "level",
"mpp"}``), ``mean``, ``std`` and ``config``.

Beside ``model.pt``, :func:`save_model` writes ``model.pt.sha256`` (its SHA-256, in
``sha256sum`` format, see :mod:`exaslide.integrity`); :func:`load_model` refuses a file
whose digest differs (corrupt or truncated) and warns about a file without one.

This module imports the factory (to rebuild models), never the other way round.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exaslide.errors import ModelError
from exaslide.models.factory import MIN_PRETRAINED_SHARE, create_model, load_pretrained
from exaslide.models.features import unwrap
from exaslide.models.weights import (
    CHECKPOINT_FORMAT,
    WRAPPER_PREFIXES,
    extract_state_dict,
    read_state_dict,
    strip_prefixes,
    torch_load,
)

if TYPE_CHECKING:
    import torch

__all__ = ["CHECKPOINT_FORMAT", "MIN_PRETRAINED_SHARE", "WRAPPER_PREFIXES", "load_model",
           "load_pretrained", "read_state_dict", "save_model", "strip_prefixes"]

logger = logging.getLogger(__name__)


def _json_ready(meta: Mapping[str, Any]) -> dict[str, Any]:
    from exaslide.jsonio import to_jsonable

    try:
        return to_jsonable(dict(meta))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ModelError(f"model meta is not JSON-ready: {exc}") from exc


def save_model(path: str | os.PathLike, model: torch.nn.Module,
               meta: Mapping[str, Any] | None = None, *, name: str | None = None) -> Path:
    """Write ``model``'s weights, name, class count and ``meta`` to ``path``, atomically,
    with its ``<path>.sha256`` checksum.

    Args:
        path: the file to write (``.pt`` by convention).
        model: a model built by :func:`~exaslide.models.create_model` (possibly wrapped in
            DDP or ``torch.compile``; the plain module's weights are saved, on the CPU).
        meta: JSON-ready metadata (see the module doc); converted with ``str`` where not.
        name: the registry name, for models not built by ``create_model``.

    Raises:
        ModelError: the model's registry name is unknown.
    """
    import torch

    from exaslide.integrity import atomic_write

    plain = unwrap(model)
    name = name or getattr(plain, "exaslide_name", None) or (meta or {}).get("model")
    if not name:
        raise ModelError(f"cannot save a {type(plain).__name__}: its registry name is "
                         "unknown; build it with create_model or pass name=")
    state = strip_prefixes({k: v.detach().cpu() for k, v in plain.state_dict().items()})
    num_classes = getattr(plain, "exaslide_num_classes", None)
    if num_classes is None:
        num_classes = len((meta or {}).get("classes") or []) or None
    checkpoint = {"format": CHECKPOINT_FORMAT, "name": str(name),
                  "num_classes": int(num_classes) if num_classes else None,
                  "state_dict": state, "meta": _json_ready(meta or {})}
    with atomic_write(path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


def load_model(path: str | os.PathLike,
               map_location="cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model written by :func:`save_model`, in eval mode.

    The architecture comes from the registry (``create_model(name, num_classes)``); the
    weights must match exactly (``module.`` / ``_orig_mod.`` prefixes are accepted). The
    file is checked against its ``.sha256`` sidecar first (a file without one, written by
    an earlier release, loads with a warning).

    Args:
        path: a file written by :func:`save_model`.
        map_location: where tensors are loaded; a device string or ``torch.device`` also
            moves the model there.

    Returns:
        ``(model, meta)``: ``meta`` is the saved metadata plus ``"model"`` (the registry
        name) and ``"num_classes"``.

    Raises:
        ModelError: missing, corrupt or truncated file, not a model file, unknown model
            name, or weights that do not match the architecture.
    """
    import torch

    obj = torch_load(path, map_location)
    if not isinstance(obj, Mapping) or "format" not in obj:
        raise ModelError(f"{path}: not an exaslide model file (no 'format' key); a bare "
                         "state_dict can be loaded with create_model(name, pretrained=...)")
    if obj["format"] != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: model file format {obj['format']!r} is not "
                         f"{CHECKPOINT_FORMAT!r} (written by another exaslide version?)")
    name, num_classes = obj.get("name"), obj.get("num_classes")
    state = extract_state_dict(obj, path)
    if num_classes is None:
        raise ModelError(f"{path}: the model file does not record num_classes")
    try:
        model = create_model(str(name), int(num_classes))
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not match model {name!r} with {num_classes} "
                         f"classes: {str(exc).splitlines()[0][:300]}") from exc
    if isinstance(map_location, str | torch.device):
        model.to(map_location)
    model.eval()
    meta = dict(obj.get("meta") or {})
    meta.setdefault("model", name)
    meta.setdefault("num_classes", int(num_classes))
    return model, meta
