"""``ShardDataset``: stream materialised tar shards, each sample exactly once per epoch.

Shards are the WebDataset-style tar files of ``exaslide extract --materialize``
(``<key>.png`` or ``<key>.jpg`` + ``<key>.json`` per patch), local or remote (any fsspec
URL, read through the exaslide disk cache). An extraction folder may itself be a URL
(``ShardDataset("s3://bucket/run/")``, ``gs://``, ``az://``): its index is read through
fsspec (filters pushed down), its ``shards/`` folder listed, and the shards streamed, so
it behaves exactly as the same folder on a local disk (same samples, same order).

How an epoch is split (every rank and worker computes the same plan from the seed and the
epoch, so no process talks to another):

1. The shards are put in an order (a permutation drawn from ``(seed, epoch)``, or the
   given order with ``shuffle=False``) and their samples numbered ``0 .. N-1`` in it.
2. Rank ``r`` of ``W`` takes a contiguous range of that numbering and splits it into
   contiguous sub-ranges, one per ``DataLoader`` worker. A worker streams the shards that
   overlap its range and skips the samples outside it, so at most two shards per worker
   are shared with a neighbour.

   - ``even=False`` (exactly once): rank ``r`` takes ``[rN/W, (r+1)N/W)``; every sample
     is read exactly once per epoch, and ranks differ by at most one sample.
   - ``even=True`` (the default when ``world_size > 1``): every rank takes ``M = N // W``
     samples, ``[rM, (r+1)M)``. Ranks then have identical worker ranges, hence the same
     number of batches, which DDP needs (a rank with one batch more waits forever in its
     gradient all-reduce). The last ``N - W*M < W`` samples of the epoch's order are
     skipped; the order changes every epoch, so different ones each time.
3. Each worker shuffles what it streams through a buffer of ``shuffle_buffer`` samples,
   with a generator seeded by ``(seed, epoch, rank, worker)``.

With ``balance=True``, samples of over-represented classes are skipped with probability
``1 - smallest_class / class_count``, decided by a hash of ``(seed, epoch, key)``: an
undersampled, class-balanced epoch, the same for every world size (this needs the index,
for the class counts). Workers then yield different numbers of samples, so ``balance``
needs ``even=False`` (for balanced DDP training use ``SlidePatchDataset`` with
``PatchSampler(balance=True)``).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from exaslide.data.sampler import distributed_context, epoch_rng
from exaslide.data.sources import DatasetError, read_index_table, resolve_classes
from exaslide.errors import StorageError
from exaslide.storage.urls import is_remote

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")


@dataclass(frozen=True, order=True)
class Shard:
    """One tar shard and the number of samples in it."""

    url: str
    count: int


@dataclass(frozen=True)
class Segment:
    """Part of a shard one reader streams: samples ``[start, stop)`` of the shard."""

    shard: Shard
    start: int
    stop: int


def rank_range(total: int, rank: int, world_size: int, even: bool) -> tuple[int, int]:
    """The samples ``[lo, hi)`` of an epoch's order that one rank reads (module doc)."""
    if even:
        share = total // world_size
        return rank * share, (rank + 1) * share
    return rank * total // world_size, (rank + 1) * total // world_size


def plan_epoch(shards: Sequence[Shard], *, rank: int, world_size: int, worker: int,
               workers: int, seed: int, epoch: int, shuffle: bool,
               even: bool) -> list[Segment]:
    """The shard segments one worker of one rank streams in one epoch (module doc)."""
    order = list(shards)
    if shuffle:
        order = [order[i] for i in epoch_rng(seed, epoch).permutation(len(order))]
    total = sum(s.count for s in order)
    start, stop = rank_range(total, rank, world_size, even)
    lo = start + worker * (stop - start) // workers
    hi = start + (worker + 1) * (stop - start) // workers
    segments, first = [], 0
    for shard in order:
        last = first + shard.count
        start, stop = max(lo, first), min(hi, last)
        if start < stop:
            segments.append(Segment(shard, start - first, stop - first))
        first = last
    return segments


class ShardDataset(IterableDataset):
    """Iterable dataset of ``(image, label, metadata)`` streamed from tar shards.

    Args:
        source: an ``exaslide extract --materialize`` output folder, local (``"out/"``)
            or an fsspec URL (``"s3://bucket/run/"``): shards and their sample counts
            come from its index; or a list of shard paths/URLs (their samples are
            counted by reading the tar headers once).
        shuffle: shuffle shard order and samples (see the module doc).
        shuffle_buffer: samples held for shuffling per reader.
        seed: the seed; with the epoch (:meth:`set_epoch`) it decides the order.
        classes: label names in class-code order (default: ``normal``, ``tumour``, then
            the index's other labels, sorted; with a shard list: ``normal``, ``tumour``).
        filter: a pyarrow expression selecting the shards to use through their index rows
            (e.g. ``pc.field("split") == "train"``); shards are read whole, so a filter
            that selects part of a shard is an error: filter on slide-level columns.
        transform: called on each image tensor.
        dtype: ``"uint8"`` or ``"float"`` (0..1).
        balance: undersample to equal classes (needs the index and ``even=False``).
        rank, world_size: this process's share (default: torch.distributed/torchrun).
        even: give every rank the same number of samples, skipping fewer than
            ``world_size`` per epoch (default: on when ``world_size > 1``); off: every
            sample exactly once, ranks may differ by one.
    """

    def __init__(self, source, *, shuffle: bool = True, shuffle_buffer: int = 1000,
                 seed: int = 0, classes: Sequence[str] | None = None, filter=None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 dtype: str = "uint8", balance: bool = False, rank: int | None = None,
                 world_size: int | None = None, even: bool | None = None):
        if dtype not in ("uint8", "float"):
            raise ValueError(f"dtype must be 'uint8' or 'float', got {dtype!r}")
        if shuffle_buffer < 1:
            raise ValueError("shuffle_buffer must be at least 1")
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, shuffle_buffer, seed
        self.transform, self.dtype, self.balance = transform, dtype, balance
        self.rank, self.world_size = distributed_context(rank, world_size)
        self.even = self.world_size > 1 if even is None else bool(even)
        if balance and self.even:
            raise DatasetError("balance=True gives workers unequal sample counts, so it "
                               "needs even=False; for balanced DDP training use "
                               "SlidePatchDataset with PatchSampler(balance=True)")
        # shared memory, so that persistent DataLoader workers see set_epoch()
        self._epoch = multiprocessing.RawValue("q", 0)
        self.keep_probability: dict[str, float] | None = None
        if _is_folder(source):
            self.shards, counts = _shards_from_index(source, filter)
            self.classes = resolve_classes(list(counts), classes)
        else:
            if filter is not None:
                raise DatasetError("filter needs an extraction folder (with its index)")
            urls = [os.fspath(source)] if isinstance(source, (str, os.PathLike)) \
                else [os.fspath(s) for s in source]
            self.shards = [Shard(url, count_samples(url)) for url in urls]
            counts = None
            self.classes = list(classes) if classes is not None else ["normal", "tumour"]
        if not self.shards or sum(s.count for s in self.shards) == 0:
            raise DatasetError(f"{source}: no samples in the shards")
        if balance:
            if counts is None:
                raise DatasetError("balance=True needs an extraction folder with its index")
            smallest = min(counts.values())
            self.keep_probability = {k: smallest / n for k, n in counts.items()}
        self._lookup = {name: i for i, name in enumerate(self.classes)}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (also in persistent
        ``DataLoader`` workers started before the call)."""
        self._epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration yields."""
        return int(self._epoch.value)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        from multiprocessing import context

        if context.get_spawning_popen() is None:  # a plain pickle: a snapshot of the epoch
            state["_epoch"] = int(self._epoch.value)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["_epoch"], int):
            epoch = state["_epoch"]
            state["_epoch"] = multiprocessing.RawValue("q", epoch)
        self.__dict__.update(state)

    @property
    def num_samples(self) -> int:
        """Samples in all shards (one epoch over all ranks, before balancing)."""
        return sum(s.count for s in self.shards)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (before balancing)."""
        lo, hi = rank_range(self.num_samples, self.rank, self.world_size, self.even)
        return hi - lo

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, dict[str, Any]]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        segments = plan_epoch(self.shards, rank=self.rank, world_size=self.world_size,
                              worker=worker, workers=workers, seed=self.seed,
                              epoch=self.epoch, shuffle=self.shuffle, even=self.even)
        samples = (s for segment in segments for s in self._read_segment(segment))
        if self.keep_probability is not None:
            samples = (s for s in samples if self._keep(s[2]))
        if self.shuffle:
            samples = _shuffled(samples, self.shuffle_buffer,
                                epoch_rng(self.seed, self.epoch, self.rank, worker))
        for image_bytes, extension, meta in samples:
            yield self._decode(image_bytes, extension, meta)

    def _keep(self, meta: dict) -> bool:
        p = self.keep_probability.get(meta.get("label"), 1.0)
        if p >= 1.0:
            return True
        digest = hashlib.blake2b(f"{self.seed}/{self.epoch}/{meta['key']}".encode(),
                                 digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64 < p

    def _read_segment(self, segment: Segment) -> Iterator[tuple[bytes, str, dict]]:
        for i, (image, extension, meta) in enumerate(iter_samples(segment.shard.url)):
            if i >= segment.stop:
                break
            if i >= segment.start:
                yield image, extension, meta

    def _decode(self, data: bytes, extension: str, meta: dict):
        import cv2

        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if pixels is None:
            raise DatasetError(f"cannot decode image {meta.get('key')}.{extension}")
        image = torch.from_numpy(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)
        if self.dtype == "float":
            image = image.float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        label = meta.get("label")
        code = self._lookup.get(label, -1) if label is not None else -1
        metadata = {"key": meta["key"], "slide_id": meta.get("slide_id", ""),
                    "x": int(meta.get("x", -1)), "y": int(meta.get("y", -1)),
                    "level": int(meta.get("level", -1))}
        return image, code, metadata


def _shard_counts(table) -> dict[str, int]:
    counts = table.group_by("shard").aggregate([("shard", "count")])
    return dict(zip(counts.column("shard").to_pylist(),
                    counts.column("shard_count").to_pylist(), strict=True))


def _is_folder(source) -> bool:
    """True for a local folder, or a URL that is not a shard (``s3://bucket/run/``)."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    if is_remote(source):
        return not str(source).rstrip("/").endswith(".tar")
    return Path(os.fspath(source)).is_dir()


def _shards_from_index(out, filter) -> tuple[list[Shard], dict[str, int]]:
    import pyarrow.compute as pc

    table = read_index_table(out, filter)
    table = table.filter(pc.is_valid(table.column("shard")))
    if table.num_rows == 0:
        raise DatasetError(f"{out}: the index lists no materialised patches (run "
                           "`exaslide extract --materialize png|jpeg`)")
    counts = _shard_counts(table)
    if filter is not None:  # samples are taken by position: only whole shards can be used
        full = _shard_counts(read_index_table(out).select(["shard"]))
        partial = sorted(name for name, n in counts.items() if full.get(name) != n)
        if partial:
            raise DatasetError(
                f"the filter selects part of shard {partial[0]} ({counts[partial[0]]} of "
                f"{full.get(partial[0])} samples; {len(partial)} shard(s) in all): shards "
                "are read whole, so filter on columns constant within a slide (slide_id, "
                "split, centre), or use SlidePatchDataset for row-level selections")
    if is_remote(out):
        shards = _remote_shards(str(out), counts)
    else:
        out = Path(os.fspath(out))
        folder = out.parent if out.name == "index" else out
        shards = sorted(Shard(str(folder / "shards" / name), int(n))
                        for name, n in counts.items())
    missing = [s.url for s in shards if s.count < 0 or
               (not is_remote(s.url) and not Path(s.url).exists())]
    if missing:
        raise DatasetError(f"{len(missing)} shard(s) listed in the index are missing, "
                           f"e.g. {missing[0]}")
    labels = table.group_by("label").aggregate([("label", "count")])
    counts = {str(k): int(n) for k, n in zip(labels.column("label").to_pylist(),
                                             labels.column("label_count").to_pylist(),
                                             strict=True) if k is not None}
    return shards, counts


def _remote_shards(url: str, counts: dict[str, int]) -> list[Shard]:
    """The shards of a folder URL, by their index counts; the ``shards/`` folder is
    listed once (a shard missing there gets a count of -1, reported by the caller)."""
    from exaslide.storage.errors import storage_error
    from exaslide.storage.urls import filesystem

    base = url.rstrip("/")
    if base.endswith("/index"):
        base = base[: -len("/index")]
    fs, root = filesystem(base)
    try:
        listed = {name.rstrip("/").rsplit("/", 1)[-1]
                  for name in fs.ls(f"{root.rstrip('/')}/shards", detail=False)}
    except FileNotFoundError:
        listed = set()
    except Exception as exc:  # each store raises its own errors
        raise storage_error(exc, url, "list the shards folder") from exc
    return sorted(Shard(f"{base}/shards/{name}", int(n) if name in listed else -1)
                  for name, n in counts.items())


def _open_binary(url: str):
    try:
        from exaslide.storage import open_file
    except ImportError:  # pragma: no cover - storage is part of the package
        return open(url, "rb")
    return open_file(url)


def iter_samples(url: str) -> Iterator[tuple[bytes, str, dict]]:
    """``(image bytes, extension, metadata)`` of every sample of a shard, in tar order.

    Raises:
        DatasetError: a truncated or corrupt shard, or a sample missing its image or its
            JSON (the message names the shard and the key).
    """
    pending: dict[str, dict[str, bytes]] = {}
    try:
        with _open_binary(url) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, extension = member.name.rpartition(".")
                data = tar.extractfile(member).read()
                parts = pending.setdefault(key, {})
                parts[extension] = data
                if "json" in parts and any(e in parts for e in IMAGE_EXTENSIONS):
                    del pending[key]
                    yield _sample(url, key, parts)
    except StorageError:
        raise  # unreachable store, missing object: already one line naming the URL
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetError(f"{url}: corrupt or truncated shard ({exc})") from exc
    if pending:
        key = next(iter(pending))
        raise DatasetError(f"{url}: sample {key!r} lacks its image or its .json")


def _sample(url: str, key: str, parts: dict[str, bytes]) -> tuple[bytes, str, dict]:
    extension = next(e for e in IMAGE_EXTENSIONS if e in parts)
    try:
        meta = json.loads(parts["json"])
    except ValueError as exc:
        raise DatasetError(f"{url}: {key}.json is not valid JSON") from exc
    meta.setdefault("key", key)
    return parts[extension], extension, meta


def count_samples(url: str) -> int:
    """Samples in one shard (reads the whole tar once)."""
    return sum(1 for _ in iter_samples(url))


def _shuffled(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """Shuffle a stream through a buffer of ``size`` items."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        buffer[j], item = item, buffer[j]
        yield item
    rng.shuffle(buffer)
    yield from buffer
