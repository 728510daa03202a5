"""Files written for a label mask: PNGs, a pyramidal TIFF, the figure and a JSON summary.

Every file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.atomic import atomic_path
from exaslide.masks.label import NORMAL, TUMOUR, LabelMask
from exaslide.naming import remove_stale_temporaries

#: Colours of the overlay and figure (RGB): normal tissue green, tumour red.
CLASS_COLOURS = {NORMAL: (40, 170, 70), TUMOUR: (220, 30, 30)}
FIGURE_PANEL = 640  #: longest side of each figure panel, in pixels


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array (grey or RGB) as PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def overlay(mask: LabelMask, alpha: float = 0.45) -> np.ndarray:
    """The slide image with normal tissue tinted green and tumour red."""
    out = mask.image.astype(np.float32)
    for value, colour in CLASS_COLOURS.items():
        sel = mask.labels == value
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(colour, np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def figure(mask: LabelMask, title: str = "") -> np.ndarray:
    """Three panels side by side: slide thumbnail | normal-tissue mask | tumour mask."""
    import cv2
    from PIL import Image, ImageDraw, ImageFont

    h, w = mask.labels.shape
    scale = min(1.0, FIGURE_PANEL / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    thumb = cv2.resize(mask.image, size, interpolation=cv2.INTER_AREA)
    panels = [thumb]
    for value in (NORMAL, TUMOUR):
        binary = np.where(mask.labels == value, 255, 0).astype(np.uint8)
        small = cv2.resize(binary, size, interpolation=cv2.INTER_AREA)
        colour = np.asarray(CLASS_COLOURS[value], np.float32) / 255.0
        panels.append((small[..., None] * colour).astype(np.uint8))
    names = ["slide", "normal tissue", "tumour"]
    counts = mask.counts()
    areas = mask.areas_um2()
    for i, key in ((1, "normal"), (2, "tumour")):
        amount = f"{areas[key] / 1e6:.3g} mm2" if areas else f"{counts[key]} px"
        names[i] += f" ({amount})"
    gap, bar = 8, 34
    canvas = Image.new("RGB", (3 * size[0] + 4 * gap, size[1] + bar + gap), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=16)
    for i, (panel, name) in enumerate(zip(panels, names, strict=True)):
        x = gap + i * (size[0] + gap)
        canvas.paste(Image.fromarray(panel), (x, bar))
        draw.text((x, 8), name, fill="black", font=font)
    if title:
        draw.text((canvas.width - gap, 8), title, fill="grey", font=font, anchor="ra")
    return np.asarray(canvas)


def save_pyramid_tiff(path: str | Path, labels: np.ndarray, mpp: tuple[float, float] | None,
                      tile: int = 256) -> Path:
    """Write the label mask as a tiled pyramidal TIFF that OpenSlide opens (generic-tiff).

    Values are stored unchanged (0/1/2, 8-bit grey, deflate). Each level halves the
    previous one with a 2x2 maximum, so tumour pixels are never lost at coarse levels.
    Levels are successive pages (not SubIFDs), which is what OpenSlide expects.
    """
    with atomic_path(path) as tmp:
        write_pyramid_tiff(tmp, labels, mpp, tile)
    return Path(path)


def write_pyramid_tiff(path: str | Path, labels: np.ndarray, mpp: tuple[float, float] | None,
                       tile: int = 256, extratags: tuple = ()) -> None:
    """Write the pyramid of :func:`save_pyramid_tiff` straight to ``path`` (not atomic:
    for a path that is itself a temporary); ``extratags`` go on every page (tifffile's
    form)."""
    import tifffile

    levels = [labels]
    while max(levels[-1].shape) > tile:
        prev = levels[-1]
        h, w = (prev.shape[0] + 1) // 2 * 2, (prev.shape[1] + 1) // 2 * 2
        padded = np.zeros((h, w), np.uint8)
        padded[: prev.shape[0], : prev.shape[1]] = prev
        levels.append(padded.reshape(h // 2, 2, w // 2, 2).max(axis=(1, 3)))
    with tifffile.TiffWriter(path, bigtiff=labels.size > 2**31) as tif:
        for i, level in enumerate(levels):
            factor = labels.shape[1] / level.shape[1]
            extra: dict[str, Any] = {}
            if mpp:
                extra = {"resolution": (1e4 / (mpp[0] * factor), 1e4 / (mpp[1] * factor)),
                         "resolutionunit": "CENTIMETER"}
            tif.write(level, tile=(tile, tile), compression="zlib", photometric="minisblack",
                      subfiletype=1 if i else 0, metadata=None, extratags=extratags,
                      **extra)


def write_mask_outputs(mask: LabelMask, out_dir: str | Path, stem: str,
                       summary: dict[str, Any], pyramid: bool = True,
                       output: Callable[[str], AbstractContextManager[Path]] | None = None
                       ) -> dict[str, str]:
    """Write ``<stem>_mask.png``, ``_overlay.png``, ``_figure.png``, ``_mask.tif`` and
    ``_summary.json``; the summary is written last (it marks completion).

    Args:
        output: ``output(name)`` yields the path to write the file ``name`` to (the job
            engine's :meth:`~exaslide.jobs.SlideContext.output`); default: an atomic write
            into ``out_dir``.

    Returns:
        The written file names by kind.
    """
    from PIL import Image

    out = Path(out_dir)
    if output is None:
        remove_stale_temporaries(out / f"{stem}_{name}" for name in
                                 ("mask.png", "overlay.png", "figure.png", "mask.tif",
                                  "summary.json"))
        output = lambda name: atomic_path(out / name)  # noqa: E731
    names: dict[str, str] = {}
    images = {"mask": ("mask.png", mask.labels), "overlay": ("overlay.png", overlay(mask)),
              "figure": ("figure.png", figure(mask, stem))}
    for kind, (suffix, array) in images.items():
        names[kind] = f"{stem}_{suffix}"
        with output(names[kind]) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")
    if pyramid:
        names["mask_tiff"] = f"{stem}_mask.tif"
        with output(names["mask_tiff"]) as tmp:
            write_pyramid_tiff(tmp, mask.labels, mask.mpp)
    summary = dict(summary, outputs=dict(names))
    names["summary"] = f"{stem}_summary.json"
    with output(names["summary"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n",
                       encoding="utf-8")
    return names
