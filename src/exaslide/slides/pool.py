"""A bounded, per-process pool of open handles (slides, patch readers), least recently used
first out.

Opening a slide costs milliseconds (TIFF directories, OpenSlide's vendor parsing) and holds
file descriptors and caches, so a data loader that reads patches of thousands of slides in
random order keeps the most recently used ``max_open`` handles open and closes the rest.

Threads: :class:`HandlePool`'s bookkeeping is locked, but a handle evicted by one thread
is closed even if another thread is still reading it; give each thread its own pool (a
``DataLoader`` worker is one thread). :class:`SharedHandlePool` is for many threads
reading the same handles (the viewer's request threads): it lends a handle for a ``with``
block and never closes one that is lent.

Fork safety: a pool remembers the process that created it. In a forked child (a
``DataLoader`` worker) it forgets the parent's handles without closing them (they belong
to the parent) and opens its own. Pickling a pool (spawned workers) carries only its
settings, never open handles.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from exaslide.lru import LRU

DEFAULT_MAX_OPEN = 32
DEFAULT_SHARED_MAX_OPEN = 64


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


class _Entry:
    __slots__ = ("handle", "users")

    def __init__(self, handle: Any):
        self.handle = handle
        self.users = 0


class SharedHandlePool:
    """At most ``max_open`` open handles shared by threads: ``with pool.use(key)`` lends
    the handle of ``key`` (``opener(key)`` opens it once, however many threads ask at
    the same time) and no handle is closed while lent. The least recently used idle one
    is closed (``close(handle)``) first; beyond ``max_open`` only while all are lent.

    Args:
        ids: every key the pool may be asked for.
        opener: opens the handle of one key.
        close: closes a handle.
        max_open: most handles kept open at once (more only while all are in use).
    """

    def __init__(self, ids: Iterable[str], opener: Callable[[str], Any],
                 close: Callable[[Any], None], max_open: int = DEFAULT_SHARED_MAX_OPEN):
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
            KeyError: a key the pool was not given.
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
