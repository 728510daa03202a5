"""An extraction output (index + PNG shards) of a small synthetic cohort, built once."""

from __future__ import annotations

import pytest

from exaslide.manifest import read_manifest
from exaslide.patches import ExtractOptions, PatchSpec, SamplingOptions, run_extraction
from exaslide.synth import SynthSpec, make_cohort


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
