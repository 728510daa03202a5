"""Export exaslide's results to other tools: QuPath GeoJSON (see docs/qupath.md).

Example:
    >>> from exaslide.annotations import read_annotations
    >>> from exaslide.export import export_geojson
    >>> export_geojson("tumor_001.geojson",
    ...                annotations=read_annotations("tumor_001.xml"))  # doctest: +SKIP
"""

from exaslide.export.geojson import (
    Detection,
    ExportError,
    ExportSummary,
    annotation_features,
    detection_features,
    export_geojson,
    heatmap_features,
    tissue_features,
    tumour_region,
    write_features,
)
from exaslide.export.inputs import folder_inputs, read_detections
from exaslide.export.tissue import mask_polygons, tissue_polygons

__all__ = [
    "Detection",
    "ExportError",
    "ExportSummary",
    "annotation_features",
    "detection_features",
    "export_geojson",
    "folder_inputs",
    "heatmap_features",
    "mask_polygons",
    "read_detections",
    "tissue_features",
    "tissue_polygons",
    "tumour_region",
    "write_features",
]
