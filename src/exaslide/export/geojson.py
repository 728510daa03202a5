"""QuPath GeoJSON export: a FeatureCollection QuPath imports (File > Import objects).

Layout (QuPath >= 0.4, see ``PathObjectTypeAdapters`` in QuPath's source)::

    {"type": "FeatureCollection", "features": [
      {"type": "Feature", "id": "<UUID>", "geometry": {...},
       "properties": {"objectType": "annotation" | "tile" | "detection",
                      "name": "...", "classification": {"name": "Tumor", "color": [r, g, b]},
                      "measurements": {"Tumor probability": 0.93}}}, ...]}

Coordinates are level-0 pixels, origin at the top-left corner of the slide.

What is written (each part optional):

- **Tumour**: ``objectType`` annotation, class ``Tumor``: the tumour annotations minus the
  exclusion annotations (CAMELYON16 ``_2``), one feature per polygon, exclusions that cut
  a tumour becoming its holes (GeoJSON interior rings).
- **Exclusions**: the exclusion annotations themselves, class ``Ignore*`` (QuPath's class
  for regions to ignore; exaslide's reader maps it to ``exclusion``). Never a
  tumour-looking feature.
- **Other annotations** (classes that are neither tumour nor exclusion): as read, with
  their class, ``objectType`` and ``measurements`` kept.
- **Tissue** contours: annotations of class ``Tissue``.
- **Heatmap cells**: ``objectType`` tile squares with the measurement
  ``Tumor probability`` (class ``Heatmap``) or, for a MIL attention heatmap,
  ``Attention`` (class ``Attention``); cells not computed (NaN) are left out. QuPath's
  Measure > Show measurement maps colours them.
- **Detections** (lesion candidates, FROC outcomes): ``objectType`` detection points of
  class ``TP``, ``FP``, ``ITC`` or ``Detection`` (no outcome) with the measurement
  ``Tumor probability``.

No tile or detection has a class that exaslide's label map reads as tumour or exclusion
(``Tumor``, ``Ignore*``...), because exaslide's reader maps a class to a label whatever
the ``objectType``: reading the export back for a mask gives the tumour region and nothing
else. Feature ids are UUIDs derived (UUID5) from the slide id and the feature's place in
the file, so the same inputs give the same file.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from exaslide.annotations import EXCLUSION, TUMOUR, AnnotationSet
from exaslide.annotations._geom import hex_to_rgb
from exaslide.annotations.geojson import geometry_to_geojson
from exaslide.atomic import atomic_path
from exaslide.errors import ExportError
from exaslide.heatmaps import Heatmap

TUMOUR_CLASS = "Tumor"
IGNORE_CLASS = "Ignore*"
TISSUE_CLASS = "Tissue"
HEATMAP_CLASS = "Heatmap"
ATTENTION_CLASS = "Attention"
DETECTION_CLASS = "Detection"
#: Detection class by FROC outcome (``detections.csv``'s ``outcome`` column).
OUTCOME_CLASSES = {"tp": "TP", "fp": "FP", "itc": "ITC"}
PROBABILITY = "Tumor probability"
ATTENTION = "Attention"

#: Class colours ``[r, g, b]`` (Tumor and Ignore* as QuPath's defaults).
CLASS_COLOURS: dict[str, list[int]] = {
    TUMOUR_CLASS: [200, 0, 0],
    IGNORE_CLASS: [180, 180, 180],
    TISSUE_CLASS: [0, 150, 60],
    HEATMAP_CLASS: [255, 140, 0],
    ATTENTION_CLASS: [150, 60, 200],
    DETECTION_CLASS: [255, 200, 0],
    "TP": [0, 200, 0],
    "FP": [230, 0, 230],
    "ITC": [0, 160, 255],
}
#: Most tiles written from one heatmap unless told otherwise (a 100k x 200k slide at
#: 256-px cells has 305,000 cells).
DEFAULT_MAX_TILES = 1_000_000
_NAMESPACE = uuid.UUID("6f0b7f4e-2d0e-4b8a-9a59-3c1f4f0e9e13")


@dataclass(frozen=True)
class Detection:
    """One detection: level-0 centre, probability, FROC outcome ("tp", "fp", "itc" or "")
    and matched lesion label (0: none)."""

    x: float
    y: float
    p: float
    outcome: str = ""
    lesion: int = 0


@dataclass
class ExportSummary:
    """What :func:`export_geojson` wrote: the file and the number of features per part."""

    path: Path
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Number of features in the file."""
        return sum(self.counts.values())

    def line(self) -> str:
        """A one-line account, e.g. ``out.geojson: 3 tumour, 1 exclusion, 412 tiles``."""
        parts = ", ".join(f"{n} {kind}" for kind, n in self.counts.items())
        return f"{self.path}: {self.total} features ({parts or 'none'})"


# --------------------------------------------------------------------------- features


def feature(geometry: BaseGeometry, object_type: str, class_name: str | None, key: str, *,
            name: str | None = None, measurements: dict[str, float] | None = None,
            extra: dict[str, Any] | None = None, class_colour: list[int] | None = None,
            feature_id: str | None = None) -> dict[str, Any]:
    """One QuPath GeoJSON Feature.

    Args:
        geometry: level-0 Polygon (holes allowed), MultiPolygon, Point or MultiPoint.
        object_type: "annotation", "tile", "detection" or "cell".
        class_name: the classification name (colour from :data:`CLASS_COLOURS`), or None.
        key: a string unique in the file; the feature id is ``uuid5(key)``.
        name: the object's name.
        measurements: ``{name: finite number}``.
        extra: further properties, copied as they are (they must be JSON).
        class_colour: the class colour when the class is not in :data:`CLASS_COLOURS`.
        feature_id: the id to write (a UUID string) instead of ``uuid5(key)``.
    """
    kind = "point" if geometry.geom_type in ("Point", "MultiPoint") else "polygon"
    props: dict[str, Any] = {"objectType": object_type}
    if name:
        props["name"] = name
    if class_name:
        classification: dict[str, Any] = {"name": class_name}
        colour = CLASS_COLOURS.get(class_name, class_colour)
        if colour is not None:
            classification["color"] = list(colour)
        props["classification"] = classification
    for k, v in (extra or {}).items():
        props.setdefault(k, v)
    if measurements:
        props["measurements"] = {str(k): float(v) for k, v in measurements.items()}
    return {"type": "Feature", "id": feature_id or str(uuid.uuid5(_NAMESPACE, key)),
            "geometry": geometry_to_geojson(geometry, kind), "properties": props}


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    """The non-empty polygons of a (multi)polygon or collection, largest first."""
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    polys: list[Polygon] = []
    for part in shapely.get_parts(geom):
        if isinstance(part, Polygon | MultiPolygon):
            polys.extend(_polygons(part) if isinstance(part, MultiPolygon) else [part])
    return sorted((p for p in polys if not p.is_empty and p.area > 0),
                  key=lambda p: -p.area)


def tumour_region(annotations: AnnotationSet) -> BaseGeometry:
    """The tumour region: union of the tumour areas minus the union of the exclusions."""
    return annotations.union(TUMOUR).difference(annotations.union(EXCLUSION))


def annotation_features(annotations: AnnotationSet, slide_id: str = "", *,
                        ignore_regions: bool = True) -> Iterator[dict[str, Any]]:
    """Features for an annotation set: :func:`tumour_features`, then
    :func:`ignore_features` (when ``ignore_regions``), then :func:`other_features`."""
    yield from tumour_features(annotations, slide_id)
    if ignore_regions:
        yield from ignore_features(annotations, slide_id)
    yield from other_features(annotations, slide_id)


def tumour_features(annotations: AnnotationSet, slide_id: str = "") -> Iterator[dict]:
    """The tumour region (:func:`tumour_region`) as ``Tumor`` annotations, one per
    polygon, largest first; exclusions that cut a tumour are its holes."""
    for i, poly in enumerate(_polygons(tumour_region(annotations))):
        yield feature(poly, "annotation", TUMOUR_CLASS, f"{slide_id}/tumour/{i}",
                      name=f"Tumor {i + 1}")


def ignore_features(annotations: AnnotationSet, slide_id: str = "") -> Iterator[dict]:
    """The exclusion areas (their union) as ``Ignore*`` annotations, one per polygon."""
    for i, poly in enumerate(_polygons(annotations.union(EXCLUSION))):
        yield feature(poly, "annotation", IGNORE_CLASS, f"{slide_id}/exclusion/{i}",
                      name=f"Exclusion {i + 1}")


def other_features(annotations: AnnotationSet, slide_id: str = "") -> Iterator[dict]:
    """Every annotation that is not a tumour or exclusion *area*, as read: its class,
    name, colour, ``objectType``, ``measurements`` and other properties kept. Tumour and
    exclusion points (dots) are among them: they mark no area and never change a mask.
    A feature keeps its id when it had a UUID not used before in the file."""
    seen: set[str] = set()
    for i, ann in enumerate(annotations):
        if ann.geometry.is_empty or (ann.is_area and ann.label in (TUMOUR, EXCLUSION)):
            continue
        props = dict(ann.properties)
        old_id = _uuid(props.pop("id", None))
        if old_id in seen:  # a MultiPolygon feature read as several, or a duplicate
            old_id = None
        seen.add(old_id or "")
        object_type = str(props.pop("objectType", None) or "annotation")
        measurements = props.pop("measurements", None)
        class_colour = hex_to_rgb(annotations.group_colors.get(ann.group))
        own_colour = hex_to_rgb(ann.color)
        if own_colour is not None and own_colour != class_colour:
            props["color"] = own_colour
        yield feature(ann.geometry, object_type, ann.group or None, f"{slide_id}/other/{i}",
                      name=ann.name or None, measurements=_measurements(measurements),
                      extra=props, class_colour=class_colour, feature_id=old_id)


def _uuid(value: Any) -> str | None:
    """``value`` as a canonical UUID string, or None when it is not a UUID."""
    try:
        return str(uuid.UUID(str(value))) if value is not None else None
    except ValueError:
        return None


def _measurements(value: Any) -> dict[str, float] | None:
    """A QuPath measurements object (or the pre-0.4 list form) with finite values only."""
    if isinstance(value, list):
        value = {m.get("name"): m.get("value") for m in value if isinstance(m, dict)}
    if not isinstance(value, dict):
        return None
    kept = {str(k): float(v) for k, v in value.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
    return kept or None


def tissue_features(polygons: Iterable[BaseGeometry], slide_id: str = "") -> Iterator[dict]:
    """Tissue contours as annotations of class ``Tissue``, one per polygon."""
    for i, poly in enumerate(p for g in polygons for p in _polygons(g)):
        yield feature(poly, "annotation", TISSUE_CLASS, f"{slide_id}/tissue/{i}",
                      name=f"Tissue {i + 1}")


def heatmap_kind(heatmap: Heatmap) -> tuple[str, str]:
    """``(class, measurement)`` of a heatmap's tiles: ``Attention`` for a MIL attention
    heatmap (``meta["score"] == "attention"``), else ``Heatmap`` / ``Tumor probability``."""
    if str(heatmap.meta.get("score", "")).lower() == "attention":
        return ATTENTION_CLASS, ATTENTION
    return HEATMAP_CLASS, PROBABILITY


def heatmap_cells(heatmap: Heatmap, min_value: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the cells to export: computed (finite) and ``>= min_value``."""
    values = np.asarray(heatmap.probabilities, dtype=np.float64)
    keep = np.isfinite(values)
    if min_value is not None:
        keep &= values >= min_value
    return np.nonzero(keep)


def heatmap_features(heatmap: Heatmap, slide_id: str = "", *, min_value: float | None = None,
                     max_tiles: int = DEFAULT_MAX_TILES) -> Iterator[dict[str, Any]]:
    """The heatmap's computed cells as ``tile`` squares (level-0 pixels, clipped to the
    slide) with their value as a measurement (see :func:`heatmap_kind`).

    Raises:
        ExportError: more than ``max_tiles`` cells to write.
    """
    rows, cols = heatmap_cells(heatmap, min_value)
    if len(rows) > max_tiles:
        raise ExportError(f"{heatmap.path or 'heatmap'}: {len(rows)} heatmap cells to export, "
                          f"more than the limit of {max_tiles}; raise max_tiles "
                          "(--max-tiles) or keep only high values (--min-probability)")
    class_name, measurement = heatmap_kind(heatmap)
    values = heatmap.probabilities
    width, height = heatmap.level0_size
    x0, y0 = heatmap.origin
    cell = heatmap.cell
    tag = class_name.lower()
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        left, top = max(0.0, x0 + c * cell), max(0.0, y0 + r * cell)
        right, bottom = min(float(width), x0 + (c + 1) * cell), min(float(height),
                                                                   y0 + (r + 1) * cell)
        if right <= left or bottom <= top:
            continue
        box = shapely.box(left, top, right, bottom, ccw=False)
        yield feature(box, "tile", class_name, f"{slide_id}/{tag}/{r}/{c}",
                      measurements={measurement: float(values[r, c])})


def detection_features(detections: Sequence[Detection], slide_id: str = ""
                       ) -> Iterator[dict[str, Any]]:
    """Detections as ``detection`` points of class TP / FP / ITC (or ``Detection``) with
    the measurement ``Tumor probability`` (and ``Lesion``, the matched lesion label)."""
    for i, d in enumerate(detections):
        class_name = OUTCOME_CLASSES.get(d.outcome.lower(), DETECTION_CLASS)
        measurements = {PROBABILITY: d.p}
        if d.lesion:
            measurements["Lesion"] = float(d.lesion)
        yield feature(shapely.Point(d.x, d.y), "detection", class_name,
                      f"{slide_id}/detection/{i}", measurements=measurements)


# --------------------------------------------------------------------------- writing


def write_features(features: Iterable[dict[str, Any]], path: str | PathLike[str]) -> int:
    """Write features as a FeatureCollection to ``path``, atomically, one feature a line
    (streamed: memory does not grow with the number of features).

    Returns:
        The number of features written.

    Raises:
        ExportError: a feature that is not JSON (a NaN or infinite number).
    """
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write('{"type":"FeatureCollection","features":[')
        for item in features:
            try:
                text = json.dumps(item, ensure_ascii=False, allow_nan=False,
                                  separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise ExportError(f"feature {count} cannot be written as JSON: {exc}") from exc
            fh.write(("\n" if count == 0 else ",\n") + text)
            count += 1
        fh.write("\n]}\n")
    return count


class _Counted:
    """Counts the features of each part as they stream past."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, part: str, features: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        self.counts.setdefault(part, 0)
        for item in features:
            self.counts[part] += 1
            yield item


def export_geojson(out: str | PathLike[str], *, annotations: AnnotationSet | None = None,
                   heatmaps: Sequence[Heatmap] = (), tissue: Sequence[BaseGeometry] = (),
                   detections: Sequence[Detection] | None = None, slide_id: str = "",
                   slide_size: tuple[int, int] | None = None, ignore_regions: bool = True,
                   min_value: float | None = None,
                   max_tiles: int = DEFAULT_MAX_TILES) -> ExportSummary:
    """Write one slide's objects as a QuPath GeoJSON FeatureCollection (see the module
    docstring for the layout), atomically.

    Args:
        out: the ``.geojson`` file to write.
        annotations: the slide's annotations (tumour, exclusions, others).
        heatmaps: probability or MIL attention heatmaps of the slide.
        tissue: tissue polygons (level-0), e.g. from
            :func:`exaslide.export.tissue.tissue_polygons`.
        detections: lesion detections (with FROC outcomes when known).
        slide_id: the slide's id (feature ids derive from it).
        slide_size: level-0 ``(width, height)``; when given, each heatmap must be of a
            slide of that size.
        ignore_regions: also write the exclusions as ``Ignore*`` annotations.
        min_value: write only heatmap cells with a value ``>=`` this.
        max_tiles: most tiles per heatmap.

    Returns:
        The path and the number of features per part.

    Raises:
        ExportError: a heatmap of another slide, too many tiles.
    """
    heatmaps = list(heatmaps)
    for heatmap in heatmaps:
        check_heatmap(heatmap, slide_id, slide_size)
        rows, _ = heatmap_cells(heatmap, min_value)
        if len(rows) > max_tiles:  # before anything is written
            list(heatmap_features(heatmap, slide_id, min_value=min_value, max_tiles=max_tiles))
    counted = _Counted()

    def parts() -> Iterator[dict[str, Any]]:
        if annotations is not None:
            yield from counted.add("tumour", tumour_features(annotations, slide_id))
            if ignore_regions:
                yield from counted.add("Ignore*", ignore_features(annotations, slide_id))
            yield from counted.add("other annotations", other_features(annotations, slide_id))
        yield from counted.add("tissue", tissue_features(tissue, slide_id))
        for heatmap in heatmaps:
            part = "attention tiles" if heatmap_kind(heatmap)[0] == ATTENTION_CLASS else "tiles"
            yield from counted.add(part, heatmap_features(
                heatmap, slide_id, min_value=min_value, max_tiles=max_tiles))
        yield from counted.add("detections", detection_features(detections or (), slide_id))

    path = Path(out)
    write_features(parts(), path)
    return ExportSummary(path, {k: v for k, v in counted.counts.items() if v})


def check_heatmap(heatmap: Heatmap, slide_id: str = "",
                  slide_size: tuple[int, int] | None = None) -> None:
    """Raise ExportError when ``heatmap`` is not of this slide (another id or size)."""
    where = heatmap.path or "heatmap"
    if slide_id and heatmap.slide_id and heatmap.slide_id != slide_id:
        raise ExportError(f"{where}: a heatmap of slide {heatmap.slide_id!r}, not "
                          f"{slide_id!r}; give this slide's heatmap")
    if slide_size is not None and tuple(heatmap.level0_size) != tuple(slide_size):
        w, h = heatmap.level0_size
        raise ExportError(f"{where}: a heatmap of a {w}x{h} slide, but the slide is "
                          f"{slide_size[0]}x{slide_size[1]}; give this slide's heatmap")
