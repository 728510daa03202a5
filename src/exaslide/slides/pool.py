"""A bounded, per-process pool of open handles (slides, patch readers), least recently used
first out.

Opening a slide costs milliseconds (TIFF directories, OpenSlide's vendor parsing) and holds
file descriptors and caches, so a data loader that reads patches of thousands of slides in
random order keeps the most recently used ``max_open`` handles open and closes the rest.

Threads: the bookkeeping is locked, but a handle evicted by one thread is closed even if
another thread is still reading it; give each thread its own pool (a ``DataLoader``
worker is one thread) or make ``max_open`` cover every slide the threads read at once.

Fork safety: a pool remembers the process that created it. In a forked child (a
``DataLoader`` worker) it forgets the parent's handles without closing them (they belong
to the parent) and opens its own. Pickling a pool (spawned workers) carries only its
settings, never open handles.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import Any

from exaslide.lru import LRU

DEFAULT_MAX_OPEN = 32


class HandlePool:
    """At most ``max_open`` open handles, keyed by any hashable.

    ``get(key, opener)`` returns the open handle for ``key``, calling ``opener()`` to open
    it when it is not in the pool; the least recently used handle is closed (its
    ``close()`` method) when the pool is full. Counters: ``opened``, ``reused``,
    ``closed``.
    """

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN):
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.max_open = max_open
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._handles = LRU(self.max_open, on_evict=self._close)
        self._lock = threading.Lock()
        self.opened = self.reused = self.closed = 0

    def _close(self, handle: Any) -> None:
        _close(handle)
        self.closed += 1

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # a forked child: the handles are the parent's
            self._reset()

    def get(self, key: Hashable, opener: Callable[[], Any]) -> Any:
        """The open handle for ``key`` (opened with ``opener()`` if needed)."""
        self._check_process()
        handle = self._handles.get(key)
        if handle is not None:
            self.reused += 1
            return handle
        handle = opener()  # outside the lock: opening may be slow (remote files)
        with self._lock:
            if key in self._handles:  # another thread opened it meanwhile
                _close(handle)
                return self._handles.get(key)
            self._handles.put(key, handle)  # closes the least recently used beyond max
            self.opened += 1
        return handle

    def __len__(self) -> int:
        self._check_process()
        return len(self._handles)

    def stats(self) -> dict[str, int]:
        """Counters and the number of handles open now."""
        return {"open": len(self), "opened": self.opened, "reused": self.reused,
                "closed": self.closed, "max_open": self.max_open}

    def close(self) -> None:
        """Close every handle this process opened."""
        self._check_process()
        self._handles.clear()

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.max_open = state["max_open"]
        self._reset()

    def __enter__(self) -> HandlePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close(handle: Any) -> None:
    close = getattr(handle, "close", None)
    if close is not None:
        close()
