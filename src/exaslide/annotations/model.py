"""The annotation data model, label mapping and the shared geometry repair.

Every reader turns a file into :class:`AnnotationDraft` objects (the geometry exactly as
stored plus its metadata) and hands them to :func:`build_annotation_set`, which maps group
names to canonical labels, repairs invalid area geometries and records every repair.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, overload

import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from exaslide.errors import AnnotationError

logger = logging.getLogger(__name__)

TUMOUR = "tumour"
EXCLUSION = "exclusion"

DEFAULT_LABEL_MAP: dict[str, str] = {
    "_0": TUMOUR,
    "_1": TUMOUR,
    "tumor": TUMOUR,
    "tumour": TUMOUR,
    "metastases": TUMOUR,
    "metastasis": TUMOUR,
    "positive": TUMOUR,
    "carcinoma": TUMOUR,
    "_2": EXCLUSION,
    "exclusion": EXCLUSION,
    "negative": EXCLUSION,
    "ignore": EXCLUSION,
    "ignore*": EXCLUSION,
}

AREA_KINDS = frozenset({"polygon", "spline", "rectangle", "multipolygon"})
POINT_KINDS = frozenset({"dot", "pointset", "point"})

_LABEL_ALIASES = {"tumor": TUMOUR}

PROBLEM_TOO_FEW = "fewer than 3 distinct vertices"
PROBLEM_EMPTY = "empty"


# --------------------------------------------------------------------------- labels


def _normalise_key(group: str) -> str:
    return str(group).strip().lower()


def _normalise_label(label: str) -> str:
    value = str(label).strip().lower()
    return _LABEL_ALIASES.get(value, value)


def merge_label_map(user: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return DEFAULT_LABEL_MAP with ``user`` entries added on top (user wins).

    Args:
        user: Extra ``group -> label`` entries; keys are matched case-insensitively.

    Returns:
        A new dict with lower-cased keys and lower-cased labels.
    """
    merged = dict(DEFAULT_LABEL_MAP)
    for key, value in (user or {}).items():
        merged[_normalise_key(key)] = _normalise_label(value)
    return merged


def map_label(group: str, label_map: Mapping[str, str] | None = None) -> str:
    """Map a group / class name to its canonical label.

    Args:
        group: The group name as stored in the file.
        label_map: A merged map (see :func:`merge_label_map`); defaults to DEFAULT_LABEL_MAP.

    Returns:
        The mapped label, or the group name lower-cased when unmapped ("" for no group).
    """
    table = DEFAULT_LABEL_MAP if label_map is None else label_map
    key = _normalise_key(group)
    return table.get(key, key)


def load_label_map(path: str | PathLike[str]) -> dict[str, str]:
    """Load a user label map from a CSV (header ``group,label``) or a JSON object file.

    Args:
        path: A ``.json`` file holding ``{"group": "label", ...}``, or a CSV file whose
            first row is the header ``group,label``.

    Returns:
        The map with lower-cased keys and labels (not merged with the defaults).

    Raises:
        AnnotationError: The file is missing or malformed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise AnnotationError(f"cannot read label map {path}: {exc}") from exc
    if path.suffix.lower() == ".json":
        return _label_map_from_json(text, path)
    return _label_map_from_csv(text, path)


def _label_map_from_json(text: str, path: Path) -> dict[str, str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise AnnotationError(
            f"{path}: expected a JSON object mapping group names to label strings"
        )
    return {_normalise_key(k): _normalise_label(v) for k, v in data.items()}


def _label_map_from_csv(text: str, path: Path) -> dict[str, str]:
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header[:2]] != ["group", "label"]:
        raise AnnotationError(
            f"{path}:1: expected the header 'group,label', found {header!r}; add the header"
        )
    result: dict[str, str] = {}
    for row in reader:
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2:
            raise AnnotationError(
                f"{path}:{reader.line_num}: expected 'group,label', found {row!r}"
            )
        result[_normalise_key(row[0])] = _normalise_label(row[1])
    return result


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Annotation:
    """One annotation: a repaired, valid geometry plus the geometry as stored in the file.

    Attributes:
        geometry: Valid geometry in level-0 pixel coordinates (x right, y down):
            Polygon/MultiPolygon for areas, Point/MultiPoint for dots. Empty when the
            stored geometry was degenerate and had to be dropped.
        label: Canonical label ("tumour", "exclusion", ...) or the lower-cased group name
            when unmapped ("" when there is no group).
        group: The group / classification name exactly as in the file.
        name: The annotation name ("" if none).
        kind: Source type: polygon, spline, rectangle, dot, pointset, multipolygon, point.
        source: The geometry exactly as stored (original vertices, possibly invalid).
            Degenerate area annotations are stored as LineString (2 vertices), Point
            (1 vertex) or an empty Polygon (no vertices).
        color: Display colour as ``#rrggbb`` (or as written in the file), if any.
        properties: Extra properties (e.g. QuPath ``objectType``, ``measurements``).
    """

    geometry: BaseGeometry
    label: str
    group: str
    name: str
    kind: str
    source: BaseGeometry
    color: str | None = None
    properties: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def is_area(self) -> bool:
        """True for area annotations (polygons), False for dots / point sets."""
        return self.kind in AREA_KINDS

    @property
    def repaired(self) -> bool:
        """True when :attr:`geometry` differs from :attr:`source` (repaired or dropped)."""
        if self.geometry is self.source:
            return False
        return not bool(shapely.equals_exact(self.geometry, self.source, tolerance=0.0))


@dataclass
class RepairRecord:
    """One repaired or dropped annotation.

    Attributes:
        index: Position of the annotation in the file (0-based, in file order).
        name: Annotation name.
        group: Group name as in the file.
        problem: ``shapely.is_valid_reason`` text, "fewer than 3 distinct vertices",
            "empty", or why a feature was skipped.
        action: "make_valid" (geometry repaired) or "dropped" (geometry empty / skipped).
    """

    index: int
    name: str
    group: str
    problem: str
    action: str


@dataclass
class AnnotationSet:
    """The annotations read from one file; behaves like a sequence of :class:`Annotation`.

    Attributes:
        annotations: The annotations, in file order.
        path: The file they were read from, if any.
        format: "asap", "geojson", "ncrf", "table" (or "" when built by hand).
        repairs: One record per repaired, dropped or skipped annotation.
        group_colors: Group name -> colour, when the file defines group colours.
    """

    annotations: list[Annotation] = field(default_factory=list)
    path: str | None = None
    format: str = ""
    repairs: list[RepairRecord] = field(default_factory=list)
    group_colors: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.annotations)

    def __iter__(self) -> Iterator[Annotation]:
        return iter(self.annotations)

    @overload
    def __getitem__(self, item: int) -> Annotation: ...

    @overload
    def __getitem__(self, item: slice) -> AnnotationSet: ...

    def __getitem__(self, item: int | slice) -> Annotation | AnnotationSet:
        if isinstance(item, slice):
            return self._derive(self.annotations[item])
        return self.annotations[item]

    def _derive(self, annotations: list[Annotation]) -> AnnotationSet:
        groups = {a.group for a in annotations}
        return AnnotationSet(
            annotations=annotations,
            path=self.path,
            format=self.format,
            repairs=[r for r in self.repairs if r.group in groups],
            group_colors={g: c for g, c in self.group_colors.items() if g in groups},
        )

    def labels(self) -> dict[str, int]:
        """Count annotations per label (dropped / empty ones included)."""
        return dict(Counter(a.label for a in self.annotations))

    def select(self, *labels: str) -> AnnotationSet:
        """Return the annotations whose label is one of ``labels``.

        Repair records and group colours are kept for the groups that remain.
        """
        wanted = {_normalise_label(lab) for lab in labels}
        return self._derive([a for a in self.annotations if a.label in wanted])

    def union(self, *labels: str) -> BaseGeometry:
        """Union of the valid, non-empty area geometries with the given labels.

        Args:
            *labels: Labels to include; all labels when none are given. Points are ignored.

        Returns:
            A Polygon or MultiPolygon; an empty Polygon when nothing matches.
        """
        wanted = {_normalise_label(lab) for lab in labels}
        geoms = [
            a.geometry
            for a in self.annotations
            if a.is_area
            and (not wanted or a.label in wanted)
            and not a.geometry.is_empty
            and a.geometry.is_valid
        ]
        if not geoms:
            return Polygon()
        merged = _polygonal(shapely.union_all(geoms))
        return merged if not merged.is_empty else Polygon()

    def bounds(self) -> tuple[float, float, float, float] | None:
        """(minx, miny, maxx, maxy) of all non-empty geometries, or None if there are none."""
        geoms = [a.geometry for a in self.annotations if not a.geometry.is_empty]
        if not geoms:
            return None
        minx, miny, maxx, maxy = shapely.total_bounds(geoms)
        return (float(minx), float(miny), float(maxx), float(maxy))

    def unmapped_groups(self) -> set[str]:
        """Non-empty group names whose label is neither tumour nor exclusion."""
        return {a.group for a in self.annotations if a.group and a.label not in (TUMOUR, EXCLUSION)}


@dataclass
class AnnotationDraft:
    """What a reader found for one annotation, before label mapping and repair.

    Attributes:
        index: Position in the file (0-based).
        source: Geometry exactly as stored.
        kind: Source type (see :class:`Annotation`).
        group: Group name as in the file.
        name: Annotation name.
        color: Colour, if any.
        properties: Extra properties.
        label: Explicit label stored in the file (e.g. ``exaslide_label``); used only when
            the group is not in the label map.
        notes: (problem, action) pairs found while building ``source`` (e.g. dropped holes).
    """

    index: int
    source: BaseGeometry
    kind: str
    group: str = ""
    name: str = ""
    color: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    notes: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- repair


def _polygonal(geom: BaseGeometry) -> BaseGeometry:
    """Keep only the polygonal parts of ``geom`` (Polygon, MultiPolygon or empty Polygon)."""
    if geom.is_empty:
        return Polygon()
    if isinstance(geom, Polygon | MultiPolygon):
        return geom
    polys: list[Polygon] = []
    for part in shapely.get_parts(geom):
        sub = _polygonal(part)
        if isinstance(sub, Polygon) and not sub.is_empty:
            polys.append(sub)
        elif isinstance(sub, MultiPolygon):
            polys.extend(sub.geoms)
    if not polys:
        return Polygon()
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def _make_valid(source: BaseGeometry) -> BaseGeometry:
    """make_valid(method="structure") keeping polygonal parts; buffer(0) as fallback."""
    try:
        fixed = _polygonal(shapely.make_valid(source, method="structure", keep_collapsed=False))
        if fixed.is_valid:
            return fixed
    except Exception as exc:  # GEOS < 3.10 or a GEOS failure: fall back below
        logger.debug("make_valid(structure) failed (%s); trying buffer(0)", exc)
    buffered = _polygonal(source.buffer(0))
    return buffered if buffered.is_valid else Polygon()


def _too_few_vertices(source: BaseGeometry) -> bool:
    if not isinstance(source, Polygon | MultiPolygon):
        return True  # LineString / Point sources of degenerate area annotations
    polys = [source] if isinstance(source, Polygon) else list(source.geoms)
    return all(len(set(p.exterior.coords)) < 3 for p in polys)


def repair_geometry(source: BaseGeometry, kind: str) -> tuple[BaseGeometry, str | None, str | None]:
    """Return a valid geometry for ``source`` and what was done to it.

    Area geometries (see AREA_KINDS) that are invalid are repaired with
    ``shapely.make_valid(method="structure")`` (``buffer(0)`` as fallback) keeping only
    polygonal parts; empty, degenerate (< 3 distinct vertices) or zero-area ones are
    dropped (an empty Polygon is returned). Point geometries are returned unchanged
    unless empty.

    Args:
        source: The geometry as stored in the file.
        kind: The annotation kind.

    Returns:
        ``(geometry, problem, action)``; problem and action are None when nothing was done,
        otherwise action is "make_valid" or "dropped".
    """
    if kind not in AREA_KINDS:
        if source.is_empty:
            return source, PROBLEM_EMPTY, "dropped"
        return source, None, None
    if source.is_empty:
        return Polygon(), PROBLEM_EMPTY, "dropped"
    if _too_few_vertices(source):
        return Polygon(), PROBLEM_TOO_FEW, "dropped"
    if source.is_valid:
        if source.area > 0:
            return source, None, None
        return Polygon(), "zero area", "dropped"
    problem = shapely.is_valid_reason(source)
    fixed = _make_valid(source)
    if fixed.is_empty or fixed.area <= 0:
        return Polygon(), problem, "dropped"
    return fixed, problem, "make_valid"


def build_annotation_set(
    drafts: Iterable[AnnotationDraft],
    *,
    path: str | PathLike[str] | None,
    format: str,
    label_map: Mapping[str, str] | None = None,
    skipped: Sequence[RepairRecord] = (),
    group_colors: Mapping[str, str] | None = None,
) -> AnnotationSet:
    """Map labels, repair geometries and record every repair: the last step of all readers.

    Args:
        drafts: The annotations as found in the file.
        path: The file they came from.
        format: The format name stored in the result.
        label_map: A merged label map (see :func:`merge_label_map`); defaults apply if None.
        skipped: Records for features the reader skipped entirely.
        group_colors: Group colours defined by the file.

    Returns:
        The finished :class:`AnnotationSet`.
    """
    table = merge_label_map() if label_map is None else label_map
    annotations: list[Annotation] = []
    repairs: list[RepairRecord] = list(skipped)
    for draft in drafts:
        geometry, problem, action = repair_geometry(draft.source, draft.kind)
        for note_problem, note_action in draft.notes:
            repairs.append(
                RepairRecord(draft.index, draft.name, draft.group, note_problem, note_action)
            )
        if problem is not None and action is not None:
            repairs.append(RepairRecord(draft.index, draft.name, draft.group, problem, action))
        annotations.append(_finish(draft, geometry, table))
    repairs.sort(key=lambda r: r.index)
    where = str(path) if path is not None else "<memory>"
    _log_summary(where, annotations, repairs)
    return AnnotationSet(
        annotations=annotations,
        path=str(path) if path is not None else None,
        format=format,
        repairs=repairs,
        group_colors=dict(group_colors or {}),
    )


def _finish(draft: AnnotationDraft, geometry: BaseGeometry, table: Mapping[str, str]) -> Annotation:
    key = _normalise_key(draft.group)
    if key in table or not draft.label:
        label = map_label(draft.group, table)
    else:
        label = _normalise_label(draft.label)
    return Annotation(
        geometry=geometry,
        label=label,
        group=draft.group,
        name=draft.name,
        kind=draft.kind,
        source=draft.source,
        color=draft.color,
        properties=draft.properties,
    )


def _log_summary(where: str, annotations: list[Annotation], repairs: list[RepairRecord]) -> None:
    if repairs:
        fixed = sum(1 for r in repairs if r.action == "make_valid")
        dropped = sum(1 for r in repairs if r.action == "dropped")
        logger.warning(
            "%s: %d annotation geometr%s repaired with make_valid, %d dropped "
            "(see AnnotationSet.repairs)",
            where,
            fixed,
            "y" if fixed == 1 else "ies",
            dropped,
        )
        for record in repairs:
            logger.debug("%s: %s", where, record)
    negative = sum(1 for a in annotations if not a.source.is_empty and min(a.source.bounds[:2]) < 0)
    if negative:
        logger.warning(
            "%s: %d annotation(s) have negative coordinates; they are kept and will be "
            "clipped to the slide by masks",
            where,
            negative,
        )
