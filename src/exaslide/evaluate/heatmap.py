"""The heatmap file format, re-exported from :mod:`exaslide.heatmaps` (its home, shared
with inference)."""

from exaslide.heatmaps import (
    JSON_SUFFIX,
    NPY_SUFFIX,
    REQUIRED_KEYS,
    Heatmap,
    heatmap_paths,
    read_heatmap,
    write_heatmap,
)

__all__ = ["JSON_SUFFIX", "NPY_SUFFIX", "REQUIRED_KEYS", "Heatmap", "heatmap_paths",
           "read_heatmap", "write_heatmap"]
