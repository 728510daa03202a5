"""An in-process cache of decoded tiles: least recently used out first, bounded in bytes.

One :class:`TileCache` may be shared by many slide handles (and threads): keys carry the
file's identity (path or URL and version), the image directory and the segment index, so
two handles of the same file share entries and two files never collide.

>>> cache = TileCache(256 << 20)                          # doctest: +SKIP
>>> a = open_slide("a.svs", tile_cache=cache)             # doctest: +SKIP
>>> b = open_slide("b.svs", tile_cache=cache)             # doctest: +SKIP
>>> cache.stats()["hits"]                                 # doctest: +SKIP

Planned use: a reader that knows which tiles it will need (a data loader knows its epoch's
order up front) declares them with :meth:`TileCache.expect` and reports each use with
:meth:`TileCache.release`. A tile whose declared uses are spent is evicted before any
other, so the byte limit is spent on tiles that will be read again; tiles never declared
keep the plain least-recently-used order. With ``keep_spent=False`` a spent tile is dropped
at once (its buffer can be reused): right when the plan's tiles do not all fit, since a
tile kept past its last planned use is then unlikely to survive until it is read again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import numpy as np

from exaslide.lru import LRU

#: Bytes of the private tile cache each slide handle gets by default.
DEFAULT_TILE_CACHE_BYTES = 64 << 20


class _Default:
    """The default of ``open_slide(tile_cache=...)``: a private cache of
    :data:`DEFAULT_TILE_CACHE_BYTES`."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()


class TileCache:
    """A thread-safe LRU cache of decoded tiles (numpy arrays, stored read-only).

    Args:
        max_bytes: the most bytes of arrays held; an array larger than this is not cached.
        on_drop: called with every array the cache lets go of (evicted, spent or cleared),
            e.g. to recycle its buffer; not called for arrays it declined or replaced.

    Attributes:
        hits, misses, evictions: counters since creation (or :meth:`reset_counters`);
            ``evictions`` counts tiles pushed out by the limit, spent tiles included.
        nbytes: bytes held now.
    """

    def __init__(self, max_bytes: int, *, on_drop: Callable[[np.ndarray], None] | None = None):
        if isinstance(max_bytes, bool) or int(max_bytes) < 0:
            raise ValueError(f"max_bytes must be a non-negative integer, got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self._on_drop = on_drop
        self._lru = LRU(self.max_bytes, size_of=lambda array: array.nbytes,
                        on_evict=self._dropped)
        self._uses: dict[Hashable, int] = {}  # planned key -> uses still to come
        self._spent: dict[Hashable, None] = {}  # cached keys with no use to come, oldest first
        self._plan_lock = threading.Lock()
        self.spent_evictions = 0
        #: Keep tiles whose planned uses are spent while there is room (else drop them).
        self.keep_spent = True

    hits = property(lambda self: self._lru.hits, doc="Lookups that found their tile.")
    misses = property(lambda self: self._lru.misses, doc="Lookups that did not.")
    evictions = property(lambda self: self._lru.evictions + self.spent_evictions,
                         doc="Tiles pushed out by the byte limit.")
    nbytes = property(lambda self: self._lru.size, doc="Bytes held now.")

    def __repr__(self) -> str:
        return (f"TileCache(max_bytes={self.max_bytes}, nbytes={self.nbytes}, "
                f"entries={len(self)})")

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: Hashable) -> bool:
        """True when ``key`` is cached (counts neither a hit nor a miss)."""
        return key in self._lru

    def get(self, key: Hashable) -> np.ndarray | None:
        """The cached array (now the most recently used), or ``None``."""
        return self._lru.get(key)

    def put(self, key: Hashable, array: np.ndarray) -> bool:
        """Cache ``array`` under ``key`` (it is marked read-only), evicting first the tiles
        whose planned uses are spent, then the least recently used ones, to stay within
        :attr:`max_bytes`. An array larger than the limit is not cached. Returns whether
        it was cached."""
        if array.nbytes > self.max_bytes:
            return False
        array.flags.writeable = False
        if self._spent:
            self._evict_spent(array.nbytes)
        self._lru.put(key, array)
        if key not in self._uses and self._uses:
            with self._plan_lock:  # cached outside the plan: nothing to come
                self._spent[key] = None
        return True

    def get_or_load(self, key: Hashable, loader: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array, or ``loader()``'s result, cached. Two threads missing the same
        key at once may both load it (the second result replaces the first)."""
        array = self.get(key)
        if array is None:
            array = loader()
            self.put(key, array)
        return array

    def expect(self, uses: Mapping[Hashable, int] | Iterable[Hashable], *,
               reset: bool = False) -> None:
        """Declare planned uses: a mapping ``key -> count``, or keys (one use each).

        With ``reset``, the previous plan is forgotten first (every cached tile counts as
        spent until declared again): call it at the start of each epoch."""
        if not isinstance(uses, Mapping):
            counts: dict[Hashable, int] = {}
            for key in uses:
                counts[key] = counts.get(key, 0) + 1
            uses = counts
        with self._plan_lock:
            if reset:
                self._uses.clear()
                self._spent = dict.fromkeys(self._lru)  # least recently used first
            for key, count in uses.items():
                if count > 0:
                    self._uses[key] = self._uses.get(key, 0) + int(count)
                    self._spent.pop(key, None)

    def release(self, key: Hashable, uses: int = 1) -> None:
        """``uses`` planned uses of ``key`` happened; when they were the last, the tile
        is spent (the first to go when room is needed, or dropped at once without
        :attr:`keep_spent`). Keys never declared are ignored."""
        if not self._uses:
            return
        with self._plan_lock:
            left = self._uses.get(key)
            if left is None:
                return
            if left > uses:
                self._uses[key] = left - uses
                return
            del self._uses[key]
            if key not in self._lru:
                return
            if self.keep_spent:
                self._spent[key] = None
                return
            array = self._lru.pop(key)
        self._dropped(array)

    def keeps(self, key: Hashable, uses: int) -> bool:
        """Whether a tile about to be read ``uses`` times is worth caching: always
        without a plan (or with :attr:`keep_spent`), else only when planned uses remain
        after these."""
        return not self._uses or self.keep_spent or self._uses.get(key, 0) > uses

    def planned_count(self) -> int:
        """Keys with planned uses still to come."""
        return len(self._uses)

    def planned(self, key: Hashable) -> int:
        """Planned uses of ``key`` still to come (0 when none or never declared)."""
        return self._uses.get(key, 0)

    def _evict_spent(self, incoming: int) -> None:
        """Drop spent tiles, oldest first, until ``incoming`` more bytes fit."""
        dropped = []
        with self._plan_lock:
            while self._spent and self._lru.size + incoming > self.max_bytes:
                key = next(iter(self._spent))
                del self._spent[key]
                array = self._lru.pop(key)
                if array is not None:
                    self.spent_evictions += 1
                    dropped.append(array)
        for array in dropped:
            self._dropped(array)

    def _dropped(self, array: np.ndarray) -> None:
        if self._on_drop is not None:
            self._on_drop(array)

    def clear(self) -> None:
        """Drop every entry (the counters and the planned uses are kept)."""
        with self._plan_lock:
            self._spent.clear()
        self._lru.clear()

    def reset_counters(self) -> None:
        """Set hits, misses and evictions to zero."""
        self._lru.reset_counters()
        self.spent_evictions = 0

    def stats(self) -> dict[str, Any]:
        """``hits``, ``misses``, ``evictions``, ``hit_rate``, ``nbytes``, ``max_bytes``,
        ``entries``, ``planned`` (keys with planned uses to come) and ``spent`` (cached
        tiles with none)."""
        lookups = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "hit_rate": self.hits / lookups if lookups else 0.0,
                "nbytes": self.nbytes, "max_bytes": self.max_bytes, "entries": len(self),
                "planned": len(self._uses), "spent": len(self._spent)}


def resolve_tile_cache(tile_cache: TileCache | int | _Default | None) -> TileCache | None:
    """The cache for ``open_slide(tile_cache=...)``: :data:`DEFAULT` -> a private cache of
    :data:`DEFAULT_TILE_CACHE_BYTES`; a :class:`TileCache` -> itself (shared); an int ->
    a private cache of that many bytes; ``None`` or ``0`` -> no cache."""
    if tile_cache is DEFAULT:
        return TileCache(DEFAULT_TILE_CACHE_BYTES)
    if tile_cache is None or isinstance(tile_cache, TileCache):
        return tile_cache
    if isinstance(tile_cache, int | np.integer) and not isinstance(tile_cache, bool):
        return TileCache(int(tile_cache)) if tile_cache > 0 else None
    raise TypeError(f"tile_cache must be a TileCache, a number of bytes or None, "
                    f"not {tile_cache!r}")
