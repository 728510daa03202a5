"""ASAP XML annotations (CAMELYON16/17): read and write.

Layout::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="_0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
          <Coordinates><Coordinate Order="0" X="1.5" Y="2.5" />...</Coordinates>
        </Annotation>
      </Annotations>
      <AnnotationGroups><Group Name="_0" PartOfGroup="None" Color="#00ff00" /></AnnotationGroups>
    </ASAP_Annotations>

Types: Polygon; Spline (its control points are used as polygon vertices, no curve is
interpolated); Rectangle (4 corners, or 2 opposite corners which become a box); Dot (a
Point); PointSet (a MultiPoint). ``PartOfGroup="None"`` means no group (group "").
Files are parsed with defusedxml: DTDs, entities and external references are refused.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from xml.etree.ElementTree import Element

import defusedxml
import defusedxml.ElementTree as DET

from exaslide.annotations._fileio import atomic_write_text
from exaslide.annotations._geom import (
    HOLE_GROUP,
    XY,
    Part,
    check_finite,
    flatten,
    points_source,
    polygon_source,
)
from exaslide.annotations.model import (
    EXCLUSION,
    TUMOUR,
    Annotation,
    AnnotationDraft,
    AnnotationSet,
    RepairRecord,
    build_annotation_set,
    merge_label_map,
)
from exaslide.errors import AnnotationError, HostileXMLError

logger = logging.getLogger(__name__)

ROOT_TAG = "ASAP_Annotations"
NO_GROUP = "None"
DEFAULT_ANNOTATION_COLOR = "#F4FA58"
_GROUP_COLORS = {TUMOUR: "#ff0000", EXCLUSION: "#0000ff"}
_OTHER_GROUP_COLOR = "#64fe2e"
_HOSTILE = {
    "DTDForbidden": "a DTD (<!DOCTYPE ...>)",
    "EntitiesForbidden": "entity declarations",
    "ExternalReferenceForbidden": "external references",
}
_WRITE_TYPES = {
    "polygon": "Polygon",
    "spline": "Spline",
    "rectangle": "Rectangle",
    "dot": "Dot",
    "pointset": "PointSet",
}


# --------------------------------------------------------------------------- reading


def read_asap(
    path: str | PathLike[str], *, label_map: Mapping[str, str] | None = None
) -> AnnotationSet:
    """Read an ASAP XML annotation file.

    Args:
        path: The ``.xml`` file.
        label_map: Extra ``group -> label`` entries on top of DEFAULT_LABEL_MAP.

    Returns:
        The annotations; a file with no annotations gives an empty set.

    Raises:
        HostileXMLError: The file declares a DTD, entities or external references.
        AnnotationError: The file is missing, malformed, not ASAP XML, or holds a
            non-numeric or non-finite coordinate.
    """
    path = Path(path)
    root = _parse_xml(path)
    if root.tag != ROOT_TAG:
        raise AnnotationError(
            f"{path}: root element is <{root.tag}>, expected <{ROOT_TAG}>; "
            "is this an ASAP annotation file?"
        )
    drafts: list[AnnotationDraft] = []
    skipped: list[RepairRecord] = []
    for index, elem in enumerate(root.findall("./Annotations/Annotation")):
        item = _draft(index, elem, path)
        if isinstance(item, RepairRecord):
            skipped.append(item)
        else:
            drafts.append(item)
    return build_annotation_set(
        drafts,
        path=path,
        format="asap",
        label_map=merge_label_map(label_map),
        skipped=skipped,
        group_colors=_group_colors(root),
    )


def _parse_xml(path: Path) -> Element:
    try:
        tree = DET.parse(str(path), forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        what = _HOSTILE.get(type(exc).__name__, "forbidden XML constructs")
        raise HostileXMLError(
            f"{path}: refusing to parse: the XML contains {what} ({exc}), which annotation "
            "files never need (possible billion-laughs / XXE attack); remove the DOCTYPE "
            "and entity declarations"
        ) from exc
    except ET.ParseError as exc:
        line, column = getattr(exc, "position", (0, 0))
        raise AnnotationError(
            f"{path}:{line}:{column}: malformed XML ({exc}); the file may be truncated"
        ) from exc
    except FileNotFoundError as exc:
        raise AnnotationError(f"annotation file not found: {path}") from exc
    except OSError as exc:
        raise AnnotationError(f"cannot read annotation file {path}: {exc}") from exc
    return tree.getroot()


def _group_colors(root: Element) -> dict[str, str]:
    colors: dict[str, str] = {}
    for group in root.findall("./AnnotationGroups/Group"):
        name, color = group.get("Name"), group.get("Color")
        if name and color and name != NO_GROUP:
            colors.setdefault(name, color)
    return colors


def _draft(index: int, elem: Element, path: Path) -> AnnotationDraft | RepairRecord:
    name = elem.get("Name", "")
    group = elem.get("PartOfGroup", "")
    group = "" if group == NO_GROUP else group
    type_name = elem.get("Type", "Polygon")
    where = f"{path}: annotation {index} ({name!r})"
    points = _coordinates(elem, where)
    kind = type_name.strip().lower()
    if kind in ("polygon", "spline"):
        source = polygon_source(points)
    elif kind == "rectangle":
        source = polygon_source(_rectangle(points))
    elif kind in ("dot", "pointset"):
        source = points_source(points)
    else:
        logger.warning("%s: unsupported ASAP type %r skipped", where, type_name)
        return RepairRecord(index, name, group, f"unsupported ASAP type {type_name!r}", "dropped")
    return AnnotationDraft(
        index=index,
        source=source,
        kind=kind,
        group=group,
        name=name,
        color=elem.get("Color") or None,
    )


def _rectangle(points: list[XY]) -> list[XY]:
    if len(points) != 2:
        return points
    (x0, y0), (x1, y1) = points
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _coordinates(elem: Element, where: str) -> list[XY]:
    container = elem.find("Coordinates")
    if container is None:
        return []
    rows: list[tuple[int, float, float]] = []
    for position, coord in enumerate(container.findall("Coordinate")):
        order_text = coord.get("Order")
        try:
            order = position if order_text is None else int(order_text.strip())
        except ValueError as exc:
            raise AnnotationError(
                f"{where}: coordinate {position} has Order={order_text!r}, expected an integer"
            ) from exc
        x = _number(coord.get("X"), "X", position, where)
        y = _number(coord.get("Y"), "Y", position, where)
        rows.append((order, x, y))
    rows.sort(key=lambda row: row[0])
    points = [(x, y) for _, x, y in rows]
    check_finite(points, where)
    return points


def _number(text: str | None, axis: str, position: int, where: str) -> float:
    """Parse a coordinate; a comma decimal separator ("123,5") is accepted."""
    if text is None:
        raise AnnotationError(f"{where}: coordinate {position} has no {axis} attribute")
    value = text.strip()
    if "," in value and "." not in value:
        value = value.replace(",", ".")
    try:
        return float(value)
    except ValueError as exc:
        raise AnnotationError(
            f"{where}: coordinate {position} has {axis}={text!r}, which is not a number"
        ) from exc


# --------------------------------------------------------------------------- writing


def write_asap(
    annotations: Iterable[Annotation],
    path: str | PathLike[str],
    *,
    group_colors: Mapping[str, str] | None = None,
) -> Path:
    """Write annotations (their ``source`` geometries) as ASAP XML, atomically.

    ASAP cannot store holes or multi-part polygons: each exterior ring becomes its own
    Annotation (named ``<name>#k`` when there is more than one part) and each hole becomes
    an Annotation in group ``_2`` (exclusion) named ``<name> hole k``.

    Args:
        annotations: The annotations to write.
        path: Destination ``.xml`` file.
        group_colors: Group colours for ``AnnotationGroups``.

    Returns:
        The destination path.
    """
    return atomic_write_text(Path(path), asap_xml(annotations, group_colors=group_colors))


def asap_xml(
    annotations: Iterable[Annotation], *, group_colors: Mapping[str, str] | None = None
) -> str:
    """Return the ASAP XML text for ``annotations`` (see :func:`write_asap`)."""
    colors = dict(group_colors or {})
    lines = ['<?xml version="1.0"?>', f"<{ROOT_TAG}>", "\t<Annotations>"]
    groups: dict[str, str] = {}
    for ann in annotations:
        group = ann.group or ann.label
        for part in flatten(ann.source, ann.kind, ann.name, group, ann.label):
            lines.extend(_annotation_lines(part, ann.color))
            if part.group and part.group not in groups:
                groups[part.group] = colors.get(part.group) or _default_group_color(ann, part)
    lines.append("\t</Annotations>")
    lines.append("\t<AnnotationGroups>")
    for name, color in groups.items():
        lines.append(f'\t\t<Group Name="{_attr(name)}" PartOfGroup="None" Color="{_attr(color)}">')
        lines.append("\t\t\t<Attributes />")
        lines.append("\t\t</Group>")
    lines.append("\t</AnnotationGroups>")
    lines.append(f"</{ROOT_TAG}>")
    return "\n".join(lines) + "\n"


def _default_group_color(ann: Annotation, part: Part) -> str:
    label = EXCLUSION if part.group == HOLE_GROUP and part.hole else ann.label
    return _GROUP_COLORS.get(label, ann.color or _OTHER_GROUP_COLOR)


def _annotation_lines(part: Part, color: str | None) -> list[str]:
    type_name = _WRITE_TYPES.get(part.kind, "Polygon")
    if type_name == "Rectangle" and len(part.points) != 4:
        type_name = "Polygon"
    group = part.group or NO_GROUP
    lines = [
        f'\t\t<Annotation Name="{_attr(part.name)}" Type="{type_name}" '
        f'PartOfGroup="{_attr(group)}" Color="{_attr(color or DEFAULT_ANNOTATION_COLOR)}">',
        "\t\t\t<Coordinates>",
    ]
    lines.extend(_coordinate_lines(part.points))
    lines.append("\t\t\t</Coordinates>")
    lines.append("\t\t</Annotation>")
    return lines


def _coordinate_lines(points: Sequence[XY]) -> list[str]:
    return [
        f'\t\t\t\t<Coordinate Order="{i}" X="{float(x)!r}" Y="{float(y)!r}" />'
        for i, (x, y) in enumerate(points)
    ]


_ATTR_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "\n": "&#10;",
    "\r": "&#13;",
    "\t": "&#9;",
}


def _attr(value: str) -> str:
    """Escape an attribute value; characters XML 1.0 cannot hold are removed."""
    out = []
    for ch in str(value):
        if ch in _ATTR_ESCAPES:
            out.append(_ATTR_ESCAPES[ch])
        elif ord(ch) >= 0x20:
            out.append(ch)
    return "".join(out)
