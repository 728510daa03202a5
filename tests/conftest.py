"""Shared fixtures: synthetic slides (the primary fixture) and the optional real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exaslide.synth import SynthSpec, write_synthetic_slide

SHARED = Path(os.environ.get("EXASLIDE_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real test files), or skip when this checkout does not have it."""
    if not SHARED.is_dir():
        pytest.skip(f"real test data not found at {SHARED} (set EXASLIDE_SHARED_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def synth_slide(tmp_path_factory):
    """A 3072 x 2304 synthetic slide (3 levels) with 3 tumours and its XML."""
    out = tmp_path_factory.mktemp("synth") / "slide.tif"
    return write_synthetic_slide(out, SynthSpec(width=3072, height=2304, tumours=3, seed=3,
                                                exclusion_rate=1.0))
