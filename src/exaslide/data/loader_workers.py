"""DataLoader worker processes: their errors shown as their own one-line message, and
their shutdown now rather than whenever the garbage collector meets the loader."""

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


def shutdown_workers(loader_or_iterator) -> None:
    """Stop the worker processes of a ``DataLoader`` (those of its current iterator, a
    persistent one too) or of a ``DataLoader`` iterator, now; nothing for a loader
    without workers or not iterated yet.

    PyTorch has no public call for this: the processes end when the iterator is
    collected, but an exception's traceback keeps it alive, a process forked meanwhile
    (the next slide's readers, a Dask task) inherits them, and the shutdown the garbage
    collector runs later in such a child fails. So this calls the iterator's private
    ``_shutdown_workers()`` (skipped where an iterator has none).
    """
    iterator = getattr(loader_or_iterator, "_iterator", loader_or_iterator)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
