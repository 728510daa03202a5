"""The one LRU primitive: order, size limit, oversize values, eviction hook, threads."""

from __future__ import annotations

import threading

import pytest

from exaslide.lru import LRU


def test_least_recently_used_goes_first_within_the_size_limit():
    cache = LRU(10, size_of=len)
    assert cache.put("a", b"1234") and cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"1234")
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.size == 8 and cache.evictions == 1
    assert (cache.hits, cache.misses) == (1, 0)
    assert cache.get("b") is None and cache.misses == 1
    cache.put("a", b"1")  # replacing adjusts the size
    assert cache.size == 5 and cache.peek("a") == b"1"


def test_oversize_values_are_refused_or_kept_alone():
    assert not LRU(3, size_of=len).put("x", b"1234")
    keep = LRU(3, size_of=len, keep_newest=True)
    keep.put("x", b"12")
    assert keep.put("y", b"123456")
    assert list(keep) == ["y"] and keep.size == 6


def test_counts_entries_and_calls_the_eviction_hook():
    closed = []
    pool = LRU(2, on_evict=closed.append)
    for name in "abc":
        pool.put(name, name.upper())
    assert closed == ["A"] and len(pool) == 2
    assert pool.pop("b") == "B" and closed == ["A"]  # pop does not close
    pool.clear()
    assert closed == ["A", "C"] and len(pool) == 0 and pool.size == 0


def test_threads_keep_the_accounting_exact():
    cache = LRU(1000, size_of=len)

    def work(offset):
        for i in range(2000):
            cache.put((offset, i % 50), b"x" * (i % 7 + 1))
            cache.get((offset, (i * 3) % 50))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.size == sum(len(cache.peek(k)) for k in cache) <= 1000


def test_bad_limits_are_refused():
    for bad in (-1, True):
        with pytest.raises(ValueError, match="max_size"):
            LRU(bad)


def test_a_single_thread_cache_behaves_the_same_without_a_lock():
    cache = LRU(8, size_of=len, keep_newest=True, threadsafe=False)
    for key in "abc":
        cache.put(key, b"1234")
    assert list(cache) == ["b", "c"] and cache.pop("b") == b"1234" and cache.size == 4
