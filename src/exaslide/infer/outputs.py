"""Files of one slide's heatmap besides the ``.npy`` / ``.json`` pair: a colour overlay on
a thumbnail and a pyramidal TIFF. Every file is written atomically.

The TIFF stores ``1 + round(254 * p)`` (1-255) for a computed cell of probability ``p`` and
0 (:data:`TIFF_NODATA`, also in the ``GDAL_NODATA`` tag) for a cell not computed, so that a
probability of 0 and "not computed" differ in the file; :func:`tiff_probabilities` turns
values back into probabilities (NaN where not computed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exaslide.atomic import atomic_path
from exaslide.heatmaps import JSON_SUFFIX, NPY_SUFFIX
from exaslide.masks.outputs import save_png

#: Longest side of the overlay PNG.
OVERLAY_SIDE = 1024
#: Weight of the colour map where a cell was computed.
OVERLAY_ALPHA = 0.5
#: Value of a cell not computed in the heatmap TIFF (computed cells are 1-255).
TIFF_NODATA = 0  # must stay 0: the pyramid pads with 0 and keeps 2 x 2 maxima
#: The GDAL_NODATA TIFF tag (ASCII), read by GDAL, QGIS and tifffile.
GDAL_NODATA_TAG = 42113
#: File name suffixes of one slide's outputs (the JSON, written last, marks completion).
SUFFIXES = {"overlay": ".overlay.png", "tiff": ".heatmap.tif", "npy": NPY_SUFFIX,
            "json": JSON_SUFFIX}


def output_paths(out_dir: str | Path, slide_id: str) -> dict[str, Path]:
    """Paths of ``slide_id``'s output files by kind (see :data:`SUFFIXES`)."""
    return {kind: Path(out_dir) / f"{slide_id}{suffix}" for kind, suffix in SUFFIXES.items()}


def to_uint8(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities as 0-255 (rounded) for the overlay's colour map; NaN (not computed)
    becomes 0 (the overlay leaves those cells out; the TIFF uses :func:`tiff_values`)."""
    scaled = np.nan_to_num(np.clip(probabilities, 0.0, 1.0), nan=0.0) * 255.0
    return np.floor(scaled + 0.5).astype(np.uint8)


def overlay_image(image: np.ndarray, probabilities: np.ndarray, cell: float,
                  level0_size: tuple[int, int], max_side: int = OVERLAY_SIDE,
                  alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The heatmap in the JET colour map (blue 0, red 1) blended over ``image`` (the slide
    at low resolution, resized to fit ``max_side``); cells not computed show the slide."""
    import cv2

    width, height = level0_size
    scale = min(1.0, max_side / max(image.shape[:2]))
    tw, th = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
    thumb = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA) if scale < 1 else image
    rows, cols = probabilities.shape
    col = np.minimum(((np.arange(tw) + 0.5) * width / tw // cell).astype(np.int64), cols - 1)
    row = np.minimum(((np.arange(th) + 0.5) * height / th // cell).astype(np.int64), rows - 1)
    heat = probabilities[row[:, None], col[None, :]]
    valid = np.isfinite(heat)
    colour = cv2.cvtColor(cv2.applyColorMap(to_uint8(heat), cv2.COLORMAP_JET),
                          cv2.COLOR_BGR2RGB)
    out = thumb.astype(np.float32)
    out[valid] = (1 - alpha) * out[valid] + alpha * colour[valid].astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def tiff_values(probabilities: np.ndarray) -> np.ndarray:
    """The heatmap TIFF's uint8 values: ``1 + round(254 * p)`` for a computed cell (p
    clipped to 0-1), :data:`TIFF_NODATA` (0) where not computed (NaN)."""
    p = np.asarray(probabilities, dtype=np.float64)
    computed = np.isfinite(p)
    scaled = 1.0 + np.floor(np.clip(np.where(computed, p, 0.0), 0.0, 1.0) * 254.0 + 0.5)
    return np.where(computed, scaled, TIFF_NODATA).astype(np.uint8)


def tiff_probabilities(values: np.ndarray) -> np.ndarray:
    """Probabilities (float32) of heatmap TIFF values: ``(v - 1) / 254``, NaN where ``v``
    is :data:`TIFF_NODATA` (the inverse of :func:`tiff_values`, to 1/508)."""
    v = np.asarray(values, dtype=np.float32)
    return np.where(v == TIFF_NODATA, np.nan, (v - 1.0) / 254.0).astype(np.float32)


def save_heatmap_tiff(path: str | Path, probabilities: np.ndarray, cell: float,
                      mpp: tuple[float, float] | None, tile: int = 256) -> Path:
    """The heatmap as a tiled pyramidal TIFF at one pixel per cell, resolution
    ``mpp * cell`` um/px (8-bit grey, deflate, levels as successive pages: OpenSlide's
    generic-tiff and QuPath open it). Values: :func:`tiff_values` (0 = not computed,
    recorded in the ``GDAL_NODATA`` tag). Coarser levels keep the maximum of each 2 x 2
    block, which is a computed cell's value wherever one of the four was computed."""
    from exaslide.masks.outputs import write_pyramid_tiff

    nodata = ((GDAL_NODATA_TAG, "s", 0, str(TIFF_NODATA), True),)
    cell_mpp = (mpp[0] * cell, mpp[1] * cell) if mpp else None
    with atomic_path(path) as tmp:
        write_pyramid_tiff(tmp, tiff_values(probabilities), cell_mpp, tile, extratags=nodata)
    return Path(path)


def write_extra_outputs(out_dir: str | Path, slide_id: str, probabilities: np.ndarray,
                        image: np.ndarray, cell: float, level0_size: tuple[int, int],
                        mpp: tuple[float, float] | None) -> dict[str, Path]:
    """Write ``<slide_id>.overlay.png`` and ``<slide_id>.heatmap.tif``."""
    paths = output_paths(out_dir, slide_id)
    save_png(paths["overlay"], overlay_image(image, probabilities, cell, level0_size))
    save_heatmap_tiff(paths["tiff"], probabilities, cell, mpp)
    return {"overlay": paths["overlay"], "tiff": paths["tiff"]}

