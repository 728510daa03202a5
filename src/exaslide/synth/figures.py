"""Synthetic "PubMed Central" figures: small pathology images with captions.

Each figure shows a known combination of

- tissue: ``tumour`` (metastatic carcinoma: crowded large purple nuclei), ``lymph_node``
  (normal lymph node: dense small round lymphocytes), ``adipose`` (empty fat cells with
  thin pink membranes) or ``necrosis`` (pale mottled eosin with nuclear debris);
- stain: ``he`` (haematoxylin and eosin) or ``ihc`` (brown DAB on blue haematoxylin);
- magnification: ``low`` or ``high`` (the physical scale of the texture: 2 vs 0.5 um/px),

and its caption names them in varied natural sentences made from templates. The folder
holds the PNG files, ``captions.jsonl`` (``figure_id``, ``image``, ``caption``,
``tissue``, ``stain``, ``magnification``) and ``captions.csv`` (same columns).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from exaslide.atomic import atomic_path, write_text
from exaslide.synth.slide import SynthError
from exaslide.synth.texture import STYLES, Style, _nuclei, _periodic_noise, make_texture

TISSUES = ("tumour", "lymph_node", "adipose", "necrosis")
STAINS = ("he", "ihc")
MAGNIFICATIONS = ("low", "high")
MPP = {"low": 2.0, "high": 0.5}
MAX_FIGURE_SIDE = 4096  #: largest height or width of a synthetic figure
COLUMNS = ("figure_id", "image", "caption", "tissue", "stain", "magnification")

_LYMPH = Style((214, 160, 200), (60, 40, 120), 28.0, (2.0, 2.6), 1.15, 8.0, 0.0)
_NECROSIS = Style((232, 160, 196), (120, 64, 140), 9.0, (0.5, 1.1), 1.3, 22.0, 0.0)

TISSUE_WORDS = {
    "tumour": ["metastatic carcinoma", "tumour", "metastatic breast carcinoma",
               "malignant tumour cells", "a tumour deposit"],
    "lymph_node": ["normal lymph node tissue", "a benign lymph node",
                   "reactive lymphoid tissue", "normal lymph node"],
    "adipose": ["adipose tissue", "fat", "mature adipocytes", "perinodal fat"],
    "necrosis": ["necrosis", "necrotic tissue", "an area of tumour necrosis",
                 "coagulative necrosis"],
}
STAIN_WORDS = {
    "he": ["H&E", "haematoxylin and eosin", "hematoxylin-eosin stain", "H&E stain"],
    "ihc": ["immunohistochemistry", "IHC", "immunohistochemical staining (DAB)",
            "cytokeratin immunostain"],
}
MAG_WORDS = {
    "low": ["x4", "low magnification", "low power", "x10"],
    "high": ["x40", "high magnification", "high power", "x20 objective"],
}
TEMPLATES = [
    "{T}, {s}, {m}.",
    "Photomicrograph of {t} stained with {s} at {m}.",
    "{S} section showing {t} ({m}).",
    "Representative image of {t}; {s}, original magnification {m}.",
    "Figure: {t}, {s} ({m}).",
    "Histology at {m} reveals {t} ({s}).",
    "{S} stained {t} at {m}.",
    "{T} ({s}, {m}).",
]


def _painted(tissue: str, size: int, mpp: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb float32, ink)`` of one tissue: ``ink`` in [0, 1] marks nuclei (for IHC)."""
    rng = np.random.default_rng([seed, TISSUES.index(tissue), 7])
    if tissue == "tumour":
        rgb = make_texture("tumour", size, mpp, seed).astype(np.float32)
        style = STYLES["tumour"]
        dark = np.asarray(style.nucleus, np.float32)
        ink = np.clip(1 - np.abs(rgb - dark).mean(-1) / 80.0, 0, 1)
        return rgb, ink
    if tissue == "adipose":
        return _adipose(size, mpp, rng)
    style = _LYMPH if tissue == "lymph_node" else _NECROSIS
    base = np.asarray(style.base, np.float32)
    rgb = base + _periodic_noise(size, 25.0 / mpp, rng)[..., None] * style.noise \
        * np.asarray([0.5, 1.0, 0.6], np.float32)
    ink = np.clip(_nuclei(size, style, mpp, rng), 0.0, 1.0)
    rgb = rgb * (1 - ink[..., None]) + np.asarray(style.nucleus, np.float32) * ink[..., None]
    return rgb, ink


def _adipose(size: int, mpp: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fat cells: a periodic Voronoi tessellation with thin pink membranes."""
    cell_px = 70.0 / mpp
    count = max(4, int((size / cell_px) ** 2 * 1.3))
    points = rng.uniform(0, size, (count, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d1 = np.full((size, size), np.inf, np.float32)
    d2 = np.full((size, size), np.inf, np.float32)
    for py, px in points:
        dy = np.abs(yy - py)
        dx = np.abs(xx - px)
        d = np.hypot(np.minimum(dy, size - dy), np.minimum(dx, size - dx))
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    membrane = np.clip(1 - (d2 - d1) / max(1.0, 1.5 / mpp), 0, 1)
    rgb = np.full((size, size, 3), (246, 240, 246), np.float32)
    rgb = rgb * (1 - membrane[..., None]) + np.asarray((214, 130, 180), np.float32) \
        * membrane[..., None]
    return rgb, membrane * 0.3


def _ihc(rgb: np.ndarray, ink: np.ndarray, tissue: str, size: int, mpp: float,
         rng: np.random.Generator) -> np.ndarray:
    """Recolour as IHC: blue haematoxylin counterstain, brown DAB where the marker is."""
    light = np.clip(rgb.mean(-1) / 255.0, 0, 1)[..., None]
    out = np.asarray((235, 236, 242), np.float32) * light + (1 - light) * 40
    blue = np.asarray((70, 80, 150), np.float32)
    out = out * (1 - ink[..., None]) + blue * ink[..., None]
    strength = {"tumour": 0.85, "lymph_node": 0.35, "adipose": 0.15, "necrosis": 0.3}[tissue]
    field = _periodic_noise(size, 12.0 / mpp, rng)
    dab = np.clip((field + 1.0) * 0.5, 0, 1) * strength * (1 - 0.6 * ink)
    brown = np.asarray((150, 95, 45), np.float32)
    return out * (1 - dab[..., None]) + brown * dab[..., None]


def paint_figure(tissue: str, stain: str, magnification: str, size: tuple[int, int],
                 seed: int) -> np.ndarray:
    """One ``(height, width, 3)`` uint8 figure of a tissue, stain and magnification."""
    height, width = size
    side = 1 << int(np.ceil(np.log2(max(height, width, 16))))
    mpp = MPP[magnification]
    rgb, ink = _painted(tissue, side, mpp, seed)
    rng = np.random.default_rng([seed, 11])
    if stain == "ihc":
        rgb = _ihc(rgb, ink, tissue, side, mpp, rng)
    rgb = rgb + rng.normal(0, 2.0, rgb.shape)
    return np.clip(rgb[:height, :width] + 0.5, 0, 255).astype(np.uint8)


def make_caption(tissue: str, stain: str, magnification: str,
                 rng: np.random.Generator) -> str:
    """A natural caption naming the tissue, stain and magnification (random template)."""
    t = TISSUE_WORDS[tissue][rng.integers(len(TISSUE_WORDS[tissue]))]
    s = STAIN_WORDS[stain][rng.integers(len(STAIN_WORDS[stain]))]
    m = MAG_WORDS[magnification][rng.integers(len(MAG_WORDS[magnification]))]
    text = TEMPLATES[rng.integers(len(TEMPLATES))]
    return text.format(t=t, s=s, m=m, T=t[0].upper() + t[1:], S=s[0].upper() + s[1:])


def make_figures(out_dir: str | os.PathLike, n: int, seed: int = 0,
                 size: tuple[int, int] = (192, 256)) -> Path:
    """Write ``n`` synthetic figures with captions into ``out_dir``; deterministic for a seed.

    Args:
        out_dir: the folder (created); figures go to ``images/fig_00000.png`` ...
        n: number of figures; combinations are drawn at random for each figure.
        seed: random seed.
        size: ``(height, width)`` of each figure in pixels, each side 16 to
            :data:`MAX_FIGURE_SIDE`.

    Returns:
        The folder.

    Raises:
        SynthError: a figure size out of range or ``n < 1``, before anything is written.
    """
    from PIL import Image

    if not all(16 <= int(side) <= MAX_FIGURE_SIDE for side in size) or len(size) != 2:
        raise SynthError(f"figure size {tuple(size)} must be (height, width), each side from "
                         f"16 to {MAX_FIGURE_SIDE} pixels")
    if n < 1:
        raise SynthError(f"make at least one figure, not {n}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        tissue = TISSUES[rng.integers(len(TISSUES))]
        stain = STAINS[rng.integers(len(STAINS))]
        mag = MAGNIFICATIONS[rng.integers(len(MAGNIFICATIONS))]
        fig_seed = int(rng.integers(2**31))
        name = f"images/fig_{i:05d}.png"
        with atomic_path(out / name) as tmp:
            Image.fromarray(paint_figure(tissue, stain, mag, size, fig_seed)).save(tmp)
        rows.append({"figure_id": f"fig_{i:05d}", "image": name,
                     "caption": make_caption(tissue, stain, mag, rng),
                     "tissue": tissue, "stain": stain, "magnification": mag})
    write_text(out / "captions.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "captions.csv", table.getvalue())
    return out
