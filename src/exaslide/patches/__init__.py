"""Patch sampling, the patch index, the extraction engine and cohort extraction.

- :mod:`~exaslide.patches.sampling`: grid and random-per-class samplers, label rules.
- :mod:`~exaslide.patches.balance`: balanced training sets across a cohort.
- :mod:`~exaslide.patches.reader`: read patches decoding each stored tile once.
- :mod:`~exaslide.patches.shards`: WebDataset-compatible tar shards.
- :mod:`~exaslide.patches.index`: the Parquet patch index.
- :mod:`~exaslide.patches.run`: the Dask-parallel, resumable cohort driver.
"""

from exaslide.patches.balance import balanced_sample
from exaslide.patches.index import open_index, schema
from exaslide.patches.job import ExtractOptions
from exaslide.patches.reader import PatchReader, is_blank
from exaslide.patches.run import SlideOutcome, run_extraction
from exaslide.patches.sampling import SampledPatches, sample_patches
from exaslide.patches.spec import PatchError, PatchSpec, SamplingOptions

__all__ = [
    "ExtractOptions",
    "PatchError",
    "PatchReader",
    "PatchSpec",
    "SampledPatches",
    "SamplingOptions",
    "SlideOutcome",
    "balanced_sample",
    "is_blank",
    "open_index",
    "run_extraction",
    "sample_patches",
    "schema",
]
