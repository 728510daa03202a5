"""File helpers shared by the readers and writers (internal)."""

from __future__ import annotations

from pathlib import Path

from exaslide.atomic import write_text
from exaslide.errors import AnnotationError


def read_text(path: Path) -> str:
    """Read a UTF-8 text file (a BOM is ignored), raising AnnotationError on failure."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise AnnotationError(f"annotation file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"cannot read annotation file {path}: {exc}") from exc


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically with :func:`exaslide.atomic.write_text`.

    The text goes to a temporary file in the same folder, which is moved over ``path``
    with ``os.replace``; on failure the temporary file is removed and an existing
    ``path`` is left untouched.

    Args:
        path: Destination file (missing parent folders are created).
        text: The content.

    Returns:
        The destination path.

    Raises:
        AnnotationError: The file could not be written.
    """
    try:
        return write_text(Path(path), text)
    except OSError as exc:
        raise AnnotationError(f"cannot write annotation file {path}: {exc}") from exc
