"""The cohort manifest: the one input format of every batch command.

A CSV file with a header and at least the columns ``slide_id,path,annotation,label,split``:

- ``slide_id``: unique name of the slide (used for output file names).
- ``path``: the slide file, absolute or relative to the manifest's folder, or a URL
  (``https://``, ``s3://``... see ``docs/storage.md``).
- ``annotation``: its annotation file (same rules), or empty when it has none.
- ``label``: slide-level label (e.g. ``tumour`` / ``normal``; free text).
- ``split``: e.g. ``train`` / ``val`` / ``test`` (free text, may be empty).

Extra columns are kept, in order, in :attr:`ManifestEntry.extra`.

The manifest itself may be a URL (fetched through the disk cache); its relative paths are
then resolved against the URL's folder, and remote entries stay URL strings.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from exaslide.atomic import write_text
from exaslide.errors import ManifestError, StorageError

REQUIRED_COLUMNS = ("slide_id", "path", "annotation", "label", "split")


@dataclass(frozen=True)
class ManifestEntry:
    """One slide of a cohort, with paths resolved against the manifest's folder (local
    files as :class:`Path`, remote ones as URL strings)."""

    slide_id: str
    path: Path | str
    annotation: Path | str | None
    label: str
    split: str
    extra: dict[str, str] = field(default_factory=dict)


def _resolve(value: str, base: Path | str) -> Path | str:
    """A manifest cell as a local :class:`Path` or a URL string; ``base`` is the local
    manifest's folder or the remote manifest's URL."""
    from exaslide.storage import is_remote, join_url, to_local

    if is_remote(value):
        return value
    if isinstance(base, str) and not value.startswith("file:"):
        return join_url(base, value)  # in a remote manifest: relative to its URL
    path = Path(os.path.expanduser(to_local(value)))
    return path if path.is_absolute() else base / path


def _read_text(path: str | os.PathLike) -> tuple[str, Path | str, str]:
    """``(text, base, display name)`` of a local or remote manifest (``base``: the folder
    of a local one, the URL of a remote one)."""
    from exaslide.storage import is_remote, local_copy, to_local

    if is_remote(path):
        url = str(path)
        try:
            local = local_copy(url)
            return local.read_text(encoding="utf-8-sig"), url, url
        except (OSError, UnicodeDecodeError) as exc:
            message = str(exc) if isinstance(exc, StorageError) else \
                f"{url}: cannot read manifest: {exc}"
            raise ManifestError(message) from exc
    local = Path(to_local(path))
    try:
        return local.read_text(encoding="utf-8-sig"), local.parent, str(local)
    except OSError as exc:
        raise ManifestError(f"{local}: cannot read manifest: {exc.strerror or exc}") from exc


def read_manifest(path: str | os.PathLike) -> list[ManifestEntry]:
    """Read and validate a manifest CSV (a local path or a URL).

    Raises:
        ManifestError: missing file or columns, empty ``slide_id`` or ``path``, or a
            duplicate ``slide_id``; the message gives the file and line.
    """
    text, base, path = _read_text(path)
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
            path=_resolve(slide_path, base),
            annotation=_resolve(annotation, base) if annotation else None,
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
