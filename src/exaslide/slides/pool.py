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

import logging
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


class PoolClosedError(RuntimeError):
    """A :class:`SharedHandlePool` was asked for a handle after :meth:`close_all`."""


class SharedHandlePool:
    """At most ``max_open`` open handles shared by threads: ``with pool.use(key)`` lends
    the handle of ``key`` (``opener(key)`` opens it once, however many threads ask at
    the same time) and no handle is closed while lent. The least recently used idle one
    is closed (``close(handle)``) first; beyond ``max_open`` only while all are lent.
    After :meth:`close_all`, lent handles are closed when they come back and new
    requests are refused.

    Args:
        ids: every key the pool may be asked for.
        opener: opens the handle of one key.
        close: closes a handle (an exception it raises is logged, not raised).
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
        self._closed = False
        self.opens = 0  # how many times a handle was opened (tests, statistics)
        self.closes = 0

    def adopt(self, slide_id: str, handle: Any) -> bool:
        """Keep an already open ``handle`` if there is room; False (caller closes it)
        when the pool is full or closed."""
        with self._lock:
            if self._closed or slide_id in self._open or len(self._open) >= self.max_open:
                return False
            self._open[slide_id] = _Entry(handle)
            self.opens += 1
            return True

    @contextmanager
    def use(self, slide_id: str) -> Iterator[Any]:
        """The open handle of ``slide_id`` for the ``with`` block (not closed meanwhile).

        Raises:
            KeyError: a key the pool was not given.
            PoolClosedError: the pool was closed.
            Whatever ``opener`` raises.
        """
        entry = self._acquire(slide_id)
        try:
            yield entry.handle
        finally:
            with self._lock:
                entry.users -= 1
                gone = self._evictable()
                if self._closed and entry.users == 0 and \
                        self._open.get(slide_id) is entry:
                    del self._open[slide_id]
                    gone.append(entry.handle)
            self._close_all_of(gone)

    def _acquire(self, slide_id: str) -> _Entry:
        with self._opening[slide_id]:
            with self._lock:
                if self._closed:
                    raise PoolClosedError("the slide pool is closed")
                entry = self._open.get(slide_id)
                if entry is not None:
                    entry.users += 1
                    self._open.move_to_end(slide_id)
                    return entry
            handle = self._opener(slide_id)  # outside the pool's lock: opens in parallel
            with self._lock:
                self.opens += 1
                if self._closed:  # closed while this one was opening
                    closed = True
                else:
                    closed = False
                    entry = _Entry(handle)
                    entry.users = 1
                    self._open[slide_id] = entry
                    gone = self._evictable()
            if closed:
                self._close_all_of([handle])
                raise PoolClosedError("the slide pool is closed")
            self._close_all_of(gone)
            return entry

    def _evictable(self) -> list[Any]:
        """Take idle handles out, least recently used first, down to ``max_open``; the
        caller closes them outside the lock (call with the lock held)."""
        gone = []
        for slide_id in list(self._open):
            if len(self._open) <= self.max_open:
                break
            entry = self._open[slide_id]
            if entry.users == 0:
                del self._open[slide_id]
                gone.append(entry.handle)
        return gone

    def _close_all_of(self, handles: list[Any]) -> None:
        for handle in handles:
            try:
                self._close(handle)
            except Exception:  # a handle that fails to close is gone all the same
                logging.getLogger(__name__).warning("closing %r failed", handle,
                                                    exc_info=True)
            with self._lock:
                self.closes += 1

    @property
    def open_count(self) -> int:
        """How many handles are open now."""
        with self._lock:
            return len(self._open)

    def close_all(self) -> None:
        """Close every idle handle now and each lent one when it comes back; refuse new
        requests."""
        with self._lock:
            self._closed = True
            idle = [key for key, entry in self._open.items() if entry.users == 0]
            gone = [self._open.pop(key).handle for key in idle]
        self._close_all_of(gone)
