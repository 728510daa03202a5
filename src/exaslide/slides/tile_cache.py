"""An in-process cache of decoded tiles: least recently used out first, bounded in bytes.

One :class:`TileCache` may be shared by many slide handles (and threads): keys carry the
file's identity (path or URL and version), the image directory and the segment index, so
two handles of the same file share entries and two files never collide.

>>> cache = TileCache(256 << 20)                          # doctest: +SKIP
>>> a = open_slide("a.svs", tile_cache=cache)             # doctest: +SKIP
>>> b = open_slide("b.svs", tile_cache=cache)             # doctest: +SKIP
>>> cache.stats()["hits"]                                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
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

    Attributes:
        hits, misses, evictions: counters since creation (or :meth:`reset_counters`).
        nbytes: bytes held now.
    """

    def __init__(self, max_bytes: int):
        if isinstance(max_bytes, bool) or int(max_bytes) < 0:
            raise ValueError(f"max_bytes must be a non-negative integer, got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self._lru = LRU(self.max_bytes, size_of=lambda array: array.nbytes)

    hits = property(lambda self: self._lru.hits, doc="Lookups that found their tile.")
    misses = property(lambda self: self._lru.misses, doc="Lookups that did not.")
    evictions = property(lambda self: self._lru.evictions, doc="Tiles pushed out.")
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

    def put(self, key: Hashable, array: np.ndarray) -> None:
        """Cache ``array`` under ``key`` (it is marked read-only), evicting the least
        recently used entries to stay within :attr:`max_bytes`. An array larger than the
        limit is not cached."""
        if array.nbytes <= self.max_bytes:
            array.flags.writeable = False
            self._lru.put(key, array)

    def get_or_load(self, key: Hashable, loader: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array, or ``loader()``'s result, cached. Two threads missing the same
        key at once may both load it (the second result replaces the first)."""
        array = self.get(key)
        if array is None:
            array = loader()
            self.put(key, array)
        return array

    def clear(self) -> None:
        """Drop every entry (the counters are kept)."""
        self._lru.clear()

    def reset_counters(self) -> None:
        """Set hits, misses and evictions to zero."""
        self._lru.reset_counters()

    def stats(self) -> dict[str, Any]:
        """``hits``, ``misses``, ``evictions``, ``hit_rate``, ``nbytes``, ``max_bytes`` and
        ``entries``."""
        lookups = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "hit_rate": self.hits / lookups if lookups else 0.0,
                "nbytes": self.nbytes, "max_bytes": self.max_bytes, "entries": len(self)}


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
