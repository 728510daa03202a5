"""Model files: :func:`save_model` / :func:`load_model`, and local pretrained weights.

A model file is a ``torch.save`` of a plain dict (read back with ``weights_only=True``,
so loading never runs code from the file)::

    {"format": "exaslide-model/1", "name": "small-cnn", "num_classes": 2,
     "state_dict": {...}, "meta": {...}}

``meta`` is JSON-ready (paths become strings, tuples lists). The training loop stores
``classes``, ``patch`` (``{"size", "level", "mpp"}``), ``mean``, ``std`` and ``config``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exaslide.errors import ModelError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Value of the ``"format"`` key of files written by :func:`save_model`.
CHECKPOINT_FORMAT = "exaslide-model/1"
#: Key prefixes added by ``DistributedDataParallel`` and ``torch.compile``.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: Pretrained weights must cover at least this share of a model's values (by count).
MIN_PRETRAINED_SHARE = 0.5


def _json_ready(meta: Mapping[str, Any]) -> dict[str, Any]:
    def default(value):
        if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
            return value.item()
        if hasattr(value, "tolist") and callable(value.tolist):
            return value.tolist()
        return str(value)

    try:
        return json.loads(json.dumps(dict(meta), default=default))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model meta is not JSON-ready: {exc}") from exc


def save_model(path: str | os.PathLike, model: torch.nn.Module,
               meta: Mapping[str, Any] | None = None, *, name: str | None = None) -> Path:
    """Write ``model``'s weights, name, class count and ``meta`` to ``path``, atomically.

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

    from exaslide.atomic import atomic_path
    from exaslide.models.features import unwrap

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
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


def _torch_load(path: str | os.PathLike, map_location="cpu") -> Any:
    import torch

    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such model file")
    if p.is_dir():
        raise ModelError(f"{p}: is a directory; give the weights file itself")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle garbage, unsafe globals...
        raise ModelError(f"{p}: not a readable PyTorch weights file "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc


def strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` without the ``module.`` / ``_orig_mod.`` prefixes that DDP and
    ``torch.compile`` add (a prefix is removed only when every key has it)."""
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _extract_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, Any]:
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
    ``"state_dict"`` or ``"model"``, or a :func:`save_model` file; wrapper prefixes
    removed.

    Raises:
        ModelError: missing or unreadable file, or no state_dict in it.
    """
    return _extract_state_dict(_torch_load(path, map_location), path)


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike) -> list[str]:
    """Load the weights of ``path`` into ``model`` where names and shapes match.

    Tensors of another shape (typically the classifier of another class count) and names
    the model lacks are skipped; parameters the file lacks keep their random values.
    Everything skipped is logged (warning level).

    Returns:
        The names of the model's tensors left as they were.

    Raises:
        ModelError: the file is missing or unreadable, or the tensors that fit hold less
            than :data:`MIN_PRETRAINED_SHARE` of the model's values (another
            architecture).
    """
    from exaslide.models.features import unwrap

    plain = unwrap(model)
    source = read_state_dict(path)
    target = plain.state_dict()
    loadable = {k: v for k, v in source.items()
                if k in target and tuple(v.shape) == tuple(target[k].shape)}
    loaded_share = sum(v.numel() for v in loadable.values()) / \
        max(1, sum(v.numel() for v in target.values()))
    if loaded_share < MIN_PRETRAINED_SHARE:
        raise ModelError(f"{path}: only {len(loadable)} of its {len(source)} tensors fit "
                         f"{getattr(plain, 'exaslide_name', type(plain).__name__)} "
                         f"({loaded_share:.0%} of its weights; weights of another "
                         "architecture?)")
    plain.load_state_dict(loadable, strict=False)
    other_shape = [f"{k} {tuple(source[k].shape)} -> {tuple(target[k].shape)}"
                   for k in source if k in target and k not in loadable]
    unexpected = [k for k in source if k not in target]
    kept = [k for k in target if k not in loadable]
    logger.info("%s: loaded %d of %d tensors", path, len(loadable), len(target))
    if other_shape:
        logger.warning("%s: skipped tensors of another shape (left random): %s", path,
                       ", ".join(other_shape))
    if unexpected:
        logger.warning("%s: skipped tensors the model does not have: %s", path,
                       ", ".join(unexpected[:20]) + (" ..." if len(unexpected) > 20 else ""))
    missing = [k for k in kept if k not in source]
    if missing:
        logger.warning("%s: the file lacks %d of the model's tensors (left random): %s",
                       path, len(missing), ", ".join(missing[:20])
                       + (" ..." if len(missing) > 20 else ""))
    return kept


def load_model(path: str | os.PathLike,
               map_location="cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model written by :func:`save_model`, in eval mode.

    The architecture comes from the registry (``create_model(name, num_classes)``); the
    weights must match exactly (``module.`` / ``_orig_mod.`` prefixes are accepted).

    Args:
        path: a file written by :func:`save_model`.
        map_location: where tensors are loaded; a device string or ``torch.device`` also
            moves the model there.

    Returns:
        ``(model, meta)``: ``meta`` is the saved metadata plus ``"model"`` (the registry
        name) and ``"num_classes"``.

    Raises:
        ModelError: missing or corrupt file, not a model file, unknown model name, or
            weights that do not match the architecture.
    """
    import torch

    from exaslide.models.registry import create_model

    obj = _torch_load(path, map_location)
    if not isinstance(obj, Mapping) or "format" not in obj:
        raise ModelError(f"{path}: not an exaslide model file (no 'format' key); a bare "
                         "state_dict can be loaded with create_model(name, pretrained=...)")
    if obj["format"] != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: model file format {obj['format']!r} is not "
                         f"{CHECKPOINT_FORMAT!r} (written by another exaslide version?)")
    name, num_classes = obj.get("name"), obj.get("num_classes")
    state = _extract_state_dict(obj, path)
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
