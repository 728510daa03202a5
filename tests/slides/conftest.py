"""Slide tests never touch the user's disk cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXASLIDE_CACHE_DIR", str(tmp_path / "cache"))
