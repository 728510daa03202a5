"""The viewer's overlays as the front end draws them: heatmaps and masks as RGBA PNG images
placed by level-0 ``bounds``, annotations, patch points and FROC detections as GeoJSON in
level-0 pixels.

Every function reads one file the discovery found (never a path from a request) and
returns bytes or a JSON-ready dict; the server caches them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

#: Colour maps: tumour probability and MIL attention.
PROBABILITY_COLORMAP = "turbo"
ATTENTION_COLORMAP = "viridis"
#: RGBA of mask values: background transparent, normal green, tumour red, others grey.
MASK_COLORS = {0: (0, 0, 0, 0), 1: (46, 160, 67, 110), 2: (220, 30, 30, 170)}
OTHER_MASK_COLOR = (128, 128, 128, 140)
#: Largest side of a mask image sent to the browser (a finer pyramid level is skipped).
MAX_MASK_SIDE = 4096
#: Most patch points sent for one slide (a uniform subsample beyond it).
MAX_PATCH_POINTS = 200_000
FROC_COLORS = {"tp": "#1a9850", "fp": "#d73027"}


def png_bytes(rgba: np.ndarray) -> bytes:
    """An ``(h, w, 4)`` or ``(h, w, 3)`` uint8 array as PNG bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba)).save(out, "PNG")
    return out.getvalue()


# ----------------------------------------------------------------------------- heatmaps
def read_heatmap_file(json_path: str):
    """The :class:`~exaslide.heatmaps.Heatmap` of a ``<id>.heatmap.json`` file."""
    from exaslide.heatmaps import read_heatmap

    path = Path(json_path)
    return read_heatmap(path.parent, path.name[: -len(".heatmap.json")])


def heatmap_info(heatmap) -> dict[str, Any]:
    """Colour map, value range and level-0 ``bounds`` ``[x, y, w, h]`` of a heatmap."""
    attention = heatmap.meta.get("score") == "attention"
    values = heatmap.probabilities[np.isfinite(heatmap.probabilities)]
    if attention and values.size:
        vmin, vmax = float(values.min()), float(values.max())
        if vmax <= vmin:
            vmax = vmin + 1.0
    else:
        vmin, vmax = 0.0, 1.0
    rows, cols = heatmap.shape
    x0, y0 = heatmap.origin
    return {"colormap": ATTENTION_COLORMAP if attention else PROBABILITY_COLORMAP,
            "vmin": vmin, "vmax": vmax, "score": "attention" if attention else "probability",
            "bounds": [x0, y0, cols * heatmap.cell, rows * heatmap.cell],
            "shape": [rows, cols]}


def heatmap_png(heatmap, info: dict[str, Any]) -> bytes:
    """One pixel per cell, coloured by ``info``'s colour map; alpha 0 where not computed
    (NaN)."""
    import matplotlib

    values = heatmap.probabilities.astype(np.float64)
    finite = np.isfinite(values)
    scaled = np.clip((np.where(finite, values, 0.0) - info["vmin"])
                     / (info["vmax"] - info["vmin"]), 0.0, 1.0)
    rgba = (matplotlib.colormaps[info["colormap"]](scaled) * 255).round().astype(np.uint8)
    rgba[..., 3] = np.where(finite, 255, 0)
    return png_bytes(rgba)


def colorbar_png(colormap: str, width: int = 256, height: int = 16) -> bytes:
    """A horizontal colour bar of ``colormap``, low values on the left."""
    import matplotlib

    ramp = np.linspace(0.0, 1.0, width)[None, :].repeat(height, axis=0)
    rgba = (matplotlib.colormaps[colormap](ramp) * 255).round().astype(np.uint8)
    return png_bytes(rgba)


# -------------------------------------------------------------------------------- masks
def mask_overlay(path: str, slide_dimensions: tuple[int, int]) -> tuple[bytes, list[float]]:
    """A label mask (``<id>_mask.tif``, values 0/1/2) as an RGBA PNG and its level-0
    ``bounds``, from the finest pyramid level whose sides are at most
    :data:`MAX_MASK_SIDE` (the coarsest level when none is)."""
    from exaslide.slides import open_slide

    with open_slide(path) as mask:
        level = mask.level_count - 1
        for i, (w, h) in enumerate(mask.level_dimensions):
            if max(w, h) <= MAX_MASK_SIDE:
                level = i
                break
        values = mask.read_level(level)[..., 0]
        width = mask.dimensions[0]
        level_downsample = mask.level_downsamples[level]
    downsample = _mask_downsample(path) or slide_dimensions[0] / width
    rgba = np.zeros((*values.shape, 4), dtype=np.uint8)
    rgba[...] = OTHER_MASK_COLOR
    for value, color in MASK_COLORS.items():
        rgba[values == value] = color
    scale = downsample * level_downsample
    return png_bytes(rgba), [0.0, 0.0, values.shape[1] * scale, values.shape[0] * scale]


def _mask_downsample(mask_path: str) -> float | None:
    """The mask's downsample from its ``<id>_summary.json`` (written beside it)."""
    summary = Path(mask_path[: -len("_mask.tif")] + "_summary.json")
    try:
        value = json.loads(summary.read_text(encoding="utf-8"))["mask"]["downsample"]
        return float(value) if value and math.isfinite(float(value)) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------ vector layers
def annotations_geojson(path: str) -> str:
    """An annotation file (ASAP XML, GeoJSON, NCRF, table) as GeoJSON text with each
    feature's class name and colour (QuPath's layout)."""
    from exaslide.annotations import read_annotations
    from exaslide.annotations.geojson import geojson_text

    annotations = read_annotations(path)
    return geojson_text(annotations, group_colors=annotations.group_colors)


def patches_geojson(table_path: str, predictions_path: str | None,
                    source_id: str) -> dict[str, Any]:
    """The patch index of one slide as GeoJSON points at the patch centres, with
    ``label`` and, from ``patch_predictions.csv``, ``prediction`` and ``score``."""
    import pyarrow.parquet as pq

    table = pq.read_table(table_path)
    names = set(table.column_names)
    columns = {name: table.column(name).to_pylist() for name in
               ("key", "x", "y", "footprint", "size", "label") if name in names}
    n = table.num_rows
    predictions = _predictions(predictions_path, source_id) if predictions_path else {}
    step = max(1, math.ceil(n / MAX_PATCH_POINTS))
    features = []
    for i in range(0, n, step):
        side = columns.get("footprint", columns.get("size", [0] * n))[i] or 0
        x = float(columns["x"][i]) + float(side) / 2
        y = float(columns["y"][i]) + float(side) / 2
        props: dict[str, Any] = {"label": columns.get("label", [None] * n)[i],
                                 "size": float(side)}
        key = columns.get("key", [None] * n)[i]
        if key in predictions:
            props["prediction"], props["score"] = predictions[key]
        features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]},
                         "properties": props})
    return {"type": "FeatureCollection", "features": features}


def _predictions(path: str, source_id: str) -> dict[str, tuple[str, float | None]]:
    out = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("slide_id") == source_id and row.get("key"):
                out[row["key"]] = (row.get("label"), _number(row.get("score")))
    return out


def froc_geojson(path: str, source_id: str) -> dict[str, Any]:
    """The FROC detections of one slide (``detections.csv``) as GeoJSON points with their
    ``outcome`` (tp, fp...), probability ``p`` and a colour."""
    features = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("slide_id") != source_id:
                continue
            x, y = _number(row.get("x")), _number(row.get("y"))
            if x is None or y is None:
                continue
            outcome = (row.get("outcome") or "").lower()
            features.append({"type": "Feature",
                             "geometry": {"type": "Point", "coordinates": [x, y]},
                             "properties": {"outcome": outcome, "p": _number(row.get("p")),
                                            "lesion": row.get("lesion"),
                                            "color": FROC_COLORS.get(outcome, "#999999")}})
    return {"type": "FeatureCollection", "features": features}


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
