"""The MIL model registry: names to classes, imported only when a model is built (this
module imports neither torch nor the models)."""

from __future__ import annotations

import importlib
from typing import Any

from exaslide.mil.errors import MILError

#: Registry name -> ``module:class``.
MIL_MODELS = {
    "meanpool": "exaslide.mil.models:MeanPoolMLP",
    "abmil": "exaslide.mil.models:ABMIL",
    "clam_sb": "exaslide.mil.models:CLAMSB",
    "transmil": "exaslide.mil.transmil:TransMIL",
}
#: ``size`` names -> hidden sizes (CLAM's ``size_dict`` without the input dimension;
#: TransMIL: its model dimension).
SIZES = {"small": {"meanpool": [512], "abmil": [512, 256], "clam_sb": [512, 256],
                   "transmil": [512]},
         "big": {"meanpool": [512], "abmil": [512, 384], "clam_sb": [512, 384],
                 "transmil": [512]}}


def mil_model_names() -> list[str]:
    """The registered MIL model names."""
    return list(MIL_MODELS)


def hidden_sizes(name: str, size: str = "small", hidden: list[int] | None = None) -> list[int]:
    """The hidden sizes of model ``name``: ``hidden`` when given, else those of ``size``.

    Raises:
        MILError: an unknown model or size, or a ``hidden`` of the wrong length.
    """
    _check_name(name)
    if size not in SIZES:
        raise MILError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    wanted = len(SIZES[size][name])
    if hidden is None:
        return list(SIZES[size][name])
    if len(hidden) != wanted:
        what = "[L, D]" if wanted == 2 else "[L]" if name == "meanpool" else "[dim]"
        raise MILError(f"hidden: model {name} takes {what}, got {list(hidden)}")
    return [int(v) for v in hidden]


def _check_name(name: str) -> None:
    if name not in MIL_MODELS:
        raise MILError(f"unknown MIL model {name!r}; expected one of {', '.join(MIL_MODELS)}")


def create_mil_model(name: str, in_dim: int, n_classes: int, *,
                     hidden: list[int] | None = None, dropout: float = 0.25,
                     k_sample: int = 8, subtyping: bool = False) -> Any:
    """Build MIL model ``name`` with random weights.

    Args:
        name: one of :data:`MIL_MODELS`.
        in_dim: feature dimension of the bags.
        n_classes: number of slide classes (>= 2).
        hidden: hidden sizes (default: CLAM's ``small``; see :func:`hidden_sizes`).
        dropout: dropout rate (CLAM-style attention models also put a fixed 0.25 dropout
            in the attention branches when it is > 0; TransMIL has its own 0.1).
        k_sample, subtyping: CLAM-SB's instance-loss settings.

    Raises:
        MILError: unknown name or bad sizes.
    """
    hidden = hidden_sizes(name, "small", hidden)
    module, _, attr = MIL_MODELS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    try:
        if name == "transmil":
            return cls(in_dim, n_classes, dim=hidden[0])
        if name == "meanpool":
            return cls(in_dim, n_classes, hidden=hidden[0], dropout=dropout)
        kwargs = {"k_sample": k_sample, "subtyping": subtyping} if name == "clam_sb" else {}
        return cls(in_dim, n_classes, hidden=tuple(hidden), dropout=dropout, **kwargs)
    except ValueError as exc:
        raise MILError(f"model {name}: {exc}") from exc
