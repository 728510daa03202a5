"""The model registry: names to builders. It imports nothing from ``exaslide.models``.

A builder is any callable ``builder(num_classes: int) -> torch.nn.Module``, registered with
:func:`register_model` (the built-in ones in :mod:`exaslide.models.zoo`, which importing
:mod:`exaslide.models` loads). :func:`exaslide.models.factory.create_model` builds
models from it, as timm's ``_factory`` does from its ``_registry``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exaslide.errors import ModelError

__all__ = ["TIMM_PREFIX", "ModelError", "available_models", "get_builder", "register_model"]

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
        if name in _REGISTRY and _REGISTRY[name] is not builder and not overwrite:
            raise ModelError(f"model name {name!r} is already registered; pick another "
                             "name or pass overwrite=True")
        _REGISTRY[name] = builder
        return builder

    return decorator


def available_models() -> list[str]:
    """Registered model names, sorted (``timm:<name>`` also works when timm is installed)."""
    return sorted(_REGISTRY)


def get_builder(name: str) -> Callable[[int], Any]:
    """The builder registered under ``name``.

    Raises:
        ModelError: no model of that name.
    """
    builder = _REGISTRY.get(name)
    if builder is None:
        raise ModelError(f"unknown model {name!r}; choose one of "
                         f"{', '.join(sorted(_REGISTRY))} or {TIMM_PREFIX}<name>")
    return builder
