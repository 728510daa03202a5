"""JSON files: one conversion of Python values to JSON types, one atomic writer.

>>> import numpy as np
>>> from pathlib import Path
>>> to_jsonable({"mpp": np.float32(0.5), "out": Path("/runs/x"), "size": (224, 224)})
{'mpp': 0.5, 'out': '/runs/x', 'size': [224, 224]}

:func:`to_jsonable` turns NumPy and torch scalars and arrays (anything with ``tolist``),
paths, tuples, sets and dataclasses into JSON types; anything else becomes ``str(value)``,
or a ``TypeError`` with ``strict=True``. :func:`write_json` writes the result atomically
(through :mod:`exaslide.atomic`), optionally with a ``.sha256`` sidecar
(:mod:`exaslide.integrity`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_PLAIN = (str, int, float, bool, type(None))


def to_jsonable(value: Any, *, strict: bool = False) -> Any:
    """``value`` with every part converted to a JSON type (dict, list, str, int, float,
    bool, None).

    Mappings keep their order (keys become strings as ``json.dumps`` writes them),
    tuples become lists, sets sorted lists, paths strings, NumPy / torch values their
    ``tolist()``, dataclasses dicts.

    Raises:
        TypeError: with ``strict``, a value of another type (else it becomes ``str``).
        ValueError: a container that holds itself.
    """
    return _convert(value, strict, set())


def _convert(value: Any, strict: bool, seen: set[int]) -> Any:
    if isinstance(value, _PLAIN) and type(value) in _PLAIN:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy, torch
        return _convert(value.tolist(), strict, seen)
    if isinstance(value, _PLAIN):  # subclasses (IntEnum, str enums, numpy float64)
        return _plain(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        if id(value) in seen:
            raise ValueError("circular reference")
        seen.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {_key(k, strict, seen): _convert(v, strict, seen)
                        for k, v in value.items()}
            items = [_convert(v, strict, seen) for v in value]
            if isinstance(value, set | frozenset):
                items.sort(key=lambda v: json.dumps(v, sort_keys=True))
            return items
        finally:
            seen.discard(id(value))
    if strict:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return str.__str__(value)  # the characters, not an enum's "Class.NAME"
    for kind in (bool, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


def finite(value: Any) -> Any:
    """A JSON-ready ``value`` with NaN and infinities replaced by ``None`` (``null``), for
    files that strict JSON readers must parse."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _key(key: Any, strict: bool, seen: set[int]) -> str:
    key = _convert(key, strict, seen)
    return key if isinstance(key, str) else json.dumps(key)


def dumps(obj: Any, *, indent: int | None = 2, strict: bool = False,
          allow_nan: bool = True) -> str:
    """``obj`` as JSON text (via :func:`to_jsonable`), ending with a newline.

    Raises:
        TypeError: with ``strict``, a value that has no JSON form.
        ValueError: NaN or infinity with ``allow_nan=False``, or a circular reference.
    """
    return json.dumps(to_jsonable(obj, strict=strict), indent=indent,
                      allow_nan=allow_nan) + "\n"


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
               strict: bool = False, allow_nan: bool = True,
               checksum: bool = False) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (see :func:`dumps`); with
    ``checksum``, also its ``<path>.sha256`` sidecar (see :mod:`exaslide.integrity`).

    Raises:
        TypeError, ValueError: as :func:`dumps` (nothing is written).
    """
    text = dumps(obj, indent=indent, strict=strict, allow_nan=allow_nan)
    if checksum:
        from exaslide.integrity import write_text_with_digest

        return write_text_with_digest(path, text)
    from exaslide.atomic import write_text

    return write_text(path, text)
