"""Vertex tables (CSV / TXT / TSV): read and write.

One row per vertex, with a header row naming the columns (any order, case-insensitive)::

    annotation,label,x,y,type
    lesion-1,tumour,100.5,200,polygon
    lesion-1,tumour,150,200,polygon
    lesion-1,tumour,150,260,polygon
    cell-7,lymphocyte,40,41,point

``annotation`` is an id; rows with the same id, in row order, are the vertices of one
annotation. ``label`` is the group name (mapped to a canonical label like any group).
``type`` is optional: ``polygon`` or ``point``; without it one row is a point and two or
more rows are a polygon. Several ``point`` rows with one id form a point set.
``.csv`` files are comma-separated; ``.txt`` / ``.tsv`` files are tab-separated when the
header contains a tab, otherwise whitespace-separated; other suffixes (with an explicit
``format="table"``) are comma-separated when the header has a comma. A decimal comma
("3,5", quoted in CSV) is accepted.
Blank lines are ignored.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from exaslide.annotations._fileio import atomic_write_text, read_text
from exaslide.annotations._geom import XY, flatten, points_source, polygon_source
from exaslide.annotations.model import (
    Annotation,
    AnnotationDraft,
    AnnotationSet,
    build_annotation_set,
    merge_label_map,
)
from exaslide.errors import AnnotationError

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("annotation", "label", "x", "y")
_TYPES = {"polygon": "polygon", "point": "point"}


@dataclass
class _Entry:
    line: int
    label: str
    type: str | None
    points: list[XY] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def read_table(
    path: str | PathLike[str], *, label_map: Mapping[str, str] | None = None
) -> AnnotationSet:
    """Read a vertex table (see the module docstring for the format).

    Args:
        path: A ``.csv``, ``.txt`` or ``.tsv`` file.
        label_map: Extra ``group -> label`` entries on top of DEFAULT_LABEL_MAP.

    Returns:
        The annotations, in order of first appearance of each id.

    Raises:
        AnnotationError: Missing header columns or a bad row (the message names the
            file and line).
    """
    path = Path(path)
    rows = _rows(read_text(path), path)
    first = next(rows, None)
    if first is None:
        raise AnnotationError(
            f"{path}: empty table; expected the header {','.join(REQUIRED_COLUMNS)}"
        )
    columns = _columns(first, path)
    entries: dict[str, _Entry] = {}
    for line, fields in rows:
        _add_row(entries, line, fields, columns, path)
    drafts = [_draft(i, ident, entry) for i, (ident, entry) in enumerate(entries.items())]
    return build_annotation_set(
        drafts, path=path, format="table", label_map=merge_label_map(label_map)
    )


def _rows(text: str, path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for non-blank lines."""
    lines = text.splitlines()
    header = next((ln for ln in lines if ln.strip()), "")
    delimiter = _delimiter(header, path)
    if delimiter is not None:
        reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
        for fields in reader:
            if fields and "".join(fields).strip():
                yield reader.line_num, fields
        return
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line.split()


def _delimiter(header: str, path: Path) -> str | None:
    """ "," for CSV, a tab for tab-separated text, None for whitespace-separated text."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if "\t" in header:
        return "\t"
    if suffix not in (".txt", ".tsv") and "," in header:
        return ","
    return None


def _columns(header: tuple[int, list[str]], path: Path) -> dict[str, int]:
    line, fields = header
    names = [f.strip().lower() for f in fields]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise AnnotationError(
            f"{path}:{line}: header {fields!r} lacks column(s) {missing}; "
            f"expected {','.join(REQUIRED_COLUMNS)}[,type]"
        )
    columns = {name: names.index(name) for name in (*REQUIRED_COLUMNS, "type") if name in names}
    columns["_count"] = len(names)
    return columns


def _add_row(
    entries: dict[str, _Entry],
    line: int,
    fields: list[str],
    columns: dict[str, int],
    path: Path,
) -> None:
    where = f"{path}:{line}"
    if len(fields) != columns["_count"]:
        raise AnnotationError(
            f"{where}: expected {columns['_count']} fields as in the header, found "
            f"{len(fields)}: {fields!r}"
        )
    ident = fields[columns["annotation"]].strip()
    if not ident:
        raise AnnotationError(f"{where}: empty annotation id")
    label = fields[columns["label"]].strip()
    type_name = _type(fields[columns["type"]] if "type" in columns else "", where)
    point = (
        _number(fields[columns["x"]], "x", where),
        _number(fields[columns["y"]], "y", where),
    )
    entry = entries.get(ident)
    if entry is None:
        entry = entries[ident] = _Entry(line, label, type_name)
    elif entry.label != label or entry.type != type_name:
        raise AnnotationError(
            f"{where}: annotation {ident!r} has label/type {label!r}/{type_name!r} but its "
            f"first row (line {entry.line}) has {entry.label!r}/{entry.type!r}"
        )
    entry.points.append(point)


def _type(text: str, where: str) -> str | None:
    value = text.strip().lower()
    if not value:
        return None
    if value not in _TYPES:
        raise AnnotationError(f"{where}: type {text!r} is not 'polygon' or 'point'")
    return _TYPES[value]


def _number(text: str, axis: str, where: str) -> float:
    """Parse a coordinate; a decimal comma ("3,5") is accepted."""
    value = text.strip()
    if "," in value and "." not in value:
        value = value.replace(",", ".")
    try:
        number = float(value)
    except ValueError as exc:
        raise AnnotationError(f"{where}: {axis} value {text!r} is not a number") from exc
    if number != number or number in (float("inf"), float("-inf")):
        raise AnnotationError(f"{where}: {axis} value {text!r} is not a finite number")
    return number


def _draft(index: int, ident: str, entry: _Entry) -> AnnotationDraft:
    is_point = entry.type == "point" or (entry.type is None and len(entry.points) == 1)
    if is_point:
        source = points_source(entry.points)
        kind = "point" if len(entry.points) == 1 else "pointset"
    else:
        source, kind = polygon_source(entry.points), "polygon"
    return AnnotationDraft(index=index, source=source, kind=kind, group=entry.label, name=ident)


# --------------------------------------------------------------------------- writing


def write_table(
    annotations: Iterable[Annotation], path: str | PathLike[str], *, delimiter: str | None = None
) -> Path:
    """Write annotations (their ``source`` geometries) as a vertex table, atomically.

    Holes and multi-part polygons are split as for ASAP XML (``<name>#k`` parts, holes as
    ``<name> hole k`` in group ``_2``). Ids are the annotation names when unique and
    non-empty, otherwise ``<name>#<index>`` (``annotation_<index>`` for no name).
    Annotations without vertices are left out.

    Args:
        annotations: The annotations to write.
        path: Destination file.
        delimiter: Field separator; default "," for ``.csv`` and a tab otherwise.

    Returns:
        The destination path.
    """
    path = Path(path)
    if delimiter is None:
        delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    return atomic_write_text(path, table_text(annotations, delimiter=delimiter))


def table_text(annotations: Iterable[Annotation], *, delimiter: str = ",") -> str:
    """Return the table text for ``annotations`` (see :func:`write_table`)."""
    parts = [
        part
        for ann in annotations
        for part in flatten(ann.source, ann.kind, ann.name, ann.group or ann.label, ann.label)
    ]
    empty = [p.name for p in parts if not p.points]
    if empty:
        logger.warning("%d annotation(s) without vertices not written: %s", len(empty), empty)
    parts = [p for p in parts if p.points]
    ids = _unique_ids([p.name for p in parts])
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow([*REQUIRED_COLUMNS, "type"])
    for ident, part in zip(ids, parts, strict=True):
        type_name = "point" if part.kind in ("dot", "pointset") else "polygon"
        for x, y in part.points:
            writer.writerow([ident, part.group, repr(float(x)), repr(float(y)), type_name])
    return buffer.getvalue()


def _unique_ids(names: list[str]) -> list[str]:
    counts = Counter(names)
    taken = set(names)
    ids: list[str] = []
    for index, name in enumerate(names):
        if name and counts[name] == 1:
            ids.append(name)
            continue
        candidate = f"{name}#{index}" if name else f"annotation_{index}"
        while candidate in taken:
            candidate += "_"
        taken.add(candidate)
        ids.append(candidate)
    return ids
