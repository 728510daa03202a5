"""Files written for a label mask: PNGs, a pyramidal TIFF, the figure and a JSON summary.

Every file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.atomic import atomic_path, write_text
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
    import tifffile

    levels = [labels]
    while max(levels[-1].shape) > tile:
        prev = levels[-1]
        h, w = (prev.shape[0] + 1) // 2 * 2, (prev.shape[1] + 1) // 2 * 2
        padded = np.zeros((h, w), np.uint8)
        padded[: prev.shape[0], : prev.shape[1]] = prev
        levels.append(padded.reshape(h // 2, 2, w // 2, 2).max(axis=(1, 3)))
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=labels.size > 2**31) as tif:
        for i, level in enumerate(levels):
            factor = labels.shape[1] / level.shape[1]
            extra: dict[str, Any] = {}
            if mpp:
                extra = {"resolution": (1e4 / (mpp[0] * factor), 1e4 / (mpp[1] * factor)),
                         "resolutionunit": "CENTIMETER"}
            tif.write(level, tile=(tile, tile), compression="zlib", photometric="minisblack",
                      subfiletype=1 if i else 0, metadata=None, **extra)
    return Path(path)


def write_mask_outputs(mask: LabelMask, out_dir: str | Path, stem: str,
                       summary: dict[str, Any], pyramid: bool = True) -> dict[str, Path]:
    """Write ``<stem>_mask.png``, ``_overlay.png``, ``_figure.png``, ``_mask.tif`` and
    ``_summary.json`` into ``out_dir``; the summary is written last (it marks completion).

    Returns:
        The written paths by kind.
    """
    out = Path(out_dir)
    remove_stale_temporaries(out / f"{stem}_{name}" for name in
                             ("mask.png", "overlay.png", "figure.png", "mask.tif",
                              "summary.json"))
    paths = {
        "mask": save_png(out / f"{stem}_mask.png", mask.labels),
        "overlay": save_png(out / f"{stem}_overlay.png", overlay(mask)),
        "figure": save_png(out / f"{stem}_figure.png", figure(mask, stem)),
    }
    if pyramid:
        paths["mask_tiff"] = save_pyramid_tiff(out / f"{stem}_mask.tif", mask.labels, mask.mpp)
    summary = dict(summary, outputs={k: p.name for k, p in paths.items()})
    paths["summary"] = write_text(out / f"{stem}_summary.json",
                                  json.dumps(summary, indent=2, sort_keys=False) + "\n")
    return paths
