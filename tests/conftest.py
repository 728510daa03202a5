"""Shared fixtures: synthetic slides (the primary fixture) and the optional real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exaslide.manifest import read_manifest
from exaslide.patches import ExtractOptions, PatchSpec, SamplingOptions, run_extraction
from exaslide.synth import SynthSpec, make_cohort, write_synthetic_slide

# the object-store servers (moto S3, ...) and their fixtures: tests/object_stores.py
pytest_plugins = ["object_stores"]

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


@pytest.fixture(scope="session")
def extracted(tmp_path_factory):
    """``out/`` of ``exaslide extract --materialize png`` on two synthetic slides: 64 px
    grid patches, 60 per shard, so every slide has several shards."""
    root = tmp_path_factory.mktemp("data")
    manifest = make_cohort(root / "cohort", 2, tumour_fraction=1.0, seed=5,
                           base=SynthSpec(width=2048, height=1536, tumours=2))
    options = ExtractOptions(spec=PatchSpec(size=64), materialize="png", shard_size=60,
                             sampling=SamplingOptions(min_tissue=0.3))
    outcomes = run_extraction(read_manifest(manifest), root / "out", options,
                              scheduler="inline")
    assert all(o.status == "done" for o in outcomes)
    return root / "out"


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch CPU thread (the test machines are small and shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Cli:
    """``exaslide`` run as a separate process, the way a user runs it."""

    @staticmethod
    def run(*args, check_rc: int | None = None, timeout: float = 120):
        done = subprocess.run([sys.executable, "-m", "exaslide", *map(str, args)],
                              capture_output=True, text=True, timeout=timeout)
        if check_rc is not None:
            assert done.returncode == check_rc, done.stderr
        return done

    @staticmethod
    def one_line_error(done) -> str:
        """The one error line of a run that exited 2 without a traceback."""
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        return lines[0]


@pytest.fixture(scope="session")
def cli() -> Cli:
    """Run ``exaslide`` in a subprocess (:class:`Cli`)."""
    return Cli()
