"""How per-slide output files are named: the default slide id of a slide path, which ids
may name files, and the temporaries a killed atomic write leaves behind."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path


def slide_stem(path: str | os.PathLike) -> str:
    """File name without its extension (``.ome.tif`` / ``.ome.tiff`` count as one): the
    default slide id. Works for paths and URLs (``s3://bucket/a.svs`` gives ``a``)."""
    name = str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    for double in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(double):
            return name[: -len(double)]
    return Path(name).stem


def is_valid_slide_id(slide_id: str | None) -> bool:
    """True when ``slide_id`` can name files in an output folder: non-empty, without a
    path separator and not starting with ``.`` (hidden files are temporaries)."""
    return bool(slide_id) and "/" not in slide_id and "\\" not in slide_id \
        and not slide_id.startswith(".")


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
