"""A PNG grid of a query and its hits, each titled with its id, label and score."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from exaslide.atomic import atomic_path

logger = logging.getLogger(__name__)


def hit_title(hit) -> str:
    """``<slide or figure id> (x, y)`` / ``label`` / ``score`` of a hit."""
    meta = hit.meta
    name = meta.get("figure_id") or meta.get("slide_id") or meta.get("key") or hit.id
    where = f" ({meta['x']}, {meta['y']})" if meta.get("x") is not None else ""
    label = meta.get("label")
    return f"{name}{where}\n{label if label not in (None, '') else '-'}  {hit.score:.3f}"


def hit_image(index, hit) -> np.ndarray | None:
    """The pixels of a hit: the patch read from its slide (path from the hit's row or the
    index's ``slides`` mapping) or the figure file; None when they cannot be found."""
    from exaslide.retrieval.search import read_image

    meta = hit.meta
    try:
        if meta.get("x") is not None and meta.get("slide_id") is not None:
            path = (meta.get("slide_path") or meta.get("path")
                    or index.info.get("slides", {}).get(str(meta["slide_id"])))
            if not path:
                return None
            from exaslide.slides import open_slide

            patch = index.info.get("store", {}).get("patch") or {}
            size = int(meta.get("size") or patch.get("size") or 224)
            with open_slide(path) as slide:
                if patch.get("mpp") is not None and meta.get("level") is None:
                    return slide.read_region((meta["x"], meta["y"]), (size, size),
                                             mpp=patch["mpp"])
                return slide.read_region((meta["x"], meta["y"]), (size, size),
                                         level=int(meta.get("level") or 0))
        if meta.get("path"):
            return read_image(meta["path"])
    except Exception as exc:  # a missing picture must not stop the gallery
        logger.warning("hit %s: no image (%s)", hit.id, exc)
    return None


def write_gallery(query_image: np.ndarray | None, hits, path: str | os.PathLike,
                  images_for_hits) -> Path:
    """Write a PNG grid: the query, then each hit with its title.

    Args:
        query_image: ``(H, W, 3)`` uint8, or None (a text query: a blank panel).
        hits: the hits of one query.
        path: the PNG file to write (atomically).
        images_for_hits: one image (or None) per hit, or a callable ``hit -> image``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    images = [images_for_hits(h) for h in hits] if callable(images_for_hits) \
        else list(images_for_hits)
    panels = [(query_image, "query")] + [(im, hit_title(h)) for im, h in
                                         zip(images, hits, strict=True)]
    cols = min(6, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, title) in zip(axes.ravel(), panels, strict=False):
        if image is None:
            ax.text(0.5, 0.5, "no image", ha="center", va="center")
        else:
            ax.imshow(np.asarray(image))
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out
