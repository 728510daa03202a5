"""MIL model files, and weights of the reference implementations (CLAM, TransMIL).

A MIL model file (``model.pt``) is a ``torch.save`` of a plain dict, read back with
``weights_only=True`` after its ``.sha256`` sidecar is checked
(:mod:`exaslide.integrity`)::

    {"format": "exaslide-mil/1", "name": "abmil",
     "dims": {"in_dim": 1024, "n_classes": 2, "hidden": [512, 256], ...},
     "state_dict": {...},
     "meta": {"classes": [...], "task": "binary", "features": {...}, "config": {...}}}

:func:`load_reference_weights` maps a state dict saved by CLAM (``torch.save(
model.state_dict())``, ``DataParallel``'s ``module.`` prefix accepted) or by TransMIL's
Lightning module (``{"state_dict": {"model.<name>": ...}}``) onto an exaslide model; the
key table is in ``docs/mil.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exaslide.errors import ModelError
from exaslide.mil.errors import MILError

if TYPE_CHECKING:
    import torch

FORMAT = "exaslide-mil/1"


def save_mil_model(path: str | os.PathLike, model, meta: Mapping[str, Any] | None = None
                   ) -> Path:
    """Write ``model`` (its registry name, dims, weights on the CPU) and ``meta``
    atomically, with its ``.sha256`` sidecar."""
    import torch

    from exaslide.integrity import atomic_write
    from exaslide.jsonio import to_jsonable
    from exaslide.models.features import unwrap

    plain = unwrap(model)
    state = {k: v.detach().cpu() for k, v in plain.state_dict().items()}
    payload = {"format": FORMAT, "name": plain.exaslide_name, "dims": plain.dims(),
               "state_dict": state, "meta": to_jsonable(dict(meta or {}))}
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_mil_model(path: str | os.PathLike, device="cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild a model written by :func:`save_mil_model`, in eval mode on ``device``.

    Returns:
        ``(model, meta)``; ``meta`` gains ``model`` (the name) and ``dims``.

    Raises:
        MILError: missing, corrupt or unreadable file, a file of another kind (a patch
            model, bare weights) or weights that do not fit the recorded architecture.
    """
    from exaslide.mil.registry import MIL_MODELS, create_mil_model
    from exaslide.models.weights import CHECKPOINT_FORMAT, torch_load

    try:
        obj = torch_load(path)
    except ModelError as exc:
        raise MILError(str(exc)) from exc
    kind = obj.get("format") if isinstance(obj, Mapping) else None
    if kind != FORMAT:
        what = (f"a patch model file ({obj.get('name')!r}; use it with exaslide infer or "
                "embed)" if kind == CHECKPOINT_FORMAT else
                f"a file of format {kind!r}" if kind else "not an exaslide MIL model file")
        raise MILError(f"{path}: {what}, not a MIL model ({FORMAT}); train one with "
                       "`exaslide mil train`, or give CLAM/TransMIL weights as the "
                       "config's init_weights")
    name, dims = obj.get("name"), dict(obj.get("dims") or {})
    if name not in MIL_MODELS:
        raise MILError(f"{path}: unknown MIL model {name!r} (known: "
                       f"{', '.join(MIL_MODELS)}); written by a newer exaslide?")
    model = create_mil_model(name, dims.get("in_dim", 0), dims.get("n_classes", 0),
                             hidden=dims.get("hidden"), k_sample=dims.get("k_sample", 8),
                             subtyping=dims.get("subtyping", False))
    _load_strict(model, obj.get("state_dict") or {}, path)
    model.to(device).eval()
    meta = dict(obj.get("meta") or {})
    meta.update(model=name, dims=dims)
    return model, meta


def _load_strict(model, state: Mapping[str, Any], path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {list(state[k].shape)} (the model's: {list(own[k].shape)})"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = ([f"missing {_few(missing)}"] if missing else []) + \
                ([f"unexpected {_few(unexpected)}"] if unexpected else []) + \
                ([f"shapes differ: {_few(wrong)}"] if wrong else [])
        dims = ", ".join(f"{k}={v}" for k, v in model.dims().items())
        raise MILError(f"{path}: weights do not fit model {model.exaslide_name} ({dims}): "
                       f"{'; '.join(parts)}; give weights of this architecture")
    model.load_state_dict(state, strict=True)


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def reference_state_dict(state: Mapping[str, Any], model) -> dict[str, Any]:
    """A CLAM or TransMIL state dict renamed to ``model``'s keys (see ``docs/mil.md``):
    wrapper prefixes (``module.``, ``_orig_mod.``, Lightning's ``model.``) removed;
    CLAM's older layout without dropout (``attention_net.2.*``) moved to
    ``attention_net.3.*``; CLAM-SB's ``instance_classifiers.*`` dropped for ABMIL."""
    from exaslide.models.weights import strip_prefixes

    state = strip_prefixes(state)
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    name = model.exaslide_name
    if name in ("abmil", "clam_sb") and not any(k.startswith("attention_net.3.") for k in state):
        state = {("attention_net.3." + k[len("attention_net.2."):]
                  if k.startswith("attention_net.2.") else k): v for k, v in state.items()}
    if name == "abmil":
        state = {k: v for k, v in state.items() if not k.startswith("instance_classifiers.")}
    return state


#: The first layer of each architecture (its input dimension is the features').
INPUT_LAYERS = ("attention_net.0.weight", "fc.0.weight", "_fc1.0.weight")


def read_reference(source: str | os.PathLike | Mapping[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """The state dict in a reference weights file (or mapping), prefixes removed.

    Raises:
        MILError: a missing, corrupt or unreadable file, or no state dict in it.
    """
    from exaslide.models.weights import extract_state_dict, strip_prefixes, torch_load

    where = source if not isinstance(source, Mapping) else "the given state dict"
    try:
        obj = torch_load(source, warn_unchecked=False) if not isinstance(source, Mapping) \
            else source
        state = strip_prefixes(extract_state_dict(obj, where))
    except ModelError as exc:
        raise MILError(str(exc)) from exc
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    return state


def reference_input_dim(state: Mapping[str, torch.Tensor]) -> int | None:
    """The feature dimension reference weights were trained on (None if unknown)."""
    for key in INPUT_LAYERS:
        weight = state.get(key)
        if weight is not None and weight.dim() == 2:
            return int(weight.shape[1])
    return None


def load_reference_weights(model, source: str | os.PathLike | Mapping[str, torch.Tensor]
                           ) -> None:
    """Load CLAM / TransMIL weights (a file or a state dict) into ``model``, all of them.

    Raises:
        MILError: an unreadable file, or weights of another architecture or size (one
            line naming the keys that differ).
    """
    where = source if not isinstance(source, Mapping) else "the given state dict"
    _load_strict(model, reference_state_dict(read_reference(source), model), where)
