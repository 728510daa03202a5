"""The cohort manifest: the one input format of every batch command.

A CSV file with a header and at least the columns ``slide_id,path,annotation,label,split``:

- ``slide_id``: unique name of the slide (used for output file names).
- ``path``: the slide file, absolute or relative to the manifest's folder.
- ``annotation``: its annotation file (same rules), or empty when it has none.
- ``label``: slide-level label (e.g. ``tumour`` / ``normal``; free text).
- ``split``: e.g. ``train`` / ``val`` / ``test`` (free text, may be empty).

Extra columns are kept, in order, in :attr:`ManifestEntry.extra`.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from exaslide.atomic import write_text
from exaslide.errors import ManifestError

REQUIRED_COLUMNS = ("slide_id", "path", "annotation", "label", "split")


@dataclass(frozen=True)
class ManifestEntry:
    """One slide of a cohort, with paths resolved against the manifest's folder."""

    slide_id: str
    path: Path
    annotation: Path | None
    label: str
    split: str
    extra: dict[str, str] = field(default_factory=dict)


def _resolve(value: str, base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def read_manifest(path: str | os.PathLike) -> list[ManifestEntry]:
    """Read and validate a manifest CSV.

    Raises:
        ManifestError: missing file or columns, empty ``slide_id`` or ``path``, or a
            duplicate ``slide_id``; the message gives the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc.strerror or exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; a manifest needs "
                            f"{','.join(REQUIRED_COLUMNS)}")
    entries, seen = [], {}
    for line, row in enumerate(reader, start=2):
        slide_id, slide_path = (row.get("slide_id") or "").strip(), (row.get("path") or "").strip()
        if not slide_id or not slide_path:
            raise ManifestError(f"{path}:{line}: slide_id and path must not be empty")
        if "/" in slide_id or "\\" in slide_id or slide_id.startswith("."):
            raise ManifestError(f"{path}:{line}: slide_id {slide_id!r} must not contain a path "
                                "separator or start with '.' (it names output files)")
        if slide_id in seen:
            raise ManifestError(f"{path}:{line}: duplicate slide_id {slide_id!r} "
                                f"(first on line {seen[slide_id]})")
        seen[slide_id] = line
        annotation = (row.get("annotation") or "").strip()
        extra = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS and k is not None}
        entries.append(ManifestEntry(
            slide_id=slide_id,
            path=_resolve(slide_path, path.parent),
            annotation=_resolve(annotation, path.parent) if annotation else None,
            label=(row.get("label") or "").strip(),
            split=(row.get("split") or "").strip(),
            extra=extra,
        ))
    return entries


def write_manifest(path: str | os.PathLike, rows: list[dict[str, object]]) -> Path:
    """Write manifest rows (dicts with at least the required columns), atomically."""
    extra = [k for r in rows for k in r if k not in REQUIRED_COLUMNS]
    columns = list(REQUIRED_COLUMNS) + list(dict.fromkeys(extra))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return write_text(path, buffer.getvalue())
