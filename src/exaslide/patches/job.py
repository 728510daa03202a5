"""The work of one extraction: sample a slide's patches (:func:`plan_slide`), cut its rows
into chunks (:func:`chunk_bounds`), read one chunk's patches into shards
(:func:`extract_chunk`). :mod:`exaslide.patches.run` makes them the ``extract`` stage of
the job engine, which runs them inline, on a Dask ``LocalCluster`` or on any scheduler.

Outputs in ``out/``: ``index/<slide_id>.parquet``, ``shards/<slide_id>-NNNNN.tar`` (when
materialised) and ``status/<slide_id>.json``, through the job engine
(:mod:`exaslide.jobs`). Shard ``k`` holds the kept patches of the slide's plan rows
``[k * shard_size, (k + 1) * shard_size)``, so the outputs are the same bytes whatever
the number of workers and the chunking: chunks write their shards (or, for a shard split
between two chunks, its parts) into the slide's partial folder, and the index, the shards
and last the status are moved into place when every chunk is done. Since sampling is
seeded and shards are deterministic, a killed and restarted run produces exactly the
files of an uninterrupted one.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np

from exaslide.jsonio import to_jsonable
from exaslide.masks.tissue import TissueParams
from exaslide.patches.spec import PatchError, PatchSpec, SamplingOptions
from exaslide.slides.base import Slide

logger = logging.getLogger(__name__)

#: Tasks per worker a slide is cut into when it is one of the last slides of a run (so
#: the workers finish together).
TASKS_PER_WORKER = 2
#: Fewest patches per task (a task opens the slide: a few milliseconds).
MIN_CHUNK_PATCHES = 256
#: Most patches per task (progress, and the work redone when a worker is lost).
MAX_CHUNK_PATCHES = 16_384


@dataclass(frozen=True)
class ExtractOptions:
    """Everything that decides a slide's extraction output (saved in its status file,
    except ``chunk_patches``, which does not change the output)."""

    spec: PatchSpec = field(default_factory=PatchSpec)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    materialize: str | None = None  #: "png", "jpeg" or None (index only)
    quality: int = 90  #: JPEG quality
    shard_size: int = 1000  #: plan rows per shard (fewer samples when blanks are dropped)
    reject_blank: bool = True  #: drop blank patches when pixels are read
    #: patches per extraction task; None: sized from the slide and the workers
    #: (:func:`chunk_bounds`). Not part of the fingerprint: outputs do not depend on it.
    chunk_patches: int | None = None
    region_size: int = 4096  #: side of a region block, in pixels of the level read
    region_labels: tuple[str, ...] | None = None  #: grid only inside these annotations
    backend: str | None = None
    label_map: dict[str, str] | None = None
    tissue: TissueParams = field(default_factory=TissueParams)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return json.loads(json.dumps(asdict(self)))

    def fingerprint(self) -> dict[str, Any]:
        """What a finished slide's status must match: every option that changes the
        output (all but ``chunk_patches``)."""
        options = to_jsonable(self)
        options.pop("chunk_patches")
        return options

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
        if self.shard_size < 1 or self.region_size < 1 or \
                (self.chunk_patches is not None and self.chunk_patches < 1):
            raise PatchError("shard_size, chunk_patches and region_size must be positive")


@dataclass
class SlidePlan:
    """The sampled patches of one slide (in index order)."""

    slide_id: str
    columns: dict[str, np.ndarray]
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


class _SamplingSlide(Slide):
    """A slide whose levels with an integer downsample are read from its stored tiles
    (tifffile: the same pixels as OpenSlide there, several times faster); other levels
    are read through the slide itself, so sampling gives exactly what it gave before."""

    def __init__(self, slide: Slide, tiles: Slide):
        super().__init__(slide.path)
        self.backend = slide.backend
        self._slide, self._tiles = slide, tiles
        self._mpp, self._objective_power = slide.mpp, slide.objective_power
        self._vendor, self._properties = slide.vendor, slide.properties

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._slide.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._slide.level_downsamples

    @property
    def associated_images(self):
        return self._slide.associated_images

    def _read_pixels(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        exact = float(self.level_downsamples[level]).is_integer()
        return (self._tiles if exact else self._slide)._read_pixels(level, x, y, width,
                                                                    height)

    def close(self) -> None:
        self._tiles.close()
        self._slide.close()


def open_for_sampling(path, backend: str | None = None) -> Slide:
    """The slide to sample patches on: ``open_slide(path, backend)``, reading its
    integer-downsample levels from the stored tiles when tifffile sees the same levels
    (what :class:`~exaslide.patches.reader.PatchReader` reads patches from)."""
    from exaslide.patches.reader import _tiled_source
    from exaslide.slides import open_slide

    slide = open_slide(path, backend=backend)
    try:
        tiles = _tiled_source(slide, path, backend)
    except BaseException:
        slide.close()
        raise
    if tiles is None or tiles is slide or tiles.mpp != slide.mpp:
        if tiles is not None and tiles is not slide:
            tiles.close()
        return slide
    return _SamplingSlide(slide, tiles)


def plan_slide(entry, options: ExtractOptions) -> SlidePlan:
    """Sample a slide's patches, in region order (a Dask task)."""
    from exaslide.annotations import read_annotations
    from exaslide.patches.sampling import sample_patches

    annotations = None
    if entry.annotation is not None:
        annotations = read_annotations(entry.annotation, label_map=options.label_map)
    region = None
    if options.region_labels:  # a slide without annotations has an empty region
        from shapely.geometry import Polygon

        region = annotations.union(*options.region_labels) if annotations is not None \
            else Polygon()
    with open_for_sampling(entry.path, options.backend) as slide:
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
    order = region_order(columns["x"], columns["y"], block)
    columns = {k: v[order] for k, v in columns.items()}
    return SlidePlan(entry.slide_id, columns, level, sampled.footprint, sampled.requested,
                     sampled.found)


def region_order(x: np.ndarray, y: np.ndarray, block: float) -> np.ndarray:
    """Patches ordered by region block (raster order of blocks), then by (y, x)."""
    return np.lexsort((x, y, (x // block).astype(np.int64), (y // block).astype(np.int64)))


def chunk_bounds(n: int, shard_size: int, workers: int = 1, slides_left: int = 1,
                 chunk_patches: int | None = None) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` cutting a slide's ``n`` plan rows into tasks.

    With ``chunk_patches``, ranges of that many rows. Otherwise one task per slide while
    there are many slides left (``slides_left``, counting this one, against
    :data:`TASKS_PER_WORKER` tasks per worker), more as the run nears its end, so the
    ``workers`` finish together; one task per slide with one worker; each task between
    :data:`MIN_CHUNK_PATCHES` and :data:`MAX_CHUNK_PATCHES` rows where the slide allows.
    A boundary moves to the nearest shard boundary when that is within an eighth of a
    task (so large tasks hold whole shards and no shard has to be joined). The outputs
    do not depend on the cut: it only decides how the work is shared.
    """
    if n <= 0:
        return []
    if chunk_patches:
        return [(a, min(a + chunk_patches, n)) for a in range(0, n, chunk_patches)]
    tasks = 1 if workers <= 1 else \
        math.ceil(TASKS_PER_WORKER * workers / max(1, slides_left))
    tasks = max(min(tasks, n // MIN_CHUNK_PATCHES), math.ceil(n / MAX_CHUNK_PATCHES), 1)
    size = n / tasks
    bounds = [0]
    for i in range(1, tasks):
        cut = round(i * size)
        snapped = round(cut / shard_size) * shard_size
        if abs(snapped - cut) <= size / 8:
            cut = snapped
        if bounds[-1] < cut < n:
            bounds.append(cut)
    bounds.append(n)
    return list(itertools.pairwise(bounds))


def _json_strings(values) -> list[str]:
    """``json.dumps(to_jsonable(v))`` of every value (fast for numbers and for columns
    of a few repeated strings)."""
    array = np.asarray(values)
    items = array.tolist()
    if array.dtype.kind == "b":
        return ["true" if v else "false" for v in items]
    if array.dtype.kind in "iu":
        return list(map(str, items))
    if array.dtype.kind == "f" and np.isfinite(array).all():
        return list(map(float.__repr__, items))
    if all(isinstance(v, str) for v in items):  # e.g. labels: a few distinct values
        memo = {v: json.dumps(v) for v in set(items)}
        return [memo[v] for v in items]
    return [json.dumps(to_jsonable(v)) for v in items]


def sample_metadata(slide_id: str, columns: dict[str, np.ndarray], keys: np.ndarray,
                    level: int, spec: PatchSpec) -> list[bytes]:
    """Each row's ``<key>.json``: ``json.dumps(meta, sort_keys=True)`` of its plan columns
    plus ``slide_id``, ``key``, ``size``, ``level`` and ``mpp`` (the same bytes, built
    from per-column strings rather than one ``json.dumps`` per row)."""
    constants = {"slide_id": slide_id, "size": spec.size, "level": level, "mpp": spec.mpp}
    varying = {k: v for k, v in columns.items() if k not in constants}
    varying["key"] = keys
    parts, strings = [], []
    for name in sorted({*constants, *varying}):
        if name in varying:
            parts.append(json.dumps(name).replace("%", "%%") + ": %s")
            strings.append(_json_strings(varying[name]))
        else:
            value = json.dumps(to_jsonable(constants[name]))
            parts.append(f"{json.dumps(name)}: {value}".replace("%", "%%"))
    template = "{" + ", ".join(parts) + "}"
    return [(template % row).encode() for row in zip(*strings, strict=True)]


def extract_chunk(entry, columns: dict[str, np.ndarray], level: int, start: int, total: int,
                  shard_dir: str, options: ExtractOptions) -> dict[str, Any]:
    """Read the patches of plan rows ``[start, start + len(columns["x"]))`` of a slide of
    ``total`` rows and write their shards or shard parts into ``shard_dir`` (a task).

    Returns ``start``, the rows kept (blank patches dropped), the files written (see
    :class:`~exaslide.patches.shards.RowShardWriter`), the blank count and tile decodes.
    """
    from exaslide.patches.reader import PatchReader, is_blank
    from exaslide.patches.shards import EXTENSIONS, RowShardWriter, encode, sample_members

    n = len(columns["x"])
    result = {"start": start, "keep": np.ones(n, bool), "files": [], "blank": 0,
              "decodes": 0}
    if options.materialize is None:
        return result
    keys = patch_keys(entry.slide_id, columns["x"], columns["y"])
    metadata = sample_metadata(entry.slide_id, columns, keys, level, options.spec)
    fmt, quality, extension = options.materialize, options.quality, \
        EXTENSIONS[options.materialize]
    reject = options.reject_blank
    keep = result["keep"] = np.zeros(n, bool)
    writer = RowShardWriter(shard_dir, entry.slide_id, options.shard_size, start,
                            start + n, total)
    try:
        with PatchReader(entry.path, options.spec, options.backend) as reader:
            for i, patch in enumerate(reader.iter_patches(columns["x"], columns["y"])):
                if reject and is_blank(patch):
                    continue
                writer.add(start + i, sample_members(keys[i], extension,
                                                     encode(patch, fmt, quality),
                                                     metadata[i]))
                keep[i] = True
            result["decodes"] = reader.tile_decodes
        result["files"] = writer.close()
    except BaseException:
        writer.abort()
        raise
    result["blank"] = int(n - keep.sum())
    return result


def manifest_fields(entry) -> dict[str, Any]:
    """The manifest values copied into the index (a change means redoing the slide)."""
    return {"split": entry.split, "centre": entry.extra.get("centre")}
