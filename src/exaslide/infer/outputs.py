"""Files of one slide's heatmap besides the ``.npy`` / ``.json`` pair: a colour overlay on
a thumbnail and a pyramidal TIFF. Every file is written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exaslide.heatmaps import JSON_SUFFIX, NPY_SUFFIX
from exaslide.masks.outputs import save_png, save_pyramid_tiff

#: Longest side of the overlay PNG.
OVERLAY_SIDE = 1024
#: Weight of the colour map where a cell was computed.
OVERLAY_ALPHA = 0.5
#: File name suffixes of one slide's outputs (the JSON, written last, marks completion).
SUFFIXES = {"overlay": ".overlay.png", "tiff": ".heatmap.tif", "npy": NPY_SUFFIX,
            "json": JSON_SUFFIX}


def output_paths(out_dir: str | Path, slide_id: str) -> dict[str, Path]:
    """Paths of ``slide_id``'s output files by kind (see :data:`SUFFIXES`)."""
    return {kind: Path(out_dir) / f"{slide_id}{suffix}" for kind, suffix in SUFFIXES.items()}


def to_uint8(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities as 0-255 (rounded); NaN (not computed) becomes 0."""
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


def save_heatmap_tiff(path: str | Path, probabilities: np.ndarray, cell: float,
                      mpp: tuple[float, float] | None) -> Path:
    """The heatmap as a tiled pyramidal TIFF (8-bit grey, 0-255 = probability 0-1, 0 where
    not computed) at one pixel per cell, resolution ``mpp * cell`` um/px: OpenSlide and
    QuPath open it (coarser levels keep the maximum of each 2 x 2 block)."""
    res = (mpp[0] * cell, mpp[1] * cell) if mpp else None
    return save_pyramid_tiff(path, to_uint8(probabilities), res)


def write_extra_outputs(out_dir: str | Path, slide_id: str, probabilities: np.ndarray,
                        image: np.ndarray, cell: float, level0_size: tuple[int, int],
                        mpp: tuple[float, float] | None) -> dict[str, Path]:
    """Write ``<slide_id>.overlay.png`` and ``<slide_id>.heatmap.tif``."""
    paths = output_paths(out_dir, slide_id)
    save_png(paths["overlay"], overlay_image(image, probabilities, cell, level0_size))
    save_heatmap_tiff(paths["tiff"], probabilities, cell, mpp)
    return {"overlay": paths["overlay"], "tiff": paths["tiff"]}

