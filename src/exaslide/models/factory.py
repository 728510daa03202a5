"""The factory: :func:`create_model` (a registered or timm model, optionally with local
pretrained weights) and :func:`load_pretrained`.

It sits on top of the registry (:mod:`exaslide.models.registry`), the built-in builders
(:mod:`exaslide.models.zoo`, imported here so that they are registered) and the weights
reader (:mod:`exaslide.models.weights`); :mod:`exaslide.models.checkpoint` imports it,
never the other way round. :func:`create_model` records the model's name and class count
on the module (attributes ``exaslide_name`` and ``exaslide_num_classes``) so that
:func:`~exaslide.models.save_model` can write them into the model file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import exaslide.models.zoo  # noqa: F401 - registers the built-in models
from exaslide.errors import ModelError
from exaslide.models.features import unwrap
from exaslide.models.registry import TIMM_PREFIX, get_builder
from exaslide.models.weights import read_state_dict

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Pretrained weights must cover at least this share of a model's values (by count).
MIN_PRETRAINED_SHARE = 0.5


def create_model(name: str, num_classes: int = 2,
                 pretrained: str | Path | None = None) -> torch.nn.Module:
    """Build a registered model with random weights, or local ``pretrained`` ones.

    Args:
        name: a name from :func:`~exaslide.models.available_models`, or
            ``"timm:<timm name>"``.
        num_classes: outputs of the classifier.
        pretrained: a local file: a ``state_dict`` (also inside a ``{"state_dict": ...}``
            or ``{"model": ...}`` dict) or a model file written by
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
        model = get_builder(name)(num_classes)
    model.exaslide_name = name
    model.exaslide_num_classes = num_classes
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def model_name(model: torch.nn.Module) -> str | None:
    """The registry name a model was built with by :func:`create_model`, or ``None``."""
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


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike) -> list[str]:
    """Load the weights of ``path`` into ``model`` where names and shapes match.

    Tensors of another shape (typically the classifier of another class count) and names
    the model lacks are skipped; parameters the file lacks keep their random values.
    Everything skipped is logged (warning level).

    Returns:
        The names of the model's tensors left as they were.

    Raises:
        ModelError: the file is missing, corrupt or unreadable, or the tensors that fit
            hold less than :data:`MIN_PRETRAINED_SHARE` of the model's values (another
            architecture).
    """
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
    _log_skipped(path, source, target, loadable)
    return [k for k in target if k not in loadable]


def _log_skipped(path, source: dict, target: dict, loadable: dict) -> None:
    other_shape = [f"{k} {tuple(source[k].shape)} -> {tuple(target[k].shape)}"
                   for k in source if k in target and k not in loadable]
    unexpected = [k for k in source if k not in target]
    missing = [k for k in target if k not in loadable and k not in source]
    logger.info("%s: loaded %d of %d tensors", path, len(loadable), len(target))
    if other_shape:
        logger.warning("%s: skipped tensors of another shape (left random): %s", path,
                       ", ".join(other_shape))
    if unexpected:
        logger.warning("%s: skipped tensors the model does not have: %s", path,
                       ", ".join(unexpected[:20]) + (" ..." if len(unexpected) > 20 else ""))
    if missing:
        logger.warning("%s: the file lacks %d of the model's tensors (left random): %s",
                       path, len(missing), ", ".join(missing[:20])
                       + (" ..." if len(missing) > 20 else ""))
