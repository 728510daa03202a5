"""Planned tile caching (TileCache.expect/release) and recycled decode buffers."""

from __future__ import annotations

import numpy as np
import pytest

from exaslide.data.tile_decode import TileBuffers
from exaslide.slides.jpeg_tiles import DECODE_OFFSET
from exaslide.slides.tile_cache import TileCache


def _tile(value: int, nbytes: int = 1000) -> np.ndarray:
    return np.full(nbytes, value, dtype=np.uint8)


def test_spent_tiles_go_first_when_room_is_needed():
    dropped = []
    cache = TileCache(3000, on_drop=lambda a: dropped.append(int(a[0])))
    cache.expect({"a": 2, "b": 1, "c": 1})
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        cache.put(key, _tile(value))
    cache.release("b")  # b is spent; a (least recently used) still has a use to come
    assert cache.planned("a") == 2 and cache.planned("b") == 0
    cache.put("d", _tile(4))  # outside the plan: spent at once, but cached
    assert "b" not in cache and "a" in cache and dropped == [2]
    assert cache.stats()["spent"] == 1 and cache.evictions == 1
    cache.put("e", _tile(5))  # d (spent) goes before a, c (planned)
    assert "d" not in cache and {"a", "c", "e"} <= {k for k in "acde" if k in cache}
    cache.release("a", 2)
    cache.release("zzz")  # never declared: ignored
    assert cache.planned("a") == 0 and cache.stats()["planned"] == 1  # c


def test_without_keep_spent_a_spent_tile_is_dropped_at_once_and_reset_forgets_the_plan():
    dropped = []
    cache = TileCache(10_000, on_drop=lambda a: dropped.append(int(a[0])))
    cache.keep_spent = False
    cache.expect(["a", "a", "b"])
    cache.put("a", _tile(1))
    cache.put("b", _tile(2))
    cache.release("a")
    assert "a" in cache
    cache.release("a")
    assert "a" not in cache and dropped == [1]
    cache.keep_spent = True
    cache.expect({"c": 1}, reset=True)  # b's plan is gone: it counts as spent
    assert cache.planned("b") == 0 and cache.stats()["spent"] == 1
    cache.clear()
    assert dropped == [1, 2] and len(cache) == 0 and cache.planned("c") == 1


def test_the_byte_limit_holds_with_a_plan():
    cache = TileCache(5000)
    cache.expect({k: 3 for k in range(20)})
    for k in range(20):
        cache.put(k, _tile(k))
        assert cache.nbytes <= 5000
    assert cache.put(99, _tile(0, 6000)) is False and 99 not in cache


def test_buffers_are_recycled_and_placed_off_the_32_byte_boundary():
    buffers = TileBuffers(keep_bytes=8 << 20)
    first = buffers.take((64, 64, 3))
    assert first.flags.writeable and first.shape == (64, 64, 3)
    assert first.ctypes.data % 32 == DECODE_OFFSET
    address = first.ctypes.data
    buffers.give(first[:10, :20])  # a crop of it (as an edge tile is) gives it back
    again = buffers.take((64, 64, 3))
    assert again.ctypes.data == address
    buffers.give(np.zeros((64, 64, 3), np.uint8))  # not ours: ignored
    others = [buffers.take((64, 64, 3)) for _ in range(3)]
    assert len({b.ctypes.data for b in [again, *others]}) == 4
    arena = buffers.allocated
    for b in others:
        buffers.give(b)
    assert [buffers.take((64, 64, 3)).ctypes.data for _ in range(3)] and \
        buffers.allocated == arena


def test_free_buffers_are_bounded():
    buffers = TileBuffers(keep_bytes=2 * 12288)
    taken = [buffers.take((64, 64, 3)) for _ in range(600)]  # more than one arena
    buffers.clear()
    for b in taken:
        buffers.give(b)
    assert buffers.free_bytes <= 2 * 12288


@pytest.mark.parametrize("bad", [-1, True])
def test_bad_cache_sizes_are_refused(bad):
    with pytest.raises(ValueError):
        TileCache(bad)


def test_batch_memory_is_reused_only_once_nobody_holds_it():
    from exaslide.data.batch_memory import BatchMemory

    memory = BatchMemory()
    pixels, ints, slot = memory.take(4, 32)
    assert pixels.shape == (4, 32, 32, 3) and ints.shape == (5, 4) and slot is None
    first = pixels.data_ptr()
    view = pixels.permute(0, 3, 1, 2)[1:]  # the consumer keeps a view: not reusable
    del pixels, ints
    held, _, _ = memory.take(4, 32)
    second = held.data_ptr()
    assert second != first and memory.fresh == 2
    del view, held
    again, _, _ = memory.take(4, 32)
    assert again.data_ptr() in (first, second) and memory.fresh == 2
