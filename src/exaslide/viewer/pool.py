"""A bounded pool of open slides: a cohort of a thousand slides must not hold a thousand
open files (the usual limit is 1,024 per process) or their OpenSlide caches.

At most ``max_open`` slides stay open; the least recently used one that no request is
reading is closed first, and reopened when asked for again. Two requests for a slide that
is not open open it once; requests for different slides open them in parallel (a remote
slide's first open can take a while).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_MAX_OPEN = 64


class _Entry:
    __slots__ = ("handle", "users")

    def __init__(self, handle: Any):
        self.handle = handle
        self.users = 0


class SlidePool:
    """Open slides by id through ``opener(id)``; ``close(handle)`` closes one.

    Args:
        ids: every id the pool may be asked for.
        opener: opens one slide; returns the handle :meth:`use` yields.
        close: closes a handle.
        max_open: most handles kept open at once (more only while all are in use).
    """

    def __init__(self, ids: Iterable[str], opener: Callable[[str], Any],
                 close: Callable[[Any], None], max_open: int = DEFAULT_MAX_OPEN):
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.max_open = max_open
        self._opener = opener
        self._close = close
        self._open: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._opening = {slide_id: threading.Lock() for slide_id in ids}
        self.opens = 0  # how many times a slide was opened (tests, statistics)

    def adopt(self, slide_id: str, handle: Any) -> bool:
        """Keep an already open ``handle`` if there is room; False (caller closes it)
        when the pool is full."""
        with self._lock:
            if slide_id in self._open or len(self._open) >= self.max_open:
                return False
            self._open[slide_id] = _Entry(handle)
            return True

    @contextmanager
    def use(self, slide_id: str) -> Iterator[Any]:
        """The open handle of ``slide_id`` for the ``with`` block (not closed meanwhile).

        Raises:
            KeyError: an id the pool was not given.
            Whatever ``opener`` raises.
        """
        entry = self._acquire(slide_id)
        try:
            yield entry.handle
        finally:
            with self._lock:
                entry.users -= 1
                self._evict()

    def _acquire(self, slide_id: str) -> _Entry:
        with self._opening[slide_id]:
            with self._lock:
                entry = self._open.get(slide_id)
                if entry is not None:
                    entry.users += 1
                    self._open.move_to_end(slide_id)
                    return entry
            handle = self._opener(slide_id)  # outside the pool's lock: opens in parallel
            with self._lock:
                self.opens += 1
                entry = _Entry(handle)
                entry.users = 1
                self._open[slide_id] = entry
                self._evict()
                return entry

    def _evict(self) -> None:
        """Close idle handles, least recently used first, down to ``max_open``."""
        if len(self._open) <= self.max_open:
            return
        for slide_id in list(self._open):
            if len(self._open) <= self.max_open:
                break
            entry = self._open[slide_id]
            if entry.users == 0:
                del self._open[slide_id]
                self._close(entry.handle)

    @property
    def open_count(self) -> int:
        """How many slides are open now."""
        with self._lock:
            return len(self._open)

    def close_all(self) -> None:
        """Close every open handle."""
        with self._lock:
            entries = list(self._open.values())
            self._open.clear()
        for entry in entries:
            self._close(entry.handle)
