"""Reading weights files: a ``state_dict`` in any of the usual wrappings, checked against
its ``.sha256`` sidecar when it has one (see :mod:`exaslide.integrity`).

Below :mod:`exaslide.models.factory` (which loads pretrained weights with it) and
:mod:`exaslide.models.checkpoint` (which writes and rebuilds model files).

A weights file may be an fsspec URL (``s3://bucket/run/model.pt``, ``gs://``, ``az://``,
``https://``): it is copied whole into exaslide's disk cache
(:func:`~exaslide.storage.local_copy`, reused while the remote file is unchanged) and its
``.sha256`` sidecar, fetched the same way when the store has one, is checked against it.
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
        path: a local path or an fsspec URL (copied whole into the disk cache first).
        warn_unchecked: log a warning when the file has no ``.sha256`` sidecar (files
            that exaslide wrote; weights from elsewhere are not expected to have one).

    Raises:
        ModelError: a missing file, a directory, a digest that is not the recorded one,
            or a file torch cannot read.
        StorageError: a remote file that cannot be fetched (one line naming the URL).
    """
    import torch

    from exaslide.integrity import verify
    from exaslide.storage.urls import is_remote

    if is_remote(path):
        p = remote_copy(str(path), warn_missing=warn_unchecked)
    else:
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


def remote_copy(url: str, error: type[Exception] = ModelError, remedy: str = REMEDY, *,
                warn_missing: bool = True, unchecked: list | None = None) -> Path:
    """The disk-cache copy of the remote file ``url`` (:func:`~exaslide.storage.local_copy`:
    fetched whole once, reused while the remote file is unchanged), checked against the
    digest in its ``<url>.sha256`` sidecar when the store has one (a URL with a query,
    e.g. presigned, has no sidecar URL and is not checked).

    Args:
        error, remedy: the exception raised for a digest that is not the recorded one,
            and what to do (ends its message).
        warn_missing: log a warning when there is no sidecar (unless ``unchecked`` is
            given: the URL is then appended to it, for the caller to warn once).

    Raises:
        StorageError: the file (or its sidecar) cannot be fetched (one line naming it).
        error: a corrupt copy or sidecar.
    """
    from exaslide.errors import StorageError
    from exaslide.integrity import SUFFIX, file_digest, recorded_digests
    from exaslide.integrity import warn_unchecked as warn
    from exaslide.storage.errors import storage_error
    from exaslide.storage.fetch import local_copy

    try:
        copy = local_copy(url)
    except Exception as exc:
        raise storage_error(exc, url, "fetch the file") from exc
    sidecar = None
    if "?" not in url:
        try:
            sidecar = local_copy(url + SUFFIX)
        except StorageError as exc:
            if "no such remote file" not in str(exc) and \
                    not isinstance(exc.__cause__, FileNotFoundError):
                raise storage_error(exc, url + SUFFIX, "fetch the checksum") from exc
    if sidecar is None:
        if unchecked is not None:
            unchecked.append(url)
        elif warn_missing:
            warn([url])
        return copy
    name = url.rstrip("/").rsplit("/", 1)[-1]
    try:  # the cached sidecar, read as the sidecar of a file of the remote name beside it
        expected = recorded_digests(sidecar.with_name(name))
    except Exception as exc:
        raise error(f"{url}{SUFFIX}: not a sha256sum line for {name}; delete it to load "
                    "the file without a check") from exc
    found = file_digest(copy)
    if found not in expected:
        raise error(f"{url}: corrupt file (sha256 expected {expected[0][:16]}..., found "
                    f"{found[:16]}..., {copy.stat().st_size} bytes: flipped bits or a "
                    f"truncated copy); {remedy}")
    return copy


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
