"""Per-slide status files: ``OUT/status/<slide_id>.json``, the same format for every stage.

A status file holds::

    {"stage": "mask", "slide_id": "...", "status": "done" | "failed" | "committing",
     "options": {...}, "inputs": {...}, "outputs": {"name": size, ...},
     "result": {...}, "error": "...", "seconds": 1.2, "exaslide_version": "..."}

It is written atomically and last: ``done`` means every output listed is complete.
``committing`` is written just before the outputs are moved into place, so a run killed
in between still knows which files to delete when it redoes the slide.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from exaslide.jsonio import to_jsonable

logger = logging.getLogger(__name__)

STATUS_DIR = "status"


def status_path(out: Path, slide_id: str) -> Path:
    """Where a slide's status file lives."""
    return Path(out) / STATUS_DIR / f"{slide_id}.json"


def read_status(out: Path, slide_id: str) -> dict[str, Any] | None:
    """The slide's status, or None when there is none (or it is unreadable)."""
    try:
        status = json.loads(status_path(out, slide_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def write_status(out: Path, slide_id: str, status: dict[str, Any]) -> None:
    """Write a slide's status atomically."""
    from exaslide.jsonio import write_json

    write_json(status_path(out, slide_id), status)


def file_fingerprint(path) -> dict[str, Any] | None:
    """Resolved path, size and modification time (ns) of a local file; size, ETag and
    last-modified time of a URL (no data is read). None for ``None``.

    Raises:
        OSError: a local file is missing (``StorageError`` for a URL).
    """
    from exaslide.storage import is_remote, remote_fingerprint, to_local

    if path is None:
        return None
    if is_remote(path):  # the URL as recorded: no presigned or SAS signature
        from exaslide.storage.errors import redact_url

        return dict(remote_fingerprint(str(path)), path=redact_url(str(path)))
    path = to_local(path)  # file:// URLs
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}


def input_fingerprint(slide_path, annotation_path) -> dict[str, Any]:
    """The fingerprints of a slide and its annotation file (see :func:`file_fingerprint`),
    so that a rerun notices a changed or replaced input."""
    return {"slide": file_fingerprint(slide_path),
            "annotation": file_fingerprint(annotation_path)}


def is_complete(out: Path, status: dict[str, Any] | None, expected: dict[str, Any]) -> bool:
    """True when ``status`` says done, matches ``expected`` (stage, options, inputs) and
    every output it lists exists with its recorded size."""
    if not status or status.get("status") != "done":
        return False
    if any(status.get(key) != value for key, value in to_jsonable(expected).items()):
        return False
    outputs = status.get("outputs")
    if not isinstance(outputs, dict):
        return False
    for name, size in outputs.items():
        try:
            if (Path(out) / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True
