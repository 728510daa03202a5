"""CLAM and TRIDENT feature files: export a patch store to them, import them into one.

Both tools write one HDF5 file per slide, ``<slide_id>.h5``, holding

- ``features``: float32 ``(N, D)``, row ``i`` embeds patch ``i``;
- ``coords``: integer ``(N, 2)``, the level-0 top-left ``(x, y)`` of patch ``i``,

with attributes on ``coords`` describing the patches (CLAM's ``utils/file_utils.py``
``save_hdf5`` and TRIDENT's ``trident/IO.py`` ``save_h5`` write the same layout):

- TRIDENT (``coords_to_h5``, ``extract_patch_features``): ``patch_size`` (at the target
  magnification), ``patch_size_level0``, ``level0_magnification``,
  ``target_magnification``, ``overlap``, ``name``, ``savetodir``, ``level0_width``,
  ``level0_height``; ``features`` carries ``name`` and ``savetodir``.
- CLAM (``create_patches_fp.py``, ``WholeSlideImage.process_contour``): ``patch_size``
  (at ``patch_level``), ``patch_level``, ``downsample``, ``downsampled_level_dim``,
  ``level_dim``, ``name``, ``save_path``. CLAM's feature files
  (``extract_features_fp.py``) carry no attributes at all; the patch files do.

:func:`export_h5` writes a patch store as such files (the chosen tool's attributes from
the store's patch spec and the slide, plus ``exaslide_*`` file attributes the tools
ignore); :func:`import_h5` reads them into a store. Both are job-engine stages
(:mod:`exaslide.jobs`). See ``docs/retrieval.md``.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.errors import RetrievalError

FORMATS = ("trident", "clam")
EXPORT_STAGE = "features-export"
IMPORT_STAGE = "features-import"
#: Key of the Parquet schema metadata where an imported part keeps its patch geometry.
GEOMETRY_KEY = b"exaslide.geometry"
#: Largest magnitude a float16 store can hold.
FLOAT16_MAX = 65504.0
TRIDENT_KEYS = ("patch_size_level0", "level0_magnification", "target_magnification")
#: Bytes per HDF5 chunk of ``features`` (the tools use one row; bigger reads faster).
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Geometry:
    """Where a slide's patches lie in level-0 pixels, and what the tools record of the
    slide.

    Attributes:
        footprint: a patch's side in level-0 pixels (TRIDENT's ``patch_size_level0``).
        level: the pyramid level the patches are read at (CLAM's ``patch_level``).
        downsample: that level's downsample.
        magnification: the level-0 magnification (TRIDENT's ``level0_magnification``).
        size0: level-0 ``(width, height)``; level_size: ``(width, height)`` of ``level``.
    """

    footprint: float
    level: int = 0
    downsample: float = 1.0
    magnification: float | None = None
    size0: tuple[int, int] | None = None
    level_size: tuple[int, int] | None = None


@dataclass
class FeatureFile:
    """One CLAM/TRIDENT feature file: its arrays (None when read header-only), shape and
    attributes (as plain Python values)."""

    path: Path
    n: int
    dim: int
    features: np.ndarray | None = None
    coords: np.ndarray | None = None
    coords_attrs: dict[str, Any] = field(default_factory=dict)
    features_attrs: dict[str, Any] = field(default_factory=dict)
    file_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def format(self) -> str:
        """``"exaslide"`` (written by :func:`export_h5`), ``"trident"`` or ``"clam"``."""
        if "exaslide_patch" in self.file_attrs:
            return "exaslide"
        if any(k in self.coords_attrs for k in TRIDENT_KEYS):
            return "trident"
        return "clam"


# --------------------------------------------------------------------------- reading
def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (str, int, float, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value.item())
    return value.item() if isinstance(value, np.generic) else value


def _attrs(obj) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in obj.attrs.items()}


def read_feature_file(path: str | os.PathLike, *, header_only: bool = False) -> FeatureFile:
    """Read and check a CLAM/TRIDENT feature file.

    Args:
        header_only: read shapes and attributes only (no arrays, no value checks).

    Raises:
        RetrievalError: naming the file: missing, not HDF5, a corrupt copy (per an
            exaslide ``.sha256`` sidecar), no ``features`` or ``coords``, not ``(N, D)``
            and ``(N, 2)``, or (unless ``header_only``) non-finite features, values beyond
            float16, fractional or repeated coords (negative ones are allowed: a patch
            centred on one at the slide's edge starts outside it).
    """
    import h5py

    from exaslide.integrity import verify

    path = Path(path)
    if not path.is_file():
        raise RetrievalError(f"{path}: no such feature file")
    if not header_only:
        verify(path, RetrievalError, "export it again", warn_missing=False)
    try:
        with h5py.File(path, "r") as fh:
            features, coords = _datasets(path, fh)
            found = FeatureFile(path, int(features.shape[0]), int(features.shape[1]),
                                coords_attrs=_attrs(coords), features_attrs=_attrs(features),
                                file_attrs=_attrs(fh))
            if not header_only:
                found.features = np.asarray(features[()], dtype=np.float32)
                found.coords = _coords(path, coords[()])
    except OSError as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RetrievalError(f"{path}: not a readable HDF5 file ({first}); expected a CLAM "
                             "or TRIDENT feature file") from exc
    if not header_only:
        _check_values(found)
    return found


def _datasets(path: Path, fh) -> tuple[Any, Any]:
    """The ``features`` and ``coords`` datasets of an open file, shapes checked."""
    import h5py

    names = sorted(fh.keys())
    for name in ("features", "coords"):
        if not isinstance(fh.get(name), h5py.Dataset):
            raise RetrievalError(f"{path}: no {name!r} dataset (found: "
                                 f"{', '.join(names) or 'nothing'}); expected a CLAM or "
                                 "TRIDENT feature file")
    features, coords = fh["features"], fh["coords"]
    if features.ndim != 2 or features.shape[1] == 0 or features.dtype.kind not in "fiu":
        raise RetrievalError(f"{path}: 'features' is {features.dtype} of shape "
                             f"{features.shape}; expected numbers of shape (N, D)")
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.dtype.kind not in "fiu":
        raise RetrievalError(f"{path}: 'coords' is {coords.dtype} of shape {coords.shape}; "
                             "expected (N, 2) level-0 x, y")
    if coords.shape[0] != features.shape[0]:
        raise RetrievalError(f"{path}: {features.shape[0]} feature rows but "
                             f"{coords.shape[0]} coords; every patch needs both (a "
                             "truncated or mixed-up file)")
    return features, coords


def _coords(path: Path, coords: np.ndarray) -> np.ndarray:
    if coords.dtype.kind == "f" and \
            (not np.isfinite(coords).all() or (coords != np.round(coords)).any()):
        raise RetrievalError(f"{path}: 'coords' holds fractional or non-finite values; "
                             "expected integer level-0 pixels")
    return coords.astype(np.int64)


def _check_values(found: FeatureFile) -> None:
    path, features, coords = found.path, found.features, found.coords
    bad = ~np.isfinite(features)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise RetrievalError(f"{path}: {int(bad.sum())} feature values are NaN or infinite "
                             f"(first in row {row}); extract the features again")
    if features.size and float(np.abs(features).max()) > FLOAT16_MAX:
        raise RetrievalError(f"{path}: feature values reach {float(np.abs(features).max()):.4g}"
                             f", beyond float16 (the store's type, at most {FLOAT16_MAX:g});"
                             " scale the features down before importing")
    if len(np.unique(coords, axis=0)) != len(coords):
        raise RetrievalError(f"{path}: some (x, y) coords repeat; each patch must have its "
                             "own position")


# --------------------------------------------------------------------------- writing
def _attr(value: Any) -> Any:
    """A value as TRIDENT writes attributes: dicts as JSON, None as ``'None'``."""
    if isinstance(value, dict):
        return json.dumps(value)
    if value is None:
        return "None"
    if isinstance(value, tuple):
        return np.asarray(value)
    return value


def write_h5(path: str | os.PathLike, features: np.ndarray, coords: np.ndarray, *,
             coords_attrs: Mapping[str, Any], features_attrs: Mapping[str, Any] | None = None,
             file_attrs: Mapping[str, Any] | None = None) -> Path:
    """Write a feature file at ``path`` (not atomically: see :func:`write_feature_file`):
    ``features`` float32 ``(N, D)`` and ``coords`` int64 ``(N, 2)``, both resizable
    along N (``maxshape=(None, ...)``, as the tools write them, so their append mode
    works), with the given attributes."""
    import h5py

    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.int64)
    n, dim = features.shape
    rows = max(1, min(n, CHUNK_BYTES // (4 * dim)))
    with h5py.File(path, "w") as fh:
        for key, value in (file_attrs or {}).items():
            fh.attrs[key] = _attr(value)
        dataset = fh.create_dataset("features", data=features, maxshape=(None, dim),
                                    chunks=(rows, dim))
        for key, value in (features_attrs or {}).items():
            dataset.attrs[key] = _attr(value)
        dataset = fh.create_dataset("coords", data=coords.reshape(n, 2), maxshape=(None, 2),
                                    chunks=(max(1, min(n, 1 << 16)), 2))
        for key, value in coords_attrs.items():
            dataset.attrs[key] = _attr(value)
    return Path(path)


def write_feature_file(path: str | os.PathLike, features: np.ndarray, coords: np.ndarray, *,
                       coords_attrs: Mapping[str, Any],
                       features_attrs: Mapping[str, Any] | None = None,
                       file_attrs: Mapping[str, Any] | None = None,
                       checksum: bool = False) -> Path:
    """:func:`write_h5` atomically (a temporary beside ``path``, renamed when complete),
    with a ``<path>.sha256`` sidecar when ``checksum``."""
    from exaslide.atomic import atomic_path
    from exaslide.integrity import atomic_write

    with (atomic_write(path) if checksum else atomic_path(path)) as tmp:
        write_h5(tmp, features, coords, coords_attrs=coords_attrs,
                 features_attrs=features_attrs, file_attrs=file_attrs)
    return Path(path)


def magnification_from_mpp(mpp: float) -> int:
    """The objective magnification TRIDENT assigns to a level-0 resolution (its
    ``_fetch_magnification`` bins: < 0.16 um/px 80x, < 0.2 60x, < 0.3 40x, < 0.6 20x,
    < 1.2 10x, < 2.4 5x).

    Raises:
        RetrievalError: 2.4 um/px or coarser (TRIDENT refuses such slides too).
    """
    for limit, mag in ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5)):
        if mpp < limit:
            return mag
    raise RetrievalError(f"level 0 at {mpp} um/px is coarser than any magnification TRIDENT "
                         "knows (it stops at 5x, 2.4 um/px)")


def _number(value: float) -> int | float:
    """An integer when ``value`` is one (to 1e-6), else rounded to 4 decimals."""
    value = float(value)
    return round(value) if abs(value - round(value)) < 1e-6 else round(value, 4)


def coords_attributes(format: str, *, name: str, size: int, geometry: Geometry,
                      savetodir: str) -> dict[str, Any]:
    """The attributes CLAM or TRIDENT write on ``coords``, for patches of ``size``
    output pixels with ``geometry``.

    TRIDENT: ``target_magnification`` is ``level0_magnification * size / footprint``
    (an integer when it is one); ``overlap`` 0 (a store does not record the stride).
    CLAM: ``patch_size`` is the footprint at ``patch_level`` (CLAM reads that many pixels
    there and resizes to its ``--target_patch_size``).

    Raises:
        RetrievalError: TRIDENT without a level-0 magnification (the slide records
            neither its resolution nor its objective power).
    """
    if format == "trident":
        if geometry.magnification is None:
            raise RetrievalError(f"{name}: TRIDENT files need the level-0 magnification, "
                                 "and the slide records neither its um/px nor its "
                                 "objective power; export --format clam instead")
        attrs = {"patch_size": int(size), "patch_size_level0": round(float(geometry.footprint)),
                 "level0_magnification": _number(geometry.magnification),
                 "target_magnification": _number(geometry.magnification * size /
                                                 geometry.footprint),
                 "overlap": 0, "name": name, "savetodir": savetodir}
        if geometry.size0 is not None:
            attrs.update(level0_width=int(geometry.size0[0]),
                         level0_height=int(geometry.size0[1]))
        return attrs
    if format != "clam":
        raise RetrievalError(f"unknown feature-file format {format!r}; one of {FORMATS}")
    attrs = {"patch_size": round(float(geometry.footprint / geometry.downsample)),
             "patch_level": int(geometry.level),
             "downsample": (float(geometry.downsample), float(geometry.downsample))}
    if geometry.level_size is not None:
        attrs.update(downsampled_level_dim=tuple(int(v) for v in geometry.level_size),
                     level_dim=tuple(int(v) for v in geometry.level_size))
    attrs.update(name=name, save_path=savetodir)
    return attrs


# --------------------------------------------------------------------------- geometry
def slide_geometry(path, patch: Mapping[str, Any], level: int | None) -> Geometry:
    """The geometry of patches of spec ``patch`` (``size``, ``level``, ``mpp``) read at
    ``level`` (None: the slide's best level for the spec) on the slide at ``path``.

    Raises:
        RetrievalError: ``mpp`` patches on a slide without resolution; SlideError: the
            slide cannot be opened, or has no such level.
    """
    from exaslide.slides import open_slide

    size, mpp = int(patch["size"]), patch.get("mpp")
    with open_slide(path) as slide:
        if mpp is not None and slide.mpp is None:
            raise RetrievalError(f"{path}: the patches are {mpp} um/px but the slide records "
                                 "no resolution")
        if level is None:
            level = slide.best_level(mpp=float(mpp)) if mpp is not None else \
                int(patch.get("level") or 0)
        slide.check_level(int(level))
        downsample = float(slide.level_downsamples[int(level)])
        footprint = size * float(mpp) / slide.mpp[0] if mpp is not None else size * downsample
        magnification = magnification_from_mpp(slide.mpp[0]) if slide.mpp else \
            slide.objective_power
        return Geometry(footprint, int(level), downsample, magnification,
                        tuple(slide.dimensions), tuple(slide.level_dimensions[int(level)]))


def geometry_from_json(raw: str | bytes | None) -> Geometry | None:
    """A :class:`Geometry` from its JSON (``asdict``), or None when absent or unreadable."""
    if raw is None:
        return None
    try:
        g = json.loads(raw)
        return Geometry(float(g["footprint"]), int(g["level"]), float(g["downsample"]),
                        _float(g.get("magnification")), _pair(g.get("size0")),
                        _pair(g.get("level_size")))
    except (TypeError, ValueError, KeyError):
        return None


def _pair(value) -> tuple[int, int] | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        try:
            return int(value[0]), int(value[1])
        except (TypeError, ValueError):
            return None
    return None


def _float(value) -> float | None:
    try:
        number = float(value[0] if isinstance(value, list | tuple) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def file_geometry(found: FeatureFile, patch: Mapping[str, Any]) -> Geometry | None:
    """What a file's attributes say of its patches' geometry (None when they say too
    little: a CLAM feature file, which has no attributes, read above level 0)."""
    recorded = geometry_from_json(found.file_attrs.get("exaslide_geometry"))
    if recorded is not None:
        return recorded
    a = found.coords_attrs
    size0 = _pair([a.get("level0_width"), a.get("level0_height")])
    level = int(a["patch_level"]) if isinstance(a.get("patch_level"), int) else \
        (patch.get("level") if patch.get("mpp") is None else None)
    downsample = _float(a.get("downsample")) or (1.0 if level in (0, None) else None)
    footprint = _float(a.get("patch_size_level0"))
    magnification = _float(a.get("level0_magnification"))
    target = _float(a.get("target_magnification"))
    if footprint is None and magnification and target and _float(a.get("patch_size")):
        footprint = float(a["patch_size"]) * magnification / target
    if footprint is None and downsample is not None:
        at_level = _float(a.get("patch_size")) if "patch_level" in a else None
        footprint = (at_level or float(patch["size"])) * downsample
    if footprint is None or downsample is None:
        return None
    level_size = _pair(a.get("level_dim")) or (size0 if level in (0, None) else None)
    return Geometry(footprint, int(level or 0), downsample, magnification, size0, level_size)


def file_spec(found: FeatureFile, *, patch_size: int | None = None, level: int | None = None,
              mpp: float | None = None) -> tuple[dict[str, Any], int | None]:
    """``(patch spec, level of every row)`` of a file: options first, then the file's
    ``exaslide_patch`` attribute, then TRIDENT's (``target_magnification`` as
    ``10 / magnification`` um/px, the convention of TRIDENT's own bins), then CLAM's
    (``patch_size`` at ``patch_level``).

    Raises:
        RetrievalError: no patch size, or neither a level nor a resolution, is known.
    """
    a, spec, row_level, resample = found.coords_attrs, {}, None, False
    if found.format == "exaslide":
        try:
            spec = dict(json.loads(found.file_attrs["exaslide_patch"]))
        except (TypeError, ValueError) as exc:
            raise RetrievalError(f"{found.path}: unreadable exaslide_patch attribute") from exc
        row_level, resample = found.file_attrs.get("exaslide_level"), spec.get("resample")
    elif found.format == "trident" and _float(a.get("target_magnification")):
        spec = {"size": a.get("patch_size"), "level": None,
                "mpp": round(10.0 / float(a["target_magnification"]), 6)}
    elif "patch_level" in a:
        spec = {"size": a.get("patch_size"), "level": a.get("patch_level"), "mpp": None}
        row_level = a.get("patch_level")
    if patch_size is not None:
        spec["size"] = patch_size
    if isinstance(spec.get("size"), float) and spec["size"].is_integer():
        spec["size"] = int(spec["size"])
    if mpp is not None:
        spec.update(mpp=float(mpp), level=None)
    elif level is not None:
        spec.update(level=int(level), mpp=None)
        row_level = int(level)
    if not isinstance(spec.get("size"), int) or spec["size"] < 1 or \
            (spec.get("level") is None and spec.get("mpp") is None):
        raise RetrievalError(f"{found.path}: the file does not record its patch size and "
                             "level or resolution (CLAM's feature files carry none): pass "
                             "--patch-size and --level or --mpp")
    spec = {"size": int(spec["size"]),
            "level": None if spec.get("mpp") is not None else int(spec["level"]),
            "mpp": None if spec.get("mpp") is None else float(spec["mpp"])}
    if resample and patch_size is None and level is None and mpp is None:
        spec["resample"] = True  # read at an encoder's um/px, centred on an index
    row_level = spec["level"] if row_level is None else int(row_level)
    return spec, row_level


# --------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ExportOptions:
    """What decides an exported file (stored in each slide's status)."""

    format: str = "trident"  #: ``trident`` or ``clam``: whose attributes ``coords`` gets
    checksum: bool = False  #: write ``<slide_id>.h5.sha256`` beside each file
    store: str = ""  #: the store folder (resolved)


def _placement(info: dict, entry, table, level: int | None) -> tuple[Geometry, np.ndarray]:
    """``(geometry, coords)`` of a part: from the slide, or (an imported part without a
    slide path) from the geometry its file recorded.

    A store embedded at another size or resolution than its index (``embed --size``, an
    encoder's µm/px) read pixels centred on each indexed patch, as
    :class:`~exaslide.data.SlidePatchDataset` does: ``coords`` are the top-left of the
    pixels read (an imported part's rows already are)."""
    patch = info["patch"]
    imported = geometry_from_json((table.schema.metadata or {}).get(GEOMETRY_KEY))
    resample = bool(patch.get("resample"))
    if entry.path is not None:
        geometry = slide_geometry(entry.path, patch, None if resample else level)
    elif imported is not None:
        geometry = imported
    else:
        raise RetrievalError(f"{entry.slide_id}: no slide file known to compute the "
                             "patches' level-0 size and magnification; pass the slides' "
                             "paths (--manifest CSV)")
    x = table.column("x").to_numpy().astype(np.int64)
    y = table.column("y").to_numpy().astype(np.int64)
    if imported is None and len(x):
        size = int(patch["size"])
        sides = _index_sides(info, entry.slide_id, table) if resample else \
            table.column("size").fill_null(size).to_numpy().astype(np.float64) * \
            geometry.footprint / size
        shift = np.floor((sides - geometry.footprint) / 2 + 0.5).astype(np.int64)
        x, y = x + shift, y + shift
    return geometry, np.stack([x, y], axis=1).reshape(-1, 2)


def _index_sides(info: dict, slide_id: str, table) -> np.ndarray:
    """The level-0 side (``footprint``) of each row's indexed patch, from the index the
    store was embedded from.

    Raises:
        RetrievalError: the index cannot be read or lacks some of the part's patches.
    """
    import pyarrow.compute as pc

    from exaslide.data.sources import read_index_table
    from exaslide.errors import ExaslideError

    source = info.get("source")
    try:
        index = read_index_table(source, pc.field("slide_id") == slide_id)
        sides = dict(zip(index.column("key").to_pylist(),
                         index.column("footprint").to_pylist(), strict=True))
        return np.array([sides[k] for k in table.column("key").to_pylist()], np.float64)
    except (ExaslideError, OSError, KeyError, TypeError) as exc:
        raise RetrievalError(f"{slide_id}: the store was read at {info['patch'].get('mpp')} "
                             f"um/px centred on the patches of its index ({source}), which is "
                             "needed to place them and cannot be read or lacks some of them; "
                             "export from where the extraction is") from exc


def _row_level(table, slide_id: str) -> int | None:
    """The one level a part's patches are read at (None when not recorded)."""
    if "level" not in table.column_names:
        return None
    levels = {int(v) for v in table.column("level").to_pylist() if v is not None}
    if len(levels) > 1:
        raise RetrievalError(f"{slide_id}: patches at levels {sorted(levels)}; a feature file "
                             "holds patches of one level")
    return levels.pop() if levels else None


def _export_one(info: dict, entry, options: ExportOptions, ctx) -> dict[str, Any]:
    """The ``features-export`` stage: one part as ``<slide_id>.h5`` (and its sidecar)."""
    from exaslide import __version__
    from exaslide.integrity import file_digest
    from exaslide.retrieval.store import read_part

    slide_id, patch = entry.slide_id, info["patch"]
    table, vectors = read_part(options.store, slide_id)
    level = _row_level(table, slide_id)
    geometry, coords = _placement(info, entry, table, level)
    savetodir = str(Path(ctx.out).resolve())
    coords_attrs = coords_attributes(options.format, name=slide_id, size=int(patch["size"]),
                                     geometry=geometry, savetodir=savetodir)
    features_attrs = {"name": slide_id, "savetodir": savetodir} \
        if options.format == "trident" else {}
    file_attrs = {"exaslide_format": options.format, "exaslide_model": info.get("model"),
                  "exaslide_patch": json.dumps(patch),
                  "exaslide_geometry": json.dumps(asdict(geometry)),
                  "exaslide_version": __version__}
    if level is not None:
        file_attrs["exaslide_level"] = level
    with ctx.output(f"{slide_id}.h5") as tmp:
        write_h5(tmp, vectors, coords, coords_attrs=coords_attrs,
                 features_attrs=features_attrs, file_attrs=file_attrs)
        digest = file_digest(tmp) if options.checksum else None
    if digest is not None:
        with ctx.output(f"{slide_id}.h5.sha256") as tmp:
            Path(tmp).write_text(f"{digest}  {slide_id}.h5\n", encoding="utf-8")
    return {"patches": len(vectors), "dim": int(vectors.shape[1]), "format": options.format}


def _slide_paths(info: dict, names: Sequence[str], slides, manifest) -> dict[str, Any]:
    """Slide paths from ``slides``, the manifest, then the status files of the store's
    source (the extraction the patches were embedded from)."""
    from exaslide.data.sources import slide_paths_from_status

    paths: dict[str, Any] = {k: os.fspath(v) for k, v in (slides or {}).items()}
    if manifest is not None:
        from exaslide.manifest import read_manifest

        entries = manifest if isinstance(manifest, list) else read_manifest(manifest)
        for e in entries:
            paths.setdefault(e.slide_id, e.path)
    missing = [n for n in names if n not in paths]
    if missing and info.get("source"):
        source = Path(str(info["source"]))
        source = source.parent if source.name == "index" or source.suffix == ".parquet" \
            else source
        paths.update(slide_paths_from_status(source, missing))
    return paths


def export_h5(store: str | os.PathLike, out_dir: str | os.PathLike, *,
              format: str = "trident", slides: Mapping[str, Any] | None = None,
              manifest=None, checksum: bool = False, overwrite: bool = False,
              on_event: Callable[[str, Any], None] | None = None) -> list:
    """Write every part of the patch store ``store`` as ``out_dir/<slide_id>.h5`` in the
    CLAM or TRIDENT layout (see the module doc).

    The patches' level-0 size and the slide's magnification come from the slide file:
    its path from ``slides`` (``slide_id -> path``), ``manifest`` (a cohort CSV or its
    entries), or the status files of the extraction the store was embedded from; a part
    imported by :func:`import_h5` uses the geometry its file recorded.

    Args:
        format: ``"trident"`` or ``"clam"`` (whose ``coords`` attributes to write).
        checksum: also write ``<slide_id>.h5.sha256`` (``sha256sum`` format).
        overwrite: redo slides already exported.
        on_event: the job engine's events (``("slide", Outcome)`` after each slide).

    Returns:
        The engine's outcomes (a failed slide is recorded, the others go on; summary in
        ``out_dir/features-export_status.json``).

    Raises:
        RetrievalError: unknown format, not a patch store, or a store without parts.
        JobError: the output folder is locked or belongs to another stage.
    """
    import functools

    from exaslide.jobs import SlideEntry, Stage, run_stage
    from exaslide.retrieval.store import read_info

    if format not in FORMATS:
        raise RetrievalError(f"unknown feature-file format {format!r}; one of {FORMATS}")
    store = Path(store)
    info = read_info(store)
    if info.get("kind") != "patches" or not isinstance(info.get("patch"), dict) or \
            not info["patch"].get("size"):
        raise RetrievalError(f"{store}: holds {info.get('kind')} embeddings without a patch "
                             "spec; only patch stores (exaslide embed patches, features "
                             "import) map to CLAM/TRIDENT feature files")
    names = sorted(p.stem for p in (store / "parts").glob("[!.]*.parquet"))
    if not names:
        raise RetrievalError(f"{store}: the store holds no embeddings yet")
    paths = _slide_paths(info, names, slides, manifest)
    parts = store / "parts"

    def inputs(entry) -> list:
        files = [parts / f"{entry.slide_id}.npy", parts / f"{entry.slide_id}.parquet"]
        return files + ([entry.path] if entry.path is not None else [])

    stage = Stage(EXPORT_STAGE, ExportOptions(format, bool(checksum), str(store.resolve())),
                  process=functools.partial(_export_one, info), inputs=inputs)
    entries = [SlideEntry(name, paths.get(name)) for name in names]
    return run_stage(stage, entries, out_dir, scheduler="inline", overwrite=overwrite,
                     on_event=on_event)


# --------------------------------------------------------------------------- import
@dataclass(frozen=True)
class ImportOptions:
    """What decides an imported part (stored in each slide's status)."""

    model: str
    dim: int
    patch: dict[str, Any]  #: the store's patch spec: ``size``, ``level``, ``mpp``
    overrides: dict[str, Any]  #: ``patch_size``, ``level``, ``mpp`` given by the caller


@dataclass(frozen=True)
class H5Entry:
    """One feature file to import: its slide id, path and split (from a manifest)."""

    slide_id: str
    path: Path
    annotation: None = None
    split: str | None = None


def _import_entries(source: Path, manifest) -> list[H5Entry]:
    from exaslide.naming import slide_id_problem

    if manifest is not None:
        from exaslide.manifest import read_manifest

        if not source.is_dir():
            raise RetrievalError(f"{source}: with a manifest, give the folder of "
                                 "<slide_id>.h5 files")
        rows = manifest if isinstance(manifest, list) else read_manifest(manifest)
        return [H5Entry(e.slide_id, source / f"{e.slide_id}.h5", split=e.split or None)
                for e in rows]
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = sorted(p for p in source.glob("*.h5") if not p.name.startswith("."))
    else:
        raise RetrievalError(f"{source}: no such file or folder")
    if not files:
        raise RetrievalError(f"{source}: no .h5 feature files in the folder")
    for path in files:
        problem = slide_id_problem(path.stem)
        if problem is not None:
            raise RetrievalError(f"{path}: the file name's stem cannot be a slide id: it "
                                 f"{problem}; rename the file")
    return [H5Entry(p.stem, p) for p in files]


def _model_from(source: Path, headers: list[FeatureFile]) -> str:
    """The model named by the files (``exaslide_model``) or by TRIDENT's folder
    (``features_<encoder>``)."""
    names = Counter(str(f.file_attrs["exaslide_model"]) for f in headers
                    if f.file_attrs.get("exaslide_model") not in (None, "None", ""))
    if names:
        return names.most_common(1)[0][0]
    folder = source if source.is_dir() else source.parent
    if folder.name.startswith("features_") and len(folder.name) > len("features_"):
        return folder.name[len("features_"):]
    raise RetrievalError(f"{source}: the files do not say which model made them (TRIDENT "
                         "names its folder features_<encoder>; CLAM records nothing): pass "
                         "--model NAME")


def _plan_import(source: Path, entries: list[H5Entry], model: str | None,
                 overrides: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
    """``(model, dim, patch spec)`` of the store: the most common among the readable
    files (the others fail when imported, each with its own error)."""
    headers, specs, first_error = [], [], None
    for entry in entries:
        try:
            found = read_feature_file(entry.path, header_only=True)
            specs.append(json.dumps(file_spec(found, **overrides)[0], sort_keys=True))
            headers.append(found)
        except RetrievalError as exc:
            first_error = first_error or exc
    if not headers:
        raise RetrievalError(f"no usable feature file among {len(entries)}: {first_error}")
    dim = Counter(f.dim for f in headers).most_common(1)[0][0]
    patch = json.loads(Counter(specs).most_common(1)[0][0])
    return model or _model_from(source, headers), int(dim), patch


def _describe(spec: Mapping[str, Any]) -> str:
    where = f"{spec['mpp']} um/px" if spec.get("mpp") is not None else \
        f"level {spec.get('level')}"
    return f"{spec['size']} px at {where}"


def _import_one(entry: H5Entry, options: ImportOptions, ctx) -> dict[str, Any]:
    """The ``features-import`` stage: one file as the store part ``<slide_id>``."""
    import pyarrow as pa

    from exaslide.patches.job import patch_keys
    from exaslide.retrieval.embed import adopt_parts
    from exaslide.retrieval.store import write_part

    found = read_feature_file(entry.path)
    if found.dim != options.dim:
        raise RetrievalError(f"{entry.path}: {found.dim}-d features, but the store holds "
                             f"{options.dim}-d ones (another model?); import this file into "
                             "another store")
    spec, row_level = file_spec(found, **options.overrides)
    if spec != options.patch:
        raise RetrievalError(f"{entry.path}: patches of {_describe(spec)}, but the store "
                             f"holds {_describe(options.patch)}; import this file into "
                             "another store")
    n, x, y = found.n, found.coords[:, 0], found.coords[:, 1]
    table = pa.table({
        "key": pa.array(patch_keys(entry.slide_id, x, y), pa.string()),
        "slide_id": pa.array([entry.slide_id] * n, pa.string()),
        "x": pa.array(x, pa.int64()), "y": pa.array(y, pa.int64()),
        "level": pa.array([row_level] * n, pa.int16()),
        "size": pa.array([spec["size"]] * n, pa.int32()),
        "label": pa.nulls(n, pa.string()),
        "split": pa.array([entry.split] * n, pa.string()),
    })
    geometry = file_geometry(found, spec)
    if geometry is not None:
        table = table.replace_schema_metadata({GEOMETRY_KEY: json.dumps(asdict(geometry))})
    write_part(ctx.partial, entry.slide_id, table, found.features)
    adopt_parts(ctx)
    return {"patches": n, "format": found.format,
            "warnings": [f"0 patches in {entry.path.name}"] if n == 0 else []}


def import_h5(source: str | os.PathLike, store: str | os.PathLike, *,
              model: str | None = None, patch_size: int | None = None,
              level: int | None = None, mpp: float | None = None, manifest=None,
              overwrite: bool = False,
              on_event: Callable[[str, Any], None] | None = None) -> list:
    """Import CLAM/TRIDENT feature files into the patch store ``store``, one part per
    file (the slide id is the file name's stem).

    Vectors are stored as float16 like every store's. Rows get the key exaslide's
    extraction gives their position, ``level`` and ``size`` from the patch spec, no
    ``label`` and the manifest's ``split``.

    Args:
        source: a folder of ``<slide_id>.h5`` files, or one file.
        model: the model name recorded in the store (default: the files'
            ``exaslide_model`` attribute, else TRIDENT's ``features_<encoder>`` folder).
        patch_size, level, mpp: the patch spec, over what the files record (CLAM's
            feature files record nothing: give ``patch_size`` and ``level`` or ``mpp``).
        manifest: a cohort CSV (or its entries): import only its slides, from
            ``source/<slide_id>.h5``, with their ``split``.
        overwrite: redo slides already imported.
        on_event: the job engine's events.

    Returns:
        The engine's outcomes, one per file: a bad file (see :func:`read_feature_file`;
        another dimension or patch spec than the store's) fails with one line naming it
        and the others go on; the summary is in ``store/features-import_status.json``.

    Raises:
        RetrievalError: no feature file, none usable, no model name, or a store of
            another embedding space. JobError: the store is locked or was written by
            another stage.
    """
    from exaslide.jobs import Stage, run_stage
    from exaslide.retrieval.store import write_info

    source = Path(source)
    entries = _import_entries(source, manifest)
    overrides = {"patch_size": patch_size, "level": level, "mpp": mpp}
    model, dim, patch = _plan_import(source, entries, model, overrides)
    write_info(store, {"kind": "patches", "dim": dim, "model": model, "model_path": None,
                       "weights": None, "patch": patch, "mean": None, "std": None,
                       "source": str(source)})
    stage = Stage(IMPORT_STAGE, ImportOptions(model, dim, patch, overrides),
                  process=_import_one,
                  extra_fingerprint=lambda entry, _: {"split": entry.split})
    return run_stage(stage, entries, store, scheduler="inline", overwrite=overwrite,
                     on_event=on_event)
