"""Read, repair, relabel and write slide annotations.

Formats: ASAP XML (CAMELYON), QuPath GeoJSON, NCRF JSON (read only) and vertex tables
(CSV / TXT / TSV). Every reader returns an :class:`AnnotationSet` of :class:`Annotation`
objects whose ``geometry`` is valid (repaired with ``shapely.make_valid`` when needed) and
whose ``source`` is the geometry exactly as stored, which the writers write back.

Example:
    >>> from exaslide.annotations import read_annotations, TUMOUR, EXCLUSION
    >>> ann = read_annotations("test_040.xml")  # doctest: +SKIP
    >>> lesion = ann.union(TUMOUR).difference(ann.union(EXCLUSION))  # doctest: +SKIP
"""

from exaslide.annotations.asap import read_asap, write_asap
from exaslide.annotations.geojson import read_geojson, write_geojson
from exaslide.annotations.io import FORMATS, read_annotations, write_annotations
from exaslide.annotations.model import (
    DEFAULT_LABEL_MAP,
    EXCLUSION,
    TUMOUR,
    Annotation,
    AnnotationSet,
    RepairRecord,
    load_label_map,
    map_label,
    merge_label_map,
    repair_geometry,
)
from exaslide.annotations.ncrf import read_ncrf
from exaslide.annotations.table import read_table, write_table

__all__ = [
    "DEFAULT_LABEL_MAP",
    "EXCLUSION",
    "FORMATS",
    "TUMOUR",
    "Annotation",
    "AnnotationSet",
    "RepairRecord",
    "load_label_map",
    "map_label",
    "merge_label_map",
    "read_annotations",
    "read_asap",
    "read_geojson",
    "read_ncrf",
    "read_table",
    "repair_geometry",
    "write_annotations",
    "write_asap",
    "write_geojson",
    "write_table",
]
