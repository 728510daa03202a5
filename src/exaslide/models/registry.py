"""The model registry: names to builders, and :func:`create_model`.

A builder is any callable ``builder(num_classes: int) -> torch.nn.Module``, registered with
:func:`register_model`. :func:`create_model` builds the model, optionally loads local
pretrained weights, and records its name and class count on the module (attributes
``exaslide_name`` and ``exaslide_num_classes``) so that
:func:`~exaslide.models.save_model` can write them into the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exaslide.errors import ModelError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Prefix of names handed to ``timm.create_model``.
TIMM_PREFIX = "timm:"

_REGISTRY: dict[str, Callable[[int], Any]] = {}


def register_model(name: str, *, overwrite: bool = False) -> Callable:
    """Decorator registering a builder (a function or class called as
    ``builder(num_classes)``) under ``name``.

    Raises:
        ModelError: ``name`` is already taken (unless ``overwrite``) or uses the reserved
            ``timm:`` prefix.
    """
    if not name or name.startswith(TIMM_PREFIX):
        raise ModelError(f"cannot register {name!r}: names starting with {TIMM_PREFIX!r} "
                         "are built by timm")

    def decorator(builder: Callable[[int], Any]) -> Callable[[int], Any]:
        _load_builtins()  # a built-in name is taken even before the first create_model
        if name in _REGISTRY and _REGISTRY[name] is not builder and not overwrite:
            raise ModelError(f"model name {name!r} is already registered; pick another "
                             "name or pass overwrite=True")
        _REGISTRY[name] = builder
        return builder

    return decorator


def available_models() -> list[str]:
    """Registered model names, sorted (``timm:<name>`` also works when timm is installed)."""
    _load_builtins()
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 2,
                 pretrained: str | Path | None = None) -> torch.nn.Module:
    """Build a registered model with random weights, or local ``pretrained`` ones.

    Args:
        name: a name from :func:`available_models`, or ``"timm:<timm name>"``.
        num_classes: outputs of the classifier.
        pretrained: a local file: a ``state_dict`` (also inside a ``{"state_dict": ...}``
            or ``{"model": ...}`` dict) or a checkpoint written by
            :func:`~exaslide.models.save_model`. Tensors whose shape differs (the
            classifier of another class count) are skipped and logged. Never downloaded.

    Raises:
        ModelError: unknown name, timm not installed, invalid ``num_classes``, a missing,
            corrupt or non-matching ``pretrained`` file.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    if name.startswith(TIMM_PREFIX):
        model = _create_timm(name[len(TIMM_PREFIX):], num_classes)
    else:
        _load_builtins()
        builder = _REGISTRY.get(name)
        if builder is None:
            raise ModelError(f"unknown model {name!r}; choose one of "
                             f"{', '.join(sorted(_REGISTRY))} or timm:<name>")
        model = builder(num_classes)
    model.exaslide_name = name
    model.exaslide_num_classes = num_classes
    if pretrained is not None:
        from exaslide.models.checkpoint import load_pretrained

        load_pretrained(model, pretrained)
    return model


def model_name(model: torch.nn.Module) -> str | None:
    """The registry name a model was built with by :func:`create_model`, or ``None``."""
    from exaslide.models.features import unwrap

    return getattr(unwrap(model), "exaslide_name", None)


def _create_timm(name: str, num_classes: int) -> torch.nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ModelError(f"model 'timm:{name}' needs the timm package, which is not "
                         "installed: pip install timm") from exc
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ModelError(f"timm cannot build {name!r}: {exc}") from exc


def _load_builtins() -> None:
    """Register the built-in models (imports only the module of builders, not torch).
    Called while that module is being imported, the import returns at once."""
    import exaslide.models.zoo  # noqa: F401 - registers on import
