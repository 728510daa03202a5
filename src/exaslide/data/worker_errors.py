"""Errors raised in DataLoader worker processes, shown as their own one-line message."""

from __future__ import annotations

import re


def unwrap_worker_error(exc: BaseException) -> BaseException:
    """A reader process's exception as the DataLoader re-raises it (``"Caught X in
    DataLoader worker process N. Original Traceback ..."``) back as ``X`` with its own
    one-line message (the traceback as a note); any other exception as it is."""
    text = str(exc)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return exc
    head = re.compile(rf"^(?:[\w.]+\.)?{re.escape(type(exc).__name__)}: ")
    lines = text.splitlines()
    starts = [(i, m.end()) for i, line in enumerate(lines) if (m := head.match(line))]
    if not starts:
        return exc
    first, skip = starts[-1]
    message = "\n".join(lines[first:])[skip:]
    try:
        clean = type(exc)(message)
    except Exception:  # an exception type that wants other arguments
        return exc
    clean.add_note("in reading process:\n" + text)
    return clean
