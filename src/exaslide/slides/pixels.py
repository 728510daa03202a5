"""Pixel conversions shared by every backend: everything becomes ``(H, W, 3)`` uint8 RGB."""

from __future__ import annotations

import numpy as np


def channel_min_max(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ``min(R,G,B)`` and ``max(R,G,B)`` (element-wise, much faster than numpy's
    reductions over a length-3 last axis)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.minimum(np.minimum(r, g), b), np.maximum(np.maximum(r, g), b)


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite straight (un-premultiplied) RGBA on white; fully transparent is white."""
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        if rgba.dtype == np.uint8 and rgba.ndim == 3:  # what every reader gives
            import cv2  # here: importing exaslide.slides stays cheap

            # cv2 drops alpha about 3x faster than copying numpy's strided view
            return cv2.cvtColor(np.ascontiguousarray(rgba), cv2.COLOR_RGBA2RGB)
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha[..., None].astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)


def stretch_to_uint8(img: np.ndarray, lo: float | None = None,
                     hi: float | None = None) -> np.ndarray:
    """Scale any numeric image linearly from ``[lo, hi]`` (default: its min and max) to
    0..255; 8-bit images without explicit bounds are returned unchanged."""
    if img.dtype == np.uint8 and lo is None and hi is None:
        return img
    lo = float(img.min()) if lo is None else lo
    hi = float(img.max()) if hi is None else hi
    scaled = (img.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def to_rgb(img: np.ndarray) -> np.ndarray:
    """Grey ``(H, W)`` / ``(H, W, 1)``, grey+alpha, RGB or RGBA of any dtype to RGB uint8."""
    if img.ndim == 2:
        img = img[..., None]
    channels = img.shape[2]
    if img.dtype != np.uint8:
        colour = img[..., : 1 if channels <= 2 else 3]
        alpha = img[..., -1:] if channels in (2, 4) else None
        img = stretch_to_uint8(colour)
        if alpha is not None:
            img = np.concatenate([img, stretch_to_uint8(alpha)], axis=2)
        channels = img.shape[2]
    if channels == 2:  # grey + alpha
        img = np.concatenate([np.repeat(img[..., :1], 3, axis=2), img[..., 1:]], axis=2)
        channels = 4
    if channels == 1:
        return np.repeat(img, 3, axis=2)
    if channels == 4:
        return rgba_to_rgb(img)
    return np.ascontiguousarray(img[..., :3])
