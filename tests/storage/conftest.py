"""Fixtures of the storage tests: a private disk cache, a Range-honouring HTTP server on
127.0.0.1 and a slide big enough for byte counts to mean something."""

from __future__ import annotations

import pytest

from exaslide.synth import SynthSpec, write_synthetic_slide
from http_server import RangeServer


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test gets its own empty disk cache (nothing touches ~/.cache)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("EXASLIDE_CACHE_DIR", str(folder))
    monkeypatch.delenv("EXASLIDE_CACHE_SIZE", raising=False)
    return folder


@pytest.fixture
def server(tmp_path):
    """A :class:`RangeServer` over ``tmp_path / "www"`` (empty; put files there)."""
    www = tmp_path / "www"
    www.mkdir()
    srv = RangeServer(www).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def big_slide(tmp_path_factory):
    """An 8192 x 8192 two-level slide at JPEG quality 100 (~44 MB, ~37 KB per tile, like
    a real scan's tissue tiles)."""
    path = tmp_path_factory.mktemp("big") / "big.tif"
    return write_synthetic_slide(path, SynthSpec(width=8192, height=8192, tumours=2, seed=1,
                                                 quality=100, top_level_max=2048))

