"""Periodic H&E-like textures for synthetic slides.

Each texture is a square RGB image that tiles seamlessly (noise is made in the Fourier
domain, nuclei are drawn with wrap-around), so a slide of any size can be painted by
indexing it modulo its size. Sizes are physical: nuclei have realistic diameters in
microns whatever the slide's resolution.

- ``normal``: pink eosin stroma with fibre-like streaks and sparse, small, round nuclei.
- ``tumour``: purple, crowded, large, irregular hyperchromatic nuclei (what a CNN learns).
- ``background``: near-white glass with faint noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("background", "normal", "tumour")


@dataclass(frozen=True)
class Style:
    """Colours and nuclei statistics of one tissue class."""

    base: tuple[int, int, int]  #: background stain colour (RGB)
    nucleus: tuple[int, int, int]  #: nucleus colour (RGB)
    density: float  #: nuclei per 1000 um^2
    radius_um: tuple[float, float]  #: min, max nucleus radius in microns
    elongation: float  #: max ratio of ellipse axes
    noise: float  #: amplitude of the low-frequency stain variation (0-255 scale)
    streaks: float  #: amplitude of fibre-like streaks


STYLES = {
    "background": Style((243, 242, 245), (243, 242, 245), 0.0, (1, 1), 1.0, 2.0, 0.0),
    "normal": Style((236, 168, 204), (92, 56, 140), 4.0, (2.2, 3.2), 2.5, 10.0, 9.0),
    "tumour": Style((196, 128, 190), (58, 24, 108), 10.0, (3.5, 6.0), 1.6, 14.0, 3.0),
}


def _periodic_noise(size: int, scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth periodic noise with unit standard deviation and feature size ``scale_px``."""
    freqs = np.fft.fftfreq(size)
    fy, fx = np.meshgrid(freqs, freqs, indexing="ij")
    envelope = np.exp(-((fx**2 + fy**2) * (scale_px**2)) * 2.0)
    spectrum = envelope * (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size)))
    field = np.fft.ifft2(spectrum).real
    return (field / (field.std() + 1e-9)).astype(np.float32)


def _streaks(size: int, rng: np.random.Generator, mpp: float) -> np.ndarray:
    """Anisotropic periodic noise: collagen-fibre-like streaks along one direction."""
    freqs = np.fft.fftfreq(size)
    fy, fx = np.meshgrid(freqs, freqs, indexing="ij")
    angle = rng.uniform(0, np.pi)
    along = fx * np.cos(angle) + fy * np.sin(angle)
    across = -fx * np.sin(angle) + fy * np.cos(angle)
    long_px, thin_px = 40.0 / mpp, 1.5 / mpp
    envelope = np.exp(-(along**2 * long_px**2 + across**2 * thin_px**2))
    spectrum = envelope * (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size)))
    field = np.fft.ifft2(spectrum).real
    return (field / (field.std() + 1e-9)).astype(np.float32)


def _nuclei(size: int, style: Style, mpp: float, rng: np.random.Generator) -> np.ndarray:
    """A periodic ink map in [0, 1]: filled ellipses (nuclei), softly blurred."""
    import cv2

    ink = np.zeros((size, size), np.float32)
    area_um2 = (size * mpp) ** 2
    count = rng.poisson(style.density * area_um2 / 1000.0)
    centres = rng.uniform(0, size, (count, 2))
    radii = rng.uniform(*style.radius_um, count) / mpp
    ratios = rng.uniform(1.0, style.elongation, count)
    angles = rng.uniform(0, 180, count)
    darkness = rng.uniform(0.6, 1.0, count)
    for (cx, cy), r, q, a, k in zip(centres, radii, ratios, angles, darkness, strict=True):
        axes = (max(1, round(r * np.sqrt(q))), max(1, round(r / np.sqrt(q))))
        for dx in (-size, 0, size):  # wrap-around copies keep the texture periodic
            for dy in (-size, 0, size):
                if -2 * r < cx + dx < size + 2 * r and -2 * r < cy + dy < size + 2 * r:
                    cv2.ellipse(ink, (round(cx + dx), round(cy + dy)), axes, float(a), 0, 360,
                                float(k), -1, lineType=cv2.LINE_AA)
    sigma = max(0.6, 0.4 / mpp)
    pad = int(4 * sigma) + 1  # wrap-pad, blur, crop: a periodic blur
    blurred = cv2.GaussianBlur(np.pad(ink, pad, mode="wrap"), (0, 0), sigma)
    return blurred[pad:-pad, pad:-pad]


def make_texture(kind: str, size: int, mpp: float, seed: int) -> np.ndarray:
    """A seamless ``(size, size, 3)`` uint8 texture of one tissue class.

    Args:
        kind: ``"background"``, ``"normal"`` or ``"tumour"``.
        size: side in pixels (a power of two is fastest).
        mpp: microns per pixel, which sets the physical size of nuclei and streaks.
        seed: random seed; the same arguments always give the same texture.
    """
    if kind not in STYLES:
        raise ValueError(f"unknown texture kind {kind!r}; choose one of {KINDS}")
    style = STYLES[kind]
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    base = np.asarray(style.base, np.float32)
    stain = _periodic_noise(size, 30.0 / mpp, rng)[..., None] * style.noise
    img = base + stain * np.asarray([0.4, 1.0, 0.6], np.float32)
    if style.streaks:
        img += _streaks(size, rng, mpp)[..., None] * style.streaks
    if style.density:
        ink = np.clip(_nuclei(size, style, mpp, rng), 0.0, 1.0)[..., None]
        img = img * (1 - ink) + np.asarray(style.nucleus, np.float32) * ink
    img += rng.normal(0, 2.0, img.shape).astype(np.float32)  # sensor noise
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
