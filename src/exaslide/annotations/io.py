"""Format dispatch: :func:`read_annotations` and :func:`write_annotations`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path

from exaslide.annotations.asap import read_asap, write_asap
from exaslide.annotations.geojson import load_json, parse_geojson, write_geojson
from exaslide.annotations.model import Annotation, AnnotationSet, load_label_map
from exaslide.annotations.ncrf import is_ncrf, parse_ncrf
from exaslide.annotations.table import read_table, write_table
from exaslide.errors import AnnotationError

logger = logging.getLogger(__name__)

FORMATS = ("asap", "geojson", "ncrf", "table")
_ALIASES = {
    "asap": "asap",
    "xml": "asap",
    "geojson": "geojson",
    "qupath": "geojson",
    "ncrf": "ncrf",
    "table": "table",
    "csv": "table",
    "txt": "table",
    "tsv": "table",
}
_SUFFIXES = {
    ".xml": "asap",
    ".geojson": "geojson",
    ".json": "geojson",
    ".csv": "table",
    ".txt": "table",
    ".tsv": "table",
}


def _normalise_format(format: str | None, path: Path) -> str | None:
    if format is None:
        return None
    key = format.strip().lower()
    if key not in _ALIASES:
        raise AnnotationError(
            f"{path}: unknown annotation format {format!r}; use one of {', '.join(FORMATS)}"
        )
    return _ALIASES[key]


def _format_from_suffix(path: Path) -> str:
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise AnnotationError(
            f"{path}: cannot tell the annotation format from the suffix {path.suffix!r}; "
            f"use one of {', '.join(sorted(_SUFFIXES))} or pass format= ({', '.join(FORMATS)})"
        )
    return fmt


def read_annotations(
    path: str | PathLike[str],
    *,
    format: str | None = None,
    label_map: Mapping[str, str] | str | PathLike[str] | None = None,
) -> AnnotationSet:
    """Read an annotation file in any supported format.

    The format comes from the suffix unless given: ``.xml`` -> "asap"; ``.geojson`` /
    ``.json`` -> "geojson", or "ncrf" when the JSON object has "positive"/"negative" keys;
    ``.csv`` / ``.txt`` / ``.tsv`` -> "table".

    Args:
        path: The annotation file.
        format: "asap", "geojson", "ncrf" or "table" (aliases: xml, qupath, csv, txt, tsv).
        label_map: Extra ``group -> label`` entries added on top of DEFAULT_LABEL_MAP (user
            entries win; keys are case-insensitive), or a path to a label-map file
            (see :func:`load_label_map`).

    Returns:
        The annotations with valid geometries, canonical labels and repair records.

    Raises:
        AnnotationError: Unknown format, unreadable or malformed file.
        HostileXMLError: An XML file with DTDs / entities / external references.
        StorageError: A remote file that cannot be fetched.
    """
    from exaslide.storage import is_remote

    if is_remote(path):
        return _read_remote(str(path), format, label_map)
    path = Path(path)
    if label_map is not None and not isinstance(label_map, Mapping):
        label_map = load_label_map(label_map)
    fmt = _normalise_format(format, path) or _format_from_suffix(path)
    if fmt == "asap":
        return read_asap(path, label_map=label_map)
    if fmt == "table":
        return read_table(path, label_map=label_map)
    data = load_json(path)
    if fmt == "ncrf" or (format is None and is_ncrf(data)):
        return parse_ncrf(data, path, label_map=label_map)
    return parse_geojson(data, path, label_map=label_map)


def _read_remote(url: str, format: str | None, label_map) -> AnnotationSet:
    """A remote annotation file: fetched whole through the disk cache, read locally; the
    format comes from the URL's suffix and messages name the URL."""
    from exaslide.storage import local_copy, url_basename

    name = url_basename(url)
    try:  # an unknown format fails before the download
        _normalise_format(format, Path(name)) or _format_from_suffix(Path(name))
    except AnnotationError as exc:
        raise AnnotationError(str(exc).replace(name, url, 1)) from exc
    local = str(local_copy(url))  # keeps the URL's file name, hence its suffix
    try:
        result = read_annotations(local, format=format, label_map=label_map)
    except AnnotationError as exc:
        raise type(exc)(str(exc).replace(local, url)) from exc
    result.path = url
    return result


def write_annotations(
    annotations: AnnotationSet | Iterable[Annotation],
    path: str | PathLike[str],
    *,
    format: str | None = None,
) -> Path:
    """Write annotations losslessly (their ``source`` geometries), atomically.

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so readers never see a partial file.

    Args:
        annotations: An AnnotationSet (its group colours are written too) or Annotations.
        path: Destination; the format comes from the suffix (``.xml``, ``.geojson`` /
            ``.json``, ``.csv`` / ``.txt`` / ``.tsv``) unless ``format`` is given.
        format: "asap", "geojson" or "table" (NCRF is read-only).

    Returns:
        The destination path.

    Raises:
        AnnotationError: Unknown or read-only format, or the file cannot be written.
    """
    path = Path(path)
    fmt = _normalise_format(format, path) or _format_from_suffix(path)
    colors = annotations.group_colors if isinstance(annotations, AnnotationSet) else {}
    items = list(annotations)
    if fmt == "asap":
        return write_asap(items, path, group_colors=colors)
    if fmt == "geojson":
        return write_geojson(items, path, group_colors=colors)
    if fmt == "table":
        return write_table(items, path)
    raise AnnotationError(
        f"{path}: writing the {fmt!r} format is not supported; write 'geojson' or 'asap'"
    )
