"""Query vectors for an index: embed an image, a slide region or a text.

The model is the one recorded in the index (``info["store"]["model_path"]``), with the
patch size, level or mpp and normalisation of the store (or of the model's metadata).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from exaslide.errors import RetrievalError

MAX_CELLS = 1024


@lru_cache(maxsize=4)
def _load(model_path: str):
    from exaslide.models import load_model

    return load_model(model_path)


def query_model(index) -> tuple[Any, dict[str, Any]]:
    """``(model, spec)`` for image queries: spec has ``size``, ``level``, ``mpp``, ``mean``
    and ``std``.

    Raises:
        RetrievalError: the index does not record a model file, or it cannot be loaded.
    """
    store = index.info.get("store", {})
    path = store.get("model_path")
    if not path:
        raise RetrievalError("the index records no model file (its store's model_path is "
                             "empty), so images cannot be embedded; query with vectors")
    if not os.path.exists(path):
        raise RetrievalError(f"{path}: the index's model file is missing; image queries "
                             "need the model that embedded the store")
    model, meta = _load(str(path))
    patch = store.get("patch") or meta.get("patch") or {}
    if not patch.get("size"):
        raise RetrievalError(f"{path}: neither the store nor the model records a patch size")
    spec = {"size": int(patch["size"]), "level": patch.get("level"), "mpp": patch.get("mpp"),
            "mean": store.get("mean", meta.get("mean")), "std": store.get("std",
                                                                          meta.get("std"))}
    return model, spec


def fit_patch(image: np.ndarray, size: int) -> np.ndarray:
    """Scale the shorter side to ``size`` and crop the centre to ``size x size``."""
    import cv2

    h, w = image.shape[:2]
    scale = size / min(h, w)
    if (h, w) != (size, size):
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
        top, left = (nh - size) // 2, (nw - size) // 2
        image = image[top:top + size, left:left + size]
    return np.ascontiguousarray(image)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB.

    Raises:
        RetrievalError: unreadable file.
    """
    import cv2

    data = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if data is None:
        raise RetrievalError(f"{path}: not a readable image file")
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)


def _embed_patches(model, spec, patches: list[np.ndarray]) -> np.ndarray:
    import torch

    from exaslide.augment.pipeline import to_float
    from exaslide.models import forward_features

    batch = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        x = to_float(batch, spec["mean"], spec["std"])
        return forward_features(model, x).float().cpu().numpy()


def _as_rgb(image) -> np.ndarray:
    if isinstance(image, str | os.PathLike):
        image = read_image(image)
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise RetrievalError(f"expected an (H, W, 3) uint8 image, got {image.shape} "
                             f"{image.dtype}")
    return image[:, :, :3]


def embed_image(index, image) -> np.ndarray:
    """The ``(D,)`` embedding of an image (``(H, W, 3)`` uint8 or a file path), resized
    and centre-cropped to the model's patch size."""
    model, spec = query_model(index)
    return _embed_patches(model, spec, [fit_patch(_as_rgb(image), spec["size"])])[0]


def embed_region(index, slide_path: str | os.PathLike, x: int, y: int, w: int,
                 h: int) -> np.ndarray:
    """The ``(D,)`` embedding of a slide region (level-0 pixels), read at the model's
    patch resolution; a region larger than one patch is tiled into patch cells whose
    embeddings are averaged.

    Raises:
        RetrievalError: an empty region or one of more than 1,024 cells.
    """
    from exaslide.slides import open_slide

    if w < 1 or h < 1:
        raise RetrievalError(f"region size must be positive, got {w}x{h}")
    model, spec = query_model(index)
    size, level, mpp = spec["size"], spec["level"], spec["mpp"]
    with open_slide(slide_path) as slide:
        if mpp is not None:
            if slide.mpp is None:
                raise RetrievalError(f"{slide_path}: the slide records no resolution but "
                                     f"the model reads patches at {mpp} um/pixel")
            scale, read = mpp / slide.mpp[0], {"mpp": mpp}
        else:
            level = int(level or 0)
            scale, read = slide.level_downsamples[level], {"level": level}
        step = size * scale  # level-0 pixels per patch
        nx, ny = max(1, round(w / step)), max(1, round(h / step))
        if nx * ny > MAX_CELLS:
            raise RetrievalError(f"a {w}x{h} region is {nx * ny} patches of {step:.0f} "
                                 f"level-0 pixels (max {MAX_CELLS}); query a smaller one")
        if nx == ny == 1:
            out = max(1, math.ceil(w / scale)), max(1, math.ceil(h / scale))
            patches = [fit_patch(slide.read_region((x, y), out, **read), size)]
        else:
            patches = [slide.read_region((x + (w - step) * i / max(nx - 1, 1),
                                          y + (h - step) * j / max(ny - 1, 1)),
                                         (size, size), **read)
                       for j in range(ny) for i in range(nx)]
    vectors = []
    for start in range(0, len(patches), 64):
        vectors.append(_embed_patches(model, spec, patches[start:start + 64]))
    return np.concatenate(vectors).mean(axis=0)


def embed_text(text: str, text_encoder: Callable[[str], np.ndarray]) -> np.ndarray:
    """The ``(D,)`` query vector of ``text``, computed by ``text_encoder`` (the hook a
    multimodal index provides: a callable ``str -> vector`` in the index's space).

    Raises:
        RetrievalError: no encoder, or one that returns something other than a vector.
    """
    if text_encoder is None:
        raise RetrievalError("text search needs the multimodal index (no text encoder)")
    vector = np.asarray(text_encoder(text), dtype=np.float32)
    if vector.ndim == 2 and len(vector) == 1:
        vector = vector[0]
    if vector.ndim != 1:
        raise RetrievalError(f"the text encoder returned shape {vector.shape}, not a vector")
    return vector
