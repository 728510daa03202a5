"""The cohort manifest: the one input format of every batch command.

A CSV file with a header and at least the columns ``slide_id,path,annotation,label,split``:

- ``slide_id``: unique name of the slide (used for output file names, so it must obey
  :func:`exaslide.naming.check_slide_id`: at most 200 bytes, no ``/``, ``\\``, control
  characters, leading ``.`` or surrounding spaces).
- ``path``: the slide file, absolute or relative to the manifest's folder, or a URL
  (``https://``, ``s3://``... see ``docs/storage.md``).
- ``annotation``: its annotation file (same rules), or empty when it has none.
- ``label``: slide-level label (e.g. ``tumour`` / ``normal``; free text).
- ``split``: e.g. ``train`` / ``val`` / ``test`` (free text, may be empty).

Extra columns are kept, in order, in :attr:`ManifestEntry.extra`. The file must be UTF-8
(with or without a byte-order mark); no cell may hold a NUL, nor a required column a line
break. The whole
file is checked before it is used, and the first problem is reported with its line and
column.

The manifest itself may be a URL (fetched through the disk cache); its relative paths are
then resolved against the URL's folder, and remote entries stay URL strings.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exaslide.atomic import write_text
from exaslide.errors import ManifestError, StorageError
from exaslide.naming import check_slide_id, shown_id, slide_id_problem

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
            return _decode(local_copy(url).read_bytes(), url), url, url
        except OSError as exc:
            message = str(exc) if isinstance(exc, StorageError) else \
                f"{url}: cannot read manifest: {exc}"
            raise ManifestError(message) from exc
    local = Path(to_local(path))
    try:
        with open(local, "rb") as fh:
            _check_not_binary(fh.read(8), str(local))
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"{local}: {size:,} bytes is too large for a manifest "
                                    f"(at most {MAX_MANIFEST_BYTES:,}); is it a slide?")
            fh.seek(0)
            data = fh.read()
    except OSError as exc:
        raise ManifestError(f"{local}: cannot read manifest: {exc.strerror or exc}") from exc
    return _decode(data, str(local)), local.parent, str(local)


#: The largest manifest read (a million-slide manifest is ~100 MB): a slide given where a
#: manifest goes is refused before it is read into memory.
MAX_MANIFEST_BYTES = 256 << 20
#: Leading bytes of files that are slides or archives, not CSV text.
BINARY_MAGIC = {b"II*\x00": "a TIFF (slide) file", b"MM\x00*": "a TIFF (slide) file",
                b"II+\x00": "a BigTIFF (slide) file", b"MM\x00+": "a BigTIFF (slide) file",
                b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image",
                b"PK\x03\x04": "a zip archive"}


def _check_not_binary(head: bytes, name: str) -> None:
    for magic, what in BINARY_MAGIC.items():
        if head.startswith(magic):
            raise ManifestError(f"{name}: this is {what}, not a manifest: give a CSV with "
                                "columns slide_id,path,annotation,label,split listing the "
                                "slides (docs/formats.md)")


def _decode(data: bytes, name: str) -> str:
    """UTF-8 text (a leading byte-order mark is dropped). Anything else is refused rather
    than guessed: a mis-decoded slide path would point at another file."""
    _check_not_binary(data[:8], name)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ManifestError(
            f"{name}: line {line}, byte {column} (offset {exc.start}): not UTF-8 text "
            f"(byte 0x{data[exc.start]:02x}); save the manifest as UTF-8 (e.g. 'CSV UTF-8' "
            "in a spreadsheet)") from exc


def _rows(text: str, name: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line, fields)`` of every non-blank CSV record, header included (a quoted
    field may span lines, so records and lines are counted apart)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    line = 1
    try:
        for fields in reader:
            if fields:
                yield line, fields
            line = reader.line_num + 1
    except csv.Error as exc:
        raise ManifestError(f"{name}: line {line}: not valid CSV ({exc}); check the quotes "
                            "of that line") from exc


def _field_problem(column: str, value: str) -> str | None:
    """Why a cell cannot be used (the slide id rule for ``slide_id``), or ``None``."""
    if column == "slide_id":
        return slide_id_problem(value)
    if column == "path" and not value:
        return "must not be empty (the slide file)"
    if "\0" in value:
        return "must not contain a NUL character"
    if column in REQUIRED_COLUMNS and ("\n" in value or "\r" in value):
        return "must not contain a line break (check the quotes of that row)"
    return None


def _record(fields: list[str], columns: list[str], where: str) -> dict[str, str]:
    """A data row as ``{column: value}`` (values stripped of surrounding whitespace,
    except that a ``slide_id`` keeps it so that its rule sees it); every cell checked."""
    if len(fields) > len(columns) and any(f.strip() for f in fields[len(columns):]):
        raise ManifestError(f"{where}, column {len(columns) + 1}: {len(fields)} fields but "
                            f"the header has {len(columns)}; quote values that hold a comma")
    row = {}
    for number, column in enumerate(columns, start=1):
        value = fields[number - 1] if number <= len(fields) else ""
        value = value if column == "slide_id" else value.strip()
        problem = _field_problem(column, value)
        if problem is not None:
            shown = shown_id(value) if value else "(empty)"
            raise ManifestError(f"{where}, column {number} ({column}): {shown} {problem}")
        row[column] = value
    return row


def read_manifest(path: str | os.PathLike) -> list[ManifestEntry]:
    """Read and validate a manifest CSV (a local path or a URL), all of it before any
    slide is touched.

    The file must be UTF-8 (a byte-order mark is allowed). Every ``slide_id`` must be
    unique and able to name files (:func:`exaslide.naming.check_slide_id`: not empty, at
    most 200 bytes, no ``/``, ``\\``, control characters, leading ``.`` or surrounding
    spaces); ``path`` must not be empty; no cell may hold a NUL, and only extra (free
    text) columns may hold a line break.

    Raises:
        ManifestError: the first problem, naming the file, the line, the column and the
            rule (e.g. ``m.csv: line 3, column 1 (slide_id): '..' must not start
            with '.'``).
    """
    text, base, name = _read_text(path)
    rows = _rows(text, name)
    columns = [c.strip() for c in next(rows, (1, []))[1]]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(f"{name}: missing column(s) {', '.join(missing)}; a manifest needs "
                            f"{','.join(REQUIRED_COLUMNS)}")
    entries, seen = [], {}
    for line, fields in rows:
        where = f"{name}: line {line}"
        row = _record(fields, columns, where)
        slide_id = row["slide_id"]
        if slide_id in seen:
            raise ManifestError(f"{where}, column {columns.index('slide_id') + 1} (slide_id): "
                                f"duplicate slide_id {shown_id(slide_id)} (first on line "
                                f"{seen[slide_id]}); slide ids must be unique")
        seen[slide_id] = line
        entries.append(ManifestEntry(
            slide_id=slide_id,
            path=_resolve(row["path"], base),
            annotation=_resolve(row["annotation"], base) if row["annotation"] else None,
            label=row["label"],
            split=row["split"],
            extra={k: v for k, v in row.items() if k not in REQUIRED_COLUMNS},
        ))
    return entries


def write_manifest(path: str | os.PathLike, rows: list[dict[str, object]]) -> Path:
    """Write manifest rows (dicts with at least the required columns), atomically.

    Raises:
        SlideIdError: a ``slide_id`` that :func:`exaslide.naming.check_slide_id` refuses.
    """
    for row in rows:
        check_slide_id(str(row.get("slide_id") or ""))
    extra = [k for r in rows for k in r if k not in REQUIRED_COLUMNS]
    columns = list(REQUIRED_COLUMNS) + list(dict.fromkeys(extra))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return write_text(path, buffer.getvalue())
