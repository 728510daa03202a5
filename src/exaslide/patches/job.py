"""The work of one extraction: sample a slide's patches and split them into chunks of
region blocks (:func:`plan_slide`), read one chunk's patches into shards
(:func:`extract_chunk`). :mod:`exaslide.patches.run` makes them the ``extract`` stage of
the job engine, which runs them inline, on a Dask ``LocalCluster`` or on any scheduler.

Outputs in ``out/``: ``index/<slide_id>.parquet``, ``shards/<slide_id>-CCCC-NNNNN.tar``
(when materialised) and ``status/<slide_id>.json``, through the job engine
(:mod:`exaslide.jobs`): chunks write their shards into the slide's partial folder, and
the index, the shards and last the status are moved into place when every chunk is done.
Since sampling is seeded and shards are deterministic, a killed and restarted run
produces exactly the files of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np

from exaslide.jsonio import to_jsonable
from exaslide.masks.tissue import TissueParams
from exaslide.patches.spec import PatchError, PatchSpec, SamplingOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractOptions:
    """Everything that decides a slide's extraction output (saved in its status file)."""

    spec: PatchSpec = field(default_factory=PatchSpec)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    materialize: str | None = None  #: "png", "jpeg" or None (index only)
    quality: int = 90  #: JPEG quality
    shard_size: int = 1000  #: samples per shard
    reject_blank: bool = True  #: drop blank patches when pixels are read
    chunk_patches: int = 4096  #: patches per extraction task (at least one region block)
    region_size: int = 4096  #: side of a region block, in pixels of the level read
    region_labels: tuple[str, ...] | None = None  #: grid only inside these annotations
    backend: str | None = None
    label_map: dict[str, str] | None = None
    tissue: TissueParams = field(default_factory=TissueParams)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return json.loads(json.dumps(asdict(self)))

    def validate(self) -> None:
        """Raise :class:`PatchError` for impossible values."""
        self.spec.validate()
        self.sampling.validate()
        if self.materialize not in (None, "png", "jpeg"):
            raise PatchError(f"materialize must be png, jpeg or None, not {self.materialize!r}")
        if not 1 <= self.quality <= 100:
            raise PatchError(f"JPEG quality must be 1-100, got {self.quality}")
        if self.region_labels and self.sampling.sampler != "grid":
            raise PatchError("a region (--region) applies to the grid sampler only")
        if self.shard_size < 1 or self.chunk_patches < 1 or self.region_size < 1:
            raise PatchError("shard_size, chunk_patches and region_size must be positive")


@dataclass
class SlidePlan:
    """The sampled patches of one slide, split into extraction chunks (in index order)."""

    slide_id: str
    columns: dict[str, np.ndarray]
    chunks: list[np.ndarray]
    level: int
    footprint: float
    requested: dict[str, int]
    found: dict[str, int]


def patch_keys(slide_id: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """WebDataset keys ``<slide_id>_x<x>_y<y>``. The slide id is percent-encoded (``.``
    as ``%2E``: WebDataset splits names at the first dot), which is reversible, so two
    slides never share a key."""
    base = quote(slide_id, safe="-_~").replace(".", "%2E")
    return np.array([f"{base}_x{a}_y{b}" for a, b in zip(x, y, strict=True)], dtype=object)


def plan_slide(entry, options: ExtractOptions) -> SlidePlan:
    """Sample a slide's patches and split them into region chunks (a Dask task)."""
    from exaslide.annotations import read_annotations
    from exaslide.patches.sampling import sample_patches
    from exaslide.slides import open_slide

    annotations = None
    if entry.annotation is not None:
        annotations = read_annotations(entry.annotation, label_map=options.label_map)
    region = None
    if options.region_labels:  # a slide without annotations has an empty region
        from shapely.geometry import Polygon

        region = annotations.union(*options.region_labels) if annotations is not None \
            else Polygon()
    with open_slide(entry.path, backend=options.backend) as slide:
        sampled = sample_patches(slide, annotations, options.spec, options.sampling,
                                 key=entry.slide_id, tissue=options.tissue, region=region)
        level = options.spec.level if options.spec.mpp is None else \
            slide.best_level(mpp=options.spec.mpp)
        block = options.region_size * slide.level_downsamples[level]
    _, unique = np.unique(np.stack([sampled.y, sampled.x]), axis=1, return_index=True)
    keep = np.sort(unique)  # random sampling may hit one position twice
    columns = {"x": sampled.x[keep], "y": sampled.y[keep], "label": sampled.label[keep],
               "tissue_fraction": sampled.tissue_fraction[keep],
               "tumour_fraction": sampled.tumour_fraction[keep]}
    order = _region_order(columns["x"], columns["y"], block)
    columns = {k: v[order] for k, v in columns.items()}
    return SlidePlan(entry.slide_id, columns, _chunks(columns["x"], columns["y"], block,
                                                      options.chunk_patches),
                     level, sampled.footprint, sampled.requested, sampled.found)


def _region_order(x: np.ndarray, y: np.ndarray, block: float) -> np.ndarray:
    """Patches ordered by region block (raster order of blocks), then by (y, x)."""
    return np.lexsort((x, y, (x // block).astype(np.int64), (y // block).astype(np.int64)))


def _chunks(x: np.ndarray, y: np.ndarray, block: float, target: int) -> list[np.ndarray]:
    """Consecutive whole region blocks, at least ``target`` patches per chunk."""
    if len(x) == 0:
        return []
    block_id = (y // block).astype(np.int64) * (1 << 32) + (x // block).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, block_id[1:] != block_id[:-1]])
    chunks, begin = [], 0
    for s in starts[1:]:
        if s - begin >= target:
            chunks.append(np.arange(begin, s))
            begin = s
    chunks.append(np.arange(begin, len(x)))
    return chunks


def extract_chunk(entry, plan_columns: dict[str, np.ndarray], level: int, chunk_no: int,
                  shard_dir: str, options: ExtractOptions) -> dict[str, Any]:
    """Read one chunk's patches and write its shards (a Dask task).

    Returns the rows kept (blank patches dropped) and each row's shard name.
    """
    from exaslide.patches.reader import PatchReader, is_blank
    from exaslide.patches.shards import ShardWriter

    keys = patch_keys(entry.slide_id, plan_columns["x"], plan_columns["y"])
    n = len(keys)
    if options.materialize is None:
        return {"keep": np.ones(n, bool), "shard": [None] * n, "blank": 0, "decodes": 0}
    writer = ShardWriter(shard_dir, f"{entry.slide_id}-{chunk_no:04d}", options.materialize,
                         options.quality, options.shard_size)
    keep, shards = np.zeros(n, bool), [None] * n
    try:
        with PatchReader(entry.path, options.spec, options.backend) as reader:
            xs, ys = plan_columns["x"], plan_columns["y"]
            for i, patch in enumerate(reader.iter_patches(xs, ys)):
                if options.reject_blank and is_blank(patch):
                    continue
                meta = {k: to_jsonable(v[i]) for k, v in plan_columns.items()}
                meta.update(slide_id=entry.slide_id, key=keys[i], size=options.spec.size,
                            level=level, mpp=options.spec.mpp)
                shards[i] = writer.add(keys[i], patch, meta)
                keep[i] = True
            decodes = reader.tile_decodes
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return {"keep": keep, "shard": shards, "blank": int(n - keep.sum()), "decodes": decodes}


def manifest_fields(entry) -> dict[str, Any]:
    """The manifest values copied into the index (a change means redoing the slide)."""
    return {"split": entry.split, "centre": entry.extra.get("centre")}
