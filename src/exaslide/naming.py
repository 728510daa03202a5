"""How per-slide output files are named: the default slide id of a slide path, which ids
may name files, and the temporaries a killed atomic write leaves behind.

:func:`check_slide_id` is the one rule for what a safe slide id is; the manifest reader,
the default id of a slide file (:func:`slide_stem`) and every writer of per-slide files
go through it.
"""

from __future__ import annotations

import glob
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from exaslide.errors import ExaslideError

#: Longest slide id, in UTF-8 bytes. Outputs add suffixes to the id (e.g.
#: ``.<id>-0000-00000.1a2b3c4d.tmp.tar`` for a shard's temporary, ~30 bytes) and most file
#: systems cap a file name at 255 bytes.
MAX_SLIDE_ID_BYTES = 200


class SlideIdError(ExaslideError, ValueError):
    """A slide id that cannot name output files (see :func:`check_slide_id`)."""


def slide_id_problem(slide_id: object) -> str | None:
    """Why ``slide_id`` cannot name output files (a short rule, e.g. ``"must not contain
    a path separator"``), or ``None`` when it can."""
    if not isinstance(slide_id, str) or not slide_id:
        return "must not be empty"
    size = len(slide_id.encode("utf-8", "surrogatepass"))
    if size > MAX_SLIDE_ID_BYTES:
        return (f"is {size} bytes long; at most {MAX_SLIDE_ID_BYTES} bytes (UTF-8) are "
                "allowed, since output names add suffixes and file systems cap names at 255")
    if "/" in slide_id or "\\" in slide_id:
        return "must not contain a path separator ('/' or '\\')"
    if any(unicodedata.category(c) == "Cs" for c in slide_id):
        return "must be valid Unicode text (it holds undecodable bytes)"
    bad = next((c for c in slide_id if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        return f"must not contain a control character (found {bad!r}: NUL, line break, tab...)"
    if slide_id.startswith("."):
        return "must not start with '.' (nor be '.' or '..'; hidden files are temporaries)"
    if slide_id != slide_id.strip():
        return "must not start or end with a space"
    return None


def check_slide_id(slide_id: str) -> str:
    """Return ``slide_id`` when it can name files in an output folder.

    A slide id names every per-slide output (``<id>.parquet``, ``<id>_mask.png``,
    ``<id>.heatmap.npy``...), so it must be non-empty, at most
    :data:`MAX_SLIDE_ID_BYTES` bytes in UTF-8, without ``/`` or ``\\``, without control
    characters (NUL, line breaks, tabs), not start with ``.`` (which also rules out ``.``
    and ``..``) and not start or end with whitespace.

    Raises:
        SlideIdError: naming the id and the rule it breaks.
    """
    problem = slide_id_problem(slide_id)
    if problem is not None:
        raise SlideIdError(f"slide id {shown_id(slide_id)} {problem}")
    return slide_id


def is_valid_slide_id(slide_id: str | None) -> bool:
    """True when ``slide_id`` can name files in an output folder (see
    :func:`check_slide_id`)."""
    return slide_id_problem(slide_id) is None


def shown_id(value: object, limit: int = 60) -> str:
    """``repr`` of a slide id for messages, shortened to about ``limit`` characters."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 8]}...{text[-4:]} ({len(str(value))} characters)"


def slide_stem(path: str | os.PathLike) -> str:
    """File name without its extension (``.ome.tif`` / ``.ome.tiff`` count as one): the
    default slide id. Works for paths and URLs (``s3://bucket/a.svs`` gives ``a``).

    Raises:
        SlideIdError: when that stem cannot be a slide id (see :func:`check_slide_id`,
            e.g. a file named ``.hidden.tif``); give the slide an id in a manifest or
            rename the file.
    """
    name = str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    stem = Path(name).stem
    for double in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(double):
            stem = name[: -len(double)]
    problem = slide_id_problem(stem)
    if problem is not None:
        raise SlideIdError(f"{path}: the file name's stem {shown_id(stem)} cannot be a slide "
                           f"id: it {problem}; rename the file or give the slide an id in a "
                           "manifest")
    return stem


def remove_stale_temporaries(targets: Iterable[str | os.PathLike]) -> None:
    """Delete the temporaries a killed :func:`exaslide.atomic.atomic_path` left for each
    target file (``.<stem>.<8 hex digits>.tmp<suffix>`` beside it; only those, so another
    slide's whose id starts with this one's are kept)."""
    for target in targets:
        target = Path(target)
        pattern = (f".{glob.escape(target.stem)}.{'[0-9a-f]' * 8}"
                   f".tmp{glob.escape(target.suffix)}")
        for stale in target.parent.glob(pattern):
            stale.unlink(missing_ok=True)
