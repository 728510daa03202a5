"""What ``exaslide view PATHS`` serves: the slides and outputs found under the paths given.

Each path is a slide (a local file or a URL), a cohort manifest (CSV, TSV or Parquet), or a
folder. A folder is searched two levels deep for exaslide's marker files:

- ``manifest.csv``: slides (and their annotations);
- ``*.heatmap.json`` (+ ``.npy``): probability heatmaps, or MIL attention maps;
- ``*_mask.tif``: label masks;
- ``index.json`` + ``index.faiss``: a retrieval index (its ``slides`` are served too when
  no other source names them);
- ``index/*.parquet`` without ``index.json`` (an extraction's patch index): patch points,
  with ``patch_predictions.csv`` (``key,slide_id,label,score``) when present;
- ``detections.csv`` with an ``outcome`` column: FROC true and false positives;
- slide files (``.svs``, ``.tif``, ``.ndpi``...) directly in a folder without a manifest.

Slides get URL-safe ids: the manifest's ``slide_id`` or the file stem, with every
character outside ``A-Z a-z 0-9 . _ -`` replaced by ``_`` and a ``-2``, ``-3``... suffix on
repeats. Only these ids reach the HTTP API; no client-supplied path is ever opened.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from exaslide.errors import ExaslideError, ViewerError

logger = logging.getLogger(__name__)

#: File suffixes taken for slides in a folder scan (a path given explicitly may be any
#: format exaslide opens).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif",
                  ".svslide", ".czi", ".dcm", ".qptiff")
#: Outputs that are TIFFs but not slides.
NOT_SLIDES = (".heatmap.tif", "_mask.tif")
MANIFEST_SUFFIXES = (".csv", ".tsv", ".parquet")
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")
SEARCH_DEPTH = 2


@dataclass
class SlideSource:
    """A slide to serve: its URL-safe ``id``, the ``source_id`` outputs use, its path or
    URL, its annotation file, and a display ``name``."""

    id: str
    source_id: str
    path: str
    annotation: str | None = None
    name: str = ""


@dataclass
class OverlaySource:
    """An overlay file for one slide: ``kind`` is heatmap, mask, annotations, patches or
    froc; ``path`` the file it comes from; ``extra`` more files (patch predictions)."""

    kind: str
    name: str
    path: str
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class Catalog:
    """Everything discovered: slides by id, overlays by slide id, retrieval indexes, and
    ``source_ids`` (an output's slide id -> the served id)."""

    slides: dict[str, SlideSource] = field(default_factory=dict)
    overlays: dict[str, list[OverlaySource]] = field(default_factory=dict)
    indexes: list[str] = field(default_factory=list)
    source_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class _Found:
    slides: list[tuple[str, str, str | None]] = field(default_factory=list)  # id, path, ann
    heatmaps: list[tuple[str, str, str]] = field(default_factory=list)  # json path, name, id
    masks: list[tuple[str, str]] = field(default_factory=list)
    patch_tables: list[tuple[str, str]] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)
    detections: list[str] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)


def safe_id(value: str) -> str:
    """``value`` with characters outside ``A-Za-z0-9._-`` replaced by ``_`` and leading
    dots removed (``slide`` when nothing is left)."""
    text = re.sub(r"[^A-Za-z0-9._-]", "_", str(value)).lstrip(".")
    return text[:200] or "slide"


def discover(paths) -> Catalog:
    """The slides and overlays found under ``paths`` (see the module docstring).

    Raises:
        ViewerError: a path that does not exist, or holds no slide, manifest or exaslide
            output (one line naming it).
        ManifestError: a malformed manifest.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    found = _Found()
    for path in paths:
        _discover_path(str(path), found)
    return _catalog(found)


def _discover_path(path: str, found: _Found) -> None:
    from exaslide.storage import is_remote

    if is_remote(path):
        found.slides.append((_stem(path), path, None))
        return
    p = Path(path).expanduser()
    if p.is_dir():
        before = _count(found)
        _scan_folder(p, found, depth=0, root=p)
        if _count(found) == before:
            raise ViewerError(f"{path}: no slide, manifest or exaslide output found in this "
                              "folder (looked for manifest.csv, *.heatmap.json, *_mask.tif, "
                              "index.json, index/*.parquet, detections.csv and slide files)")
        return
    if not p.is_file():
        raise ViewerError(f"{path}: no such file or folder")
    name = p.name.lower()
    if name.endswith(MANIFEST_SUFFIXES):
        _add_manifest(p, found)
    elif name.endswith(SLIDE_SUFFIXES) or _opens_as_slide(p):
        found.slides.append((_stem(p), str(p), _sibling_annotation(p)))
    else:
        raise ViewerError(f"{path}: not a slide, manifest or exaslide output folder")


def _opens_as_slide(path: Path) -> bool:
    from exaslide.slides import open_slide

    try:
        open_slide(path).close()
    except (ExaslideError, OSError, ValueError):
        return False
    return True


def _count(found: _Found) -> int:
    return sum(len(v) for v in vars(found).values())


def _scan_folder(folder: Path, found: _Found, depth: int, root: Path) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        logger.warning("%s: not searched (%s)", folder, exc)
        return
    files = {e.name: Path(e.path) for e in entries if e.is_file()}
    manifest = files.get("manifest.csv")
    if manifest is not None:
        _add_manifest(manifest, found)
    if "index.json" in files and "index.faiss" in files:
        found.indexes.append(str(folder))
    elif folder.name == "index":
        for name, p in files.items():
            if name.endswith(".parquet"):
                found.patch_tables.append((name[: -len(".parquet")], str(p)))
    for name, p in files.items():
        if name.endswith(".heatmap.json"):
            found.heatmaps.append((str(p), _relative_name(folder, root),
                                   name[: -len(".heatmap.json")]))
        elif name.endswith("_mask.tif"):
            found.masks.append((name[: -len("_mask.tif")], str(p)))
        elif name == "patch_predictions.csv":
            found.predictions.append(str(p))
        elif name == "detections.csv" and "outcome" in _csv_header(p):
            found.detections.append(str(p))
        elif (manifest is None and depth == 0 and name.lower().endswith(SLIDE_SUFFIXES)
              and not name.endswith(NOT_SLIDES)):
            found.slides.append((_stem(p), str(p), _sibling_annotation(p)))
    if depth < SEARCH_DEPTH:
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                _scan_folder(Path(entry.path), found, depth + 1, root)


def _relative_name(folder: Path, root: Path) -> str:
    """``folder`` relative to the path given (``heatmaps``, ``mil/heatmaps``)."""
    relative = folder.relative_to(root).as_posix()
    return folder.name if relative == "." else relative


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _add_manifest(path: Path, found: _Found) -> None:
    from exaslide.manifest import read_manifest

    for entry in read_manifest(path):
        annotation = str(entry.annotation) if entry.annotation else None
        found.slides.append((entry.slide_id, str(entry.path), annotation))


def _stem(path) -> str:
    from exaslide.naming import slide_stem

    try:
        return slide_stem(path)
    except ExaslideError:
        return safe_id(str(path).rstrip("/").rsplit("/", 1)[-1])


def _sibling_annotation(path: Path) -> str | None:
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    for suffix in ANNOTATION_SUFFIXES:
        candidate = path.with_name(stem + suffix)
        if candidate.is_file():
            return str(candidate)
    return None


def _catalog(found: _Found) -> Catalog:
    catalog = Catalog(indexes=list(dict.fromkeys(found.indexes)))
    seen_paths: set[str] = set()

    def add_slide(source_id: str, path: str, annotation: str | None) -> None:
        key = _path_key(path)
        if key in seen_paths:
            return
        seen_paths.add(key)
        served = safe_id(source_id)
        n = 2
        while served in catalog.slides:
            served, n = f"{safe_id(source_id)}-{n}", n + 1
        catalog.slides[served] = SlideSource(served, source_id, path, annotation, source_id)
        catalog.source_ids.setdefault(source_id, served)

    for source_id, path, annotation in found.slides:
        add_slide(source_id, path, annotation)
    for json_path, _, source_id in found.heatmaps:  # a heatmap names its slide
        if source_id not in catalog.source_ids:
            slide = _heatmap_slide(json_path)
            if slide:
                add_slide(source_id, slide, None)
    if not catalog.slides:
        for folder in catalog.indexes:  # an index folder alone: the slides it indexes
            for source_id, path in _index_slides(folder).items():
                add_slide(source_id, path, None)

    def attach(source_id: str, overlay: OverlaySource) -> None:
        served = catalog.source_ids.get(source_id)
        if served is not None:
            catalog.overlays.setdefault(served, []).append(overlay)

    for slide in catalog.slides.values():
        if slide.annotation:
            catalog.overlays.setdefault(slide.id, []).append(
                OverlaySource("annotations", "annotations", slide.annotation))
    for json_path, name, source_id in found.heatmaps:
        attach(source_id, OverlaySource("heatmap", name, json_path))
    for source_id, path in found.masks:
        attach(source_id, OverlaySource("mask", "mask", path))
    predictions = found.predictions[0] if found.predictions else None
    for source_id, path in found.patch_tables:
        extra = {"predictions": predictions} if predictions else {}
        attach(source_id, OverlaySource("patches", "patches", path, extra))
    for path in found.detections:
        for source_id in _detection_slides(path):
            attach(source_id, OverlaySource("froc", "FROC detections", path))
    return catalog


def _path_key(path: str) -> str:
    from exaslide.storage import is_remote

    return path if is_remote(path) else os.path.realpath(path)


def _heatmap_slide(json_path: str) -> str | None:
    try:
        slide = json.loads(Path(json_path).read_text(encoding="utf-8")).get("slide")
    except (OSError, ValueError, AttributeError):
        return None
    if not slide:
        return None
    from exaslide.storage import is_remote

    if is_remote(str(slide)):
        return str(slide)
    path = Path(slide)
    if not path.is_absolute():
        path = Path(json_path).parent / path
    return str(path) if path.is_file() else None


def _index_slides(folder: str) -> dict[str, str]:
    try:
        info = json.loads((Path(folder) / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    slides = info.get("slides") or {}
    return {str(k): str(v) for k, v in slides.items()} if isinstance(slides, dict) else {}


def _detection_slides(path: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return sorted({row.get("slide_id", "") for row in csv.DictReader(fh)} - {""})
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
