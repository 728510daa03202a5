"""Inputs of an export: a detections CSV, and what an exaslide output folder holds for one
slide (its slide and annotation in the manifest, heatmaps, MIL attention, detections)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from exaslide.errors import ExportError
from exaslide.export.geojson import Detection
from exaslide.heatmaps import NPY_SUFFIX
from exaslide.naming import check_slide_id

#: Largest detections CSV read (bytes): evaluate writes a few hundred rows per slide.
MAX_DETECTIONS_BYTES = 512 * 2**20
_REQUIRED = ("slide_id", "x", "y", "p")


def read_detections(path: str | PathLike[str], slide_id: str) -> list[Detection]:
    """The rows of ``slide_id`` in a detections CSV (``exaslide evaluate``'s
    ``detections.csv``: ``slide_id,x,y,p[,outcome,lesion]``).

    Raises:
        ExportError: a missing or over-large file, missing columns, or a row whose x, y
            or p is not a finite number (the message names the line).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ExportError(f"{path}: cannot read the detections CSV: "
                          f"{exc.strerror or exc}") from exc
    if size > MAX_DETECTIONS_BYTES:
        raise ExportError(f"{path}: {size} bytes, more than the {MAX_DETECTIONS_BYTES} "
                          "a detections CSV may have; is it the right file?")
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return _rows(csv.DictReader(fh), path, slide_id)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ExportError(f"{path}: not a CSV text file ({exc})") from exc


def _rows(reader: csv.DictReader, path: Path, slide_id: str) -> list[Detection]:
    missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise ExportError(f"{path}: a detections CSV needs the columns "
                          f"{','.join(_REQUIRED)}[,outcome,lesion]; {', '.join(missing)} "
                          f"missing (found {reader.fieldnames})")
    found = []
    for row in reader:
        if row.get("slide_id") != slide_id:
            continue
        try:
            x, y, p = (float(row[k]) for k in ("x", "y", "p"))
            lesion = int(float(row.get("lesion") or 0))
        except (TypeError, ValueError) as exc:
            raise ExportError(f"{path}:{reader.line_num}: x, y, p and lesion must be "
                              f"numbers ({exc})") from exc
        if not all(math.isfinite(v) for v in (x, y, p)):
            raise ExportError(f"{path}:{reader.line_num}: x, y and p must be finite numbers")
        found.append(Detection(x, y, p, (row.get("outcome") or "").strip(), lesion))
    return found


@dataclass
class FolderInputs:
    """What an exaslide output folder holds for one slide (None / empty where absent)."""

    slide: Path | str | None = None
    annotation: Path | str | None = None
    manifest: Path | None = None
    heatmaps: list[Path] = field(default_factory=list)
    detections: Path | None = None


#: Where each kind of output sits in an output folder (the demo's, or one stage's).
MANIFESTS = ("manifest.csv", "cohort/manifest.csv")
HEATMAP_FOLDERS = (".", "heatmaps", "mil/heatmaps", "mil", "patient_heatmaps")
DETECTIONS = ("evaluation/detections.csv", "detections.csv")


def folder_inputs(folder: str | PathLike[str], slide_id: str) -> FolderInputs:
    """Find ``slide_id``'s slide and annotation (from the folder's manifest), heatmaps
    (``<id>.heatmap.npy`` with its ``.json``) and detections CSV in an exaslide output
    folder such as the demo's.

    Raises:
        ExportError: not a folder, or nothing of this slide in it.
        SlideIdError: an id that cannot name files (a path, ``..``).
    """
    from exaslide.manifest import read_manifest

    check_slide_id(slide_id)
    root = Path(folder)
    if not root.is_dir():
        raise ExportError(f"{root}: not a folder (--from takes an exaslide output folder)")
    found = FolderInputs()
    for name in MANIFESTS:
        if (root / name).is_file():
            found.manifest = root / name
            entry = next((e for e in read_manifest(root / name) if e.slide_id == slide_id),
                         None)
            if entry is not None:
                found.slide, found.annotation = entry.path, entry.annotation
            break
    for sub in HEATMAP_FOLDERS:
        npy = root / sub / f"{slide_id}{NPY_SUFFIX}"
        if npy.is_file():
            found.heatmaps.append(npy)
    found.detections = next((root / n for n in DETECTIONS if (root / n).is_file()), None)
    if found.slide is None and not found.heatmaps:
        raise ExportError(f"{root}: no slide {slide_id!r} in its manifest and no heatmap of "
                          f"it (looked for {', '.join(MANIFESTS)} and "
                          f"{{{','.join(HEATMAP_FOLDERS)}}}/{slide_id}{NPY_SUFFIX})")
    return found
