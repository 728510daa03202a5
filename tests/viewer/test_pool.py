"""The viewer keeps at most ``max_open`` slides open: a cohort larger than the pool is
served correctly, concurrently, with reopened slides, and a slide being read is never
closed under a request."""

from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from exaslide.slides.pool import PoolClosedError, SharedHandlePool
from exaslide.viewer import serve_in_thread

SLIDES = 5


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from exaslide.synth import SynthSpec, write_synthetic_slide

    folder = tmp_path_factory.mktemp("pool")
    return [write_synthetic_slide(folder / f"s{i}.tif",
                                  SynthSpec(width=900, height=700, tumours=0, seed=i)).path
            for i in range(SLIDES)]


def _tile_urls(base: str) -> list[str]:
    # a 900 x 700 slide has 11 Deep Zoom levels; level 9 is 450 x 350: 2 x 2 tiles of 254
    return [f"{base}slides/s{i}_files/9/{c}_{r}.jpeg"
            for i in range(SLIDES) for c in range(2) for r in range(2)]


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200
        return response.read()


def test_more_slides_than_the_pool_are_served_right_and_concurrently(cohort):
    with serve_in_thread(cohort, cache_bytes=0) as wide:
        expected = {url.split("/slides/")[1]: _fetch(url) for url in _tile_urls(wide.url)}
    with serve_in_thread(cohort, cache_bytes=0, max_open=2) as narrow:
        pool = narrow.app.state.viewer.pool
        assert pool.open_count == 2  # the probe kept two of the five open
        urls = _tile_urls(narrow.url) * 3
        with ThreadPoolExecutor(8) as clients:
            got = list(clients.map(_fetch, urls))
        for url, data in zip(urls, got, strict=True):
            assert data == expected[url.split("/slides/")[1]], url
        assert pool.open_count <= 2
        assert pool.opens > SLIDES  # slides were closed and reopened
        assert pool.closes >= pool.opens - 2
        dzi = _fetch(f"{narrow.url}slides/s4.dzi")
        assert b'Width="900" Height="700"' in dzi
    assert pool.open_count == 0 and pool.closes == pool.opens  # stop() closed them all


def test_a_slide_in_use_is_not_closed_and_one_open_serves_concurrent_requests():
    opened, closed = [], []

    def opener(slide_id):
        time.sleep(0.2)  # a slow (remote) open: concurrent users must wait for this one
        opened.append(slide_id)
        return {"id": slide_id, "open": True}

    def close(handle):
        handle["open"] = False
        closed.append(handle["id"])

    pool = SharedHandlePool(["a", "b", "c"], opener, close, max_open=1)
    with pool.use("a") as a:
        with pool.use("b") as b:  # over the bound while both are in use
            assert a["open"] and b["open"] and pool.open_count == 2
        assert a["open"] and closed == ["b"]  # the idle one went, not the one in use
    assert pool.open_count == 1 and closed == ["b"]

    def read(_):
        with pool.use("c") as handle:
            assert handle["open"]
            time.sleep(0.05)
            return handle["id"]

    with ThreadPoolExecutor(4) as threads:
        assert list(threads.map(read, range(4))) == ["c"] * 4
    assert opened.count("c") == 1
    with pytest.raises(KeyError), pool.use("unknown"):
        pass
    with pytest.raises(ValueError, match="max_open"):
        SharedHandlePool([], opener, close, max_open=0)
    pool.close_all()
    assert pool.open_count == 0 and sorted(closed) == sorted(opened)


def test_closing_the_pool_waits_for_lent_handles_and_refuses_new_ones():
    """The viewer closes its pool when it stops, maybe while a tile is still being read:
    a lent handle must stay open until it comes back (OpenSlide aborts the process on a
    slide closed under a read)."""
    closed = []
    pool = SharedHandlePool(["a", "b"], lambda key: {"id": key}, closed.append, max_open=2)
    with pool.use("b"):
        pass
    with pool.use("a") as a:
        pool.close_all()
        assert [h["id"] for h in closed] == ["b"]  # the idle one at once, not the lent one
        assert a not in closed
        with pytest.raises(PoolClosedError), pool.use("b"):
            pass
    assert [h["id"] for h in closed] == ["b", "a"] and pool.open_count == 0


def test_a_handle_that_fails_to_close_does_not_pin_the_pool():
    def close(handle):
        raise OSError("close failed")

    pool = SharedHandlePool(["a", "b", "c"], lambda key: key, close, max_open=1)
    for key in "abc":
        with pool.use(key) as handle:
            assert handle == key
    assert pool.open_count == 1 and pool.closes == 2
