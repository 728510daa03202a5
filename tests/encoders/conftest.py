"""Encoder tests run on one CPU thread (the test machines are small and shared)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Every encoder test on one torch thread (``one_torch_thread``, tests/conftest.py)."""
