"""HandlePool: bounded, least recently used out, fork-safe, pickles without handles."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest

from exaslide.slides import open_slide
from exaslide.slides.pool import HandlePool


class Handle:
    def __init__(self, name):
        self.name, self.closed = name, False

    def close(self):
        self.closed = True


def test_keeps_the_most_recently_used_and_closes_the_rest():
    pool = HandlePool(max_open=2)
    a = pool.get("a", lambda: Handle("a"))
    b = pool.get("b", lambda: Handle("b"))
    assert pool.get("a", lambda: Handle("again")) is a  # reused, now most recent
    pool.get("c", lambda: Handle("c"))  # evicts b, the least recently used
    assert b.closed and not a.closed and len(pool) == 2
    assert pool.stats() == {"open": 2, "opened": 3, "reused": 1, "closed": 1, "max_open": 2}
    pool.close()
    assert a.closed and len(pool) == 0
    with pytest.raises(ValueError):
        HandlePool(0)


def _child_reads(pool, path, queue):
    inherited = len(pool)
    slide = pool.get("s", lambda: open_slide(path))
    queue.put((inherited, pool.opened, slide.read_region((0, 0), (8, 8), level=0)))


def test_a_forked_child_does_not_use_its_parents_handles(synth_slide):
    pool = HandlePool(max_open=4)
    slide = pool.get("s", lambda: open_slide(synth_slide.path))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_reads, args=(pool, synth_slide.path, queue))
    child.start()
    inherited, opened, pixels = queue.get(timeout=60)
    child.join(30)
    assert inherited == 0 and opened == 1  # the child opened its own handle
    np.testing.assert_array_equal(pixels, slide.read_region((0, 0), (8, 8), level=0))
    assert pool.opened == 1 and pool.get("s", lambda: None) is slide  # parent unaffected
    clone = pickle.loads(pickle.dumps(pool))
    assert len(clone) == 0 and clone.max_open == 4
    pool.close()
