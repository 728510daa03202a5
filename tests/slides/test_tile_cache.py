"""TileCache: LRU order, byte limit, counters, threads; its use by slide handles."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from exaslide.slides import open_slide
from exaslide.slides.tile_cache import DEFAULT_TILE_CACHE_BYTES, TileCache


def _tile(value: int, nbytes: int = 1000) -> np.ndarray:
    return np.full(nbytes, value, dtype=np.uint8)


def test_lru_order_byte_limit_and_counters():
    cache = TileCache(3000)
    for key in "abc":
        cache.put(key, _tile(ord(key)))
    assert cache.nbytes == 3000 and len(cache) == 3
    assert cache.get("a")[0] == ord("a")  # "a" is now the most recently used
    cache.put("d", _tile(4))  # evicts "b", the least recently used
    assert "b" not in cache and "a" in cache and "c" in cache and "d" in cache
    assert cache.get("b") is None
    assert (cache.hits, cache.misses, cache.evictions) == (1, 1, 1)
    cache.put("huge", _tile(0, 5000))  # larger than the cache: not cached, nothing evicted
    assert "huge" not in cache and len(cache) == 3
    cache.put("c", _tile(9, 500))  # replacing an entry updates the byte count
    assert cache.nbytes == 2500
    stats = cache.stats()
    assert stats["hit_rate"] == 0.5 and stats["entries"] == 3 and stats["max_bytes"] == 3000
    loads = []
    value = cache.get_or_load("e", lambda: loads.append(1) or _tile(5))
    assert cache.get_or_load("e", lambda: loads.append(1) or _tile(6)) is value
    assert loads == [1] and not value.flags.writeable
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and cache.hits == 2
    with pytest.raises(ValueError):
        TileCache(-1)


def test_threads_keep_the_cache_consistent():
    cache = TileCache(50_000)
    errors = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(2000):
                key = int(rng.integers(0, 200))
                tile = cache.get_or_load(key, lambda k=key: _tile(k % 256))
                assert tile[0] == key % 256
        except AssertionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cache.nbytes == sum(cache._lru.peek(k).nbytes for k in cache._lru) <= 50_000
    assert cache.hits + cache.misses == 8000 and cache.evictions > 0


def test_local_slide_reads_hit_the_tile_cache(synth_slide):
    with open_slide(synth_slide.path, backend="tifffile") as slide:
        assert slide.tile_cache.max_bytes == DEFAULT_TILE_CACHE_BYTES
        first = slide.read_region((1000, 700), (300, 300))
        misses = slide.tile_cache.misses
        assert misses >= 4
        np.testing.assert_array_equal(slide.read_region((1000, 700), (300, 300)), first)
        assert slide.tile_cache.misses == misses and slide.tile_cache.hits >= 4
        tile = slide.read_tile(0, 4, 3)  # served from the cache, read-only
        assert not tile.flags.writeable and slide.tile_cache.misses == misses


def test_handles_can_share_one_cache_or_have_none(synth_slide):
    shared = TileCache(16 << 20)
    with open_slide(synth_slide.path, backend="tifffile", tile_cache=shared) as a, \
            open_slide(synth_slide.path, backend="tifffile", tile_cache=shared) as b:
        pa = a.read_region((512, 512), (256, 256))
        hits = shared.hits
        np.testing.assert_array_equal(b.read_region((512, 512), (256, 256)), pa)
        assert shared.hits > hits  # b reused a's decoded tiles
    with open_slide(synth_slide.path, backend="tifffile", tile_cache=None) as none, \
            open_slide(synth_slide.path, backend="tifffile", tile_cache=1 << 20) as small:
        assert none.tile_cache is None and small.tile_cache.max_bytes == 1 << 20
        np.testing.assert_array_equal(none.read_region((512, 512), (256, 256)), pa)
    with open_slide(synth_slide.path, backend="openslide", tile_cache=shared) as osr:
        assert osr.tile_cache is None and osr.openslide_cache_bytes == 16 << 20
        np.testing.assert_array_equal(osr.read_region((512, 512), (256, 256)), pa)
    with pytest.raises(TypeError, match="tile_cache"):
        open_slide(synth_slide.path, tile_cache="big")
