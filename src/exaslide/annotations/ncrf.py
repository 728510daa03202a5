"""NCRF JSON annotations (baidu-research/NCRF ``camelyon16xml2json`` output): read only.

Layout: ``{"positive": [{"name": "_0", "vertices": [[x, y], ...]}, ...], "negative": [...]}``.
Positive polygons get group "positive" (label tumour), negative ones group "negative"
(label exclusion). Annotation indices run over the positive list, then the negative one.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from exaslide.annotations._geom import XY, check_finite, polygon_source
from exaslide.annotations.geojson import load_json
from exaslide.annotations.model import (
    AnnotationDraft,
    AnnotationSet,
    build_annotation_set,
    merge_label_map,
)
from exaslide.errors import AnnotationError

NCRF_KEYS = ("positive", "negative")


def is_ncrf(data: Any) -> bool:
    """True when ``data`` looks like NCRF JSON (an object with positive/negative lists)."""
    return isinstance(data, dict) and "type" not in data and any(key in data for key in NCRF_KEYS)


def read_ncrf(
    path: str | PathLike[str], *, label_map: Mapping[str, str] | None = None
) -> AnnotationSet:
    """Read an NCRF JSON annotation file.

    Args:
        path: The ``.json`` file.
        label_map: Extra ``group -> label`` entries on top of DEFAULT_LABEL_MAP.

    Returns:
        The annotations (kind "polygon").

    Raises:
        AnnotationError: The file is missing, not valid JSON or not NCRF JSON.
    """
    path = Path(path)
    return parse_ncrf(load_json(path), path, label_map=label_map)


def parse_ncrf(
    data: Any, path: str | PathLike[str] | None, *, label_map: Mapping[str, str] | None = None
) -> AnnotationSet:
    """Build an AnnotationSet from already-loaded NCRF JSON (see :func:`read_ncrf`)."""
    where = str(path) if path is not None else "<ncrf>"
    if not is_ncrf(data):
        raise AnnotationError(
            f"{where}: expected an NCRF JSON object with 'positive' / 'negative' lists"
        )
    drafts: list[AnnotationDraft] = []
    for group in NCRF_KEYS:
        items = data.get(group) or []
        if not isinstance(items, list):
            raise AnnotationError(f"{where}: '{group}' must be a list of polygons")
        for position, item in enumerate(items):
            drafts.append(_draft(len(drafts), group, position, item, where))
    return build_annotation_set(
        drafts, path=path, format="ncrf", label_map=merge_label_map(label_map)
    )


def _draft(index: int, group: str, position: int, item: Any, where: str) -> AnnotationDraft:
    context = f"{where}: {group}[{position}]"
    if not isinstance(item, dict):
        raise AnnotationError(f"{context}: expected an object with 'name' and 'vertices'")
    name = "" if item.get("name") is None else str(item["name"])
    context = f"{context} ({name!r})"
    vertices = item.get("vertices")
    if not isinstance(vertices, list):
        raise AnnotationError(f"{context}: 'vertices' must be a list of [x, y] pairs")
    points: list[XY] = []
    for vertex in vertices:
        if (
            not isinstance(vertex, list | tuple)
            or len(vertex) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vertex)
        ):
            raise AnnotationError(f"{context}: vertex {vertex!r} is not an [x, y] number pair")
        points.append((float(vertex[0]), float(vertex[1])))
    check_finite(points, context)
    return AnnotationDraft(
        index=index, source=polygon_source(points), kind="polygon", group=group, name=name
    )
