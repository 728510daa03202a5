"""Bags: the per-slide patch features of an embedding store, memory-mapped, and the
cohort of labelled slides a MIL run uses.

A bag is ``parts/<slide_id>.npy`` of a patch store (:mod:`exaslide.retrieval.store`):
float16 ``N x D``, row ``i`` the patch of row ``i`` of ``parts/<slide_id>.parquet``. It is
opened with ``np.load(..., mmap_mode="r")`` after its checksum (and the Parquet file's)
was verified once in this process, so only the rows a step reads come into memory and
no step holds more than one bag in float32.

A store may be an fsspec URL (``s3://bucket/run/features/``, ``gs://``, ``az://``): its
``parts/`` folder is listed once, and each file a step needs (``embeddings.json``, a
bag's ``.npy`` and ``.parquet``) is copied whole into exaslide's disk cache
(:func:`~exaslide.models.weights.remote_copy`, checked against its ``.sha256`` sidecar)
the first time this process reads it, then memory-mapped from there as a local store.

:func:`build_cohort` joins a manifest with a store: slides missing from the store, bags
without patches and slides whose label is not a class are reported, not fatal.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.errors import RetrievalError
from exaslide.mil.errors import MILError

logger = logging.getLogger(__name__)


class FeatureStore:
    """A patch embedding store read bag by bag.

    Attributes:
        folder: the store folder (a ``Path``), or its URL (a ``str``, no trailing ``/``).
        info: its ``embeddings.json`` (checked).
        dim: the feature dimension ``D``.
        slide_ids: the slides with a complete part, sorted.

    Raises:
        MILError: not a readable store, or not a store of patch features.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        from exaslide.retrieval.store import read_info
        from exaslide.storage.urls import is_remote

        self.remote = is_remote(folder)
        self.folder: Path | str = str(folder).rstrip("/") if self.remote else Path(folder)
        self._unchecked: list[Path | str] = []
        self._copies: dict[str, Path] = {}
        try:
            if self.remote:
                info_copy = self._remote_file("embeddings.json")
                self.info = read_info(info_copy.parent, [])  # checked by _remote_file
            else:
                self.info = read_info(self.folder, self._unchecked)
        except RetrievalError as exc:
            raise MILError(str(exc)) from exc
        if self.info.get("kind") != "patches":
            raise MILError(f"{self.folder}: holds {self.info.get('kind')!r} embeddings; MIL "
                           "needs patch features (exaslide embed patches)")
        self.dim = int(self.info.get("dim") or 0)
        self.slide_ids = self._remote_ids() if self.remote else \
            sorted(p.stem for p in (self.folder / "parts").glob("[!.]*.parquet"))
        self._ids = set(self.slide_ids)
        self._verified: set[str] = set()

    def __contains__(self, slide_id: str) -> bool:
        return slide_id in self._ids

    def check_dim(self, in_dim: int, what: str) -> None:
        """Refuse features whose dimension is not ``in_dim`` (``what`` names the model).

        Raises:
            MILError: one line naming the store and both dimensions.
        """
        if self.dim != in_dim:
            raise MILError(f"{self.folder}: features have {self.dim} dimensions (encoder "
                           f"{self.info.get('model')!r}) but {what} expects {in_dim}; embed "
                           "the patches with the encoder the model was trained on")

    def _remote_file(self, name: str) -> Path:
        """The checked disk-cache copy of the store file ``name`` (fetched once per
        process; a missing ``embeddings.json`` is reported as a store that is not one)."""
        from exaslide.errors import StorageError
        from exaslide.models.weights import remote_copy
        from exaslide.retrieval.store import REMEDY

        copy = self._copies.get(name)
        if copy is None:
            url = f"{self.folder}/{name}"
            try:
                copy = remote_copy(url, MILError, REMEDY, unchecked=self._unchecked)
            except StorageError as exc:
                if name == "embeddings.json" and "no such" in str(exc):
                    raise MILError(f"{self.folder}: not an embedding store (no "
                                   "embeddings.json)") from exc
                raise
            self._copies[name] = copy
        return copy

    def _remote_ids(self) -> list[str]:
        """The slides of a remote store: its ``parts/*.parquet``, listed once."""
        from exaslide.storage.errors import storage_error
        from exaslide.storage.urls import filesystem

        fs, root = filesystem(self.folder)
        try:
            names = fs.ls(f"{root.rstrip('/')}/parts", detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:  # each store raises its own errors
            raise storage_error(exc, self.folder, "list the store's parts") from exc
        names = (n.rstrip("/").rsplit("/", 1)[-1] for n in names)
        return sorted(n[: -len(".parquet")] for n in names
                      if n.endswith(".parquet") and not n.startswith("."))

    def _part(self, slide_id: str, suffix: str) -> Path:
        """``parts/<slide_id><suffix>`` as a local file (remote stores: its checked
        disk-cache copy)."""
        name = f"{slide_id}{suffix}"
        if self.remote:
            return self._remote_file(f"parts/{name}")
        return self.folder / "parts" / name

    def _paths(self, slide_id: str) -> tuple[Path, Path]:
        return self._part(slide_id, ".npy"), self._part(slide_id, ".parquet")

    def rows(self, slide_id: str) -> int:
        """Patches in the slide's bag (from the Parquet footer; nothing else is read)."""
        import pyarrow.parquet as pq

        try:
            return int(pq.read_metadata(self._part(slide_id, ".parquet")).num_rows)
        except (OSError, ValueError) as exc:
            raise MILError(f"{self.folder}: part {slide_id} is not readable "
                           f"({str(exc).splitlines()[0][:200]}); re-embed it") from exc

    def mark_verified(self, slide_ids) -> None:
        """Record parts another rank of this run has checked (they are not read again)."""
        self._verified.update(slide_ids)

    def _verify(self, slide_id: str) -> None:
        from exaslide.integrity import verify, warn_unchecked
        from exaslide.retrieval.store import _part_remedy

        if slide_id in self._verified:
            return
        if self.remote:  # the copies are checked as they are fetched
            self._verified.add(slide_id)
            return
        npy, parquet = self._paths(slide_id)
        for path in (npy, parquet):
            if not verify(path, MILError, _part_remedy(parquet), warn_missing=False) \
                    and path.is_file():
                warn_unchecked([path])
        self._verified.add(slide_id)

    def features(self, slide_id: str) -> np.ndarray:
        """The slide's bag, memory-mapped (float16 ``N x D``, read-only), after one
        checksum verification per process.

        Raises:
            MILError: a slide not in the store, a corrupt part, a bag without patches or
                with features of another dimension (one line naming the slide).
        """
        if slide_id not in self._ids:
            raise MILError(f"{self.folder}: no features for slide {slide_id} (embed it)")
        self._verify(slide_id)
        npy = self._part(slide_id, ".npy")
        try:
            array = np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise MILError(f"{self.folder}: slide {slide_id}: features not readable "
                           f"({str(exc).splitlines()[0][:200]}); re-embed it") from exc
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise MILError(f"{self.folder}: slide {slide_id}: features of shape "
                           f"{tuple(array.shape)}, expected (N, {self.dim}); re-embed it")
        if array.shape[0] == 0:
            raise MILError(f"{self.folder}: slide {slide_id}: empty bag (0 patches: no "
                           "tissue patch was extracted); left out")
        return array

    def bag(self, slide_id: str, rows: np.ndarray | None = None, device=None):
        """The bag (or its ``rows``, sorted) as a float32 torch tensor on ``device``
        (on a GPU the float16 rows are copied and converted there: half the bytes)."""
        import torch

        array = self.features(slide_id)
        block = array[np.sort(rows)] if rows is not None else array
        if device is not None and torch.device(device).type != "cpu":
            return torch.from_numpy(np.array(block)).to(device).float()
        tensor = torch.from_numpy(np.asarray(block, dtype=np.float32))
        return tensor if device is None else tensor.to(device)

    def patches(self, slide_id: str):
        """The slide's patch table (``x, y, level, size``; a pyarrow table)."""
        import pyarrow.parquet as pq

        self._verify(slide_id)
        return pq.read_table(self._part(slide_id, ".parquet"), columns=["x", "y", "level", "size"])

    def warn_unchecked(self) -> None:
        """One warning for the store files without a checksum."""
        from exaslide.integrity import warn_unchecked

        warn_unchecked(self._unchecked)
        self._unchecked = []


@dataclass(frozen=True)
class Slide:
    """One labelled slide of a MIL cohort."""

    slide_id: str
    label: int
    split: str
    group: str
    path: str | None  #: the slide file (for heatmap geometry), when known


@dataclass
class Cohort:
    """The slides a run can use, and those it cannot (with why)."""

    slides: list[Slide]
    classes: list[str]
    missing: list[str] = field(default_factory=list)  #: in the manifest, not the store
    skipped: list[dict[str, str]] = field(default_factory=list)  #: slide_id, error
    unlabelled: list[str] = field(default_factory=list)  #: label not one of the classes

    def report(self) -> dict[str, Any]:
        """What was left out, for ``metrics.json``."""
        return {"missing_features": self.missing, "skipped": self.skipped,
                "unlabelled": self.unlabelled}

    def warnings(self) -> list[str]:
        """One line per problem."""
        lines = [f"{s}: not in the feature store; left out" for s in self.missing]
        lines += [f"{s['slide_id']}: {s['error']}" for s in self.skipped]
        if self.unlabelled:
            lines.append(f"{len(self.unlabelled)} slide(s) with a label that is not one of "
                         f"{', '.join(self.classes)} left out, e.g. {self.unlabelled[0]}")
        return lines


def class_index(value: str, classes: list[str], binary: bool) -> int | None:
    """The index of a manifest label among ``classes`` (case-insensitive); for a binary
    task also tumour/normal synonyms (``exaslide.evaluate.metrics.binary_label``)."""
    lowered = [c.lower() for c in classes]
    text = str(value).strip().lower()
    if text in lowered:
        return lowered.index(text)
    if binary and len(classes) == 2:
        from exaslide.evaluate.metrics import binary_label

        return binary_label(text)
    return None


def _cell(entry, column: str) -> str | None:
    if column in ("label", "split", "slide_id"):
        return str(getattr(entry, column))
    return entry.extra.get(column)


def _rows(store: FeatureStore, slide_id: str) -> int | str:
    """The slide's bag size, or the one-line reason its part cannot be read."""
    try:
        return store.rows(slide_id)
    except MILError as exc:
        return str(exc)


def build_cohort(entries: list, store: FeatureStore, classes: list[str], label_column: str,
                 binary: bool, group_column: str = "patient") -> Cohort:
    """Join manifest ``entries`` with ``store``: each slide's class index, split, group
    (``group_column``, else the slide itself) and path.

    Raises:
        MILError: the manifest has no ``label_column``.
    """
    if entries and all(_cell(e, label_column) is None for e in entries):
        columns = ["label", "split", *entries[0].extra]
        raise MILError(f"manifest has no column {label_column!r} (columns: "
                       f"{', '.join(columns)}); add it or set label_column")
    cohort = Cohort([], list(classes))
    for entry in entries:
        label = class_index(_cell(entry, label_column) or "", classes, binary)
        if label is None:
            cohort.unlabelled.append(entry.slide_id)
        elif entry.slide_id not in store:
            cohort.missing.append(entry.slide_id)
        elif isinstance(rows := _rows(store, entry.slide_id), str):  # an unreadable part
            cohort.skipped.append({"slide_id": entry.slide_id, "error": rows})
        elif rows == 0:
            cohort.skipped.append({"slide_id": entry.slide_id,
                                   "error": "empty bag (0 patches in the feature store)"})
        else:
            group = _cell(entry, group_column) or entry.slide_id
            cohort.slides.append(Slide(entry.slide_id, label, entry.split, group,
                                       os.fspath(entry.path)))
    for line in cohort.warnings():  # the caller reports them (metrics, CLI warnings)
        logger.info("%s", line)
    return cohort
