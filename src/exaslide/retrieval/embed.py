"""Patch embeddings: penultimate-layer features of every indexed patch, into a store.

:func:`embed_patches` reads the patches of an extraction output (``exaslide extract``)
with :class:`~exaslide.data.SlidePatchDataset`, runs them through a model's
:func:`~exaslide.models.forward_features` and writes one store part per slide
(``part = slide_id``, see :mod:`exaslide.retrieval.store`) as the ``embed`` stage of the
job engine (:mod:`exaslide.jobs`): a slide whose status says done with the same model,
weights, patch spec and patch keys is skipped, so a killed run resumes where it stopped;
under ``torchrun`` rank ``r`` of ``n``
embeds slides ``r, r+n, r+2n, ...`` (sorted by id) into the same store. Vectors are
stored as they come out of the model (float16, not L2-normalised: the index does that).

With ``encoder=NAME`` a foundation-model encoder of :mod:`exaslide.encoders` replaces the
model: its spec gives the input size, resolution (patches are read at its µm/px, centred
on the indexed ones, so one index serves every encoder), normalisation and embedding rule.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.errors import RetrievalError

logger = logging.getLogger(__name__)

#: Index columns copied into the store's table (``centre`` too when the index has it).
TABLE_COLUMNS = ("key", "slide_id", "x", "y", "level", "size", "label", "split")


@dataclass
class EmbedOutcome:
    """What happened to one slide of :func:`embed_patches`."""

    slide_id: str
    status: str  #: "done", "skipped" (part already in the store) or "failed"
    error: str = ""
    patches: int = 0
    seconds: float = 0.0


def resolve_model(model, pretrained: str | os.PathLike | None = None, *,
                  encoder: str | None = None, weights: str | os.PathLike | None = None,
                  hf_cache: str | os.PathLike | None = None):
    """``(module, name, model_path, meta)`` from a model file written by
    :func:`~exaslide.models.save_model`, a registered model name (random weights, or
    local ``pretrained`` ones), an ``nn.Module`` built by ``create_model``, or a
    registered foundation-model ``encoder`` (:mod:`exaslide.encoders`; ``model`` is then
    ``None``) with its local ``weights`` (a file, a folder, or ``"random"``; default: the
    local Hugging Face cache ``hf_cache``).

    An encoder's ``meta["patch"]`` is its own input: ``{"size", "mpp", "level": None,
    "resample": True}`` (patches are read at the encoder's resolution, centred on the
    indexed ones).

    Raises:
        ModelError: unknown name, unreadable file; EncoderError (a ModelError): unknown
            encoder, missing weights, weights of another architecture.
    """
    import torch

    from exaslide.models import create_model, load_model

    if encoder is not None:
        return _resolve_encoder(encoder, weights, hf_cache)
    if isinstance(model, torch.nn.Module):
        name = getattr(model, "exaslide_name", None) or type(model).__name__
        return model.eval(), str(name), None, {}
    path = Path(os.fspath(model))
    looks_like_file = path.suffix in (".pt", ".pth", ".ckpt") or os.sep in str(model)
    if path.is_file() or (looks_like_file and not str(model).startswith("timm:")):
        module, meta = load_model(path)
        return module, str(meta.get("model")), str(path.resolve()), meta
    module = create_model(str(model), pretrained=pretrained)
    return module.eval(), str(model), None, {"weights": _weights_id(pretrained)}


def _resolve_encoder(name: str, weights, hf_cache):
    """:func:`resolve_model` for ``encoder=name``."""
    from exaslide.encoders import EncoderError, build_encoder, get_spec

    spec = get_spec(name)
    if spec.builder == "exaslide-model":  # an exaslide model file: its own patch spec
        if weights is None or str(weights) == "random":
            raise EncoderError("encoder exaslide: give the model file written by exaslide "
                               "train as its weights (--weights MODEL.pt)")
        return resolve_model(weights)
    random = weights is not None and str(weights) == "random"
    module, spec = build_encoder(spec, None if random else weights, random_weights=random,
                                 cache_dir=hf_cache)
    meta = {"weights": module.exaslide_weights, "encoder": spec.name,
            "patch": {"size": spec.size, "level": None, "mpp": spec.mpp, "resample": True},
            "mean": list(spec.mean), "std": list(spec.std)}
    return module, f"encoder:{spec.name}", module.exaslide_weights_path, meta


def _weights_id(pretrained) -> str:
    """What a registered model's weights are: the SHA-256 of a pretrained file, or
    ``random`` (fresh random weights, which a resumed run could not reproduce)."""
    if pretrained is None:
        return "random"
    import hashlib

    digest = hashlib.sha256()
    with open(pretrained, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _patch_spec(meta: dict[str, Any], table, size: int | None) -> dict[str, Any]:
    """The patch spec recorded in the store: the model's (trained) or the index's."""
    first = table.slice(0, 1).to_pylist()[0]
    index_mpp, index_level = first["mpp"], first["level"]
    patch = meta.get("patch")
    if isinstance(patch, dict) and patch.get("resample"):  # an encoder: its own input
        return {"size": int(patch["size"]), "level": None, "mpp": float(patch["mpp"]),
                "resample": True}
    if isinstance(patch, dict) and patch.get("size"):
        mpp, level = patch.get("mpp"), patch.get("level")
        if mpp is not None and index_mpp is not None and \
                not math.isclose(float(mpp), float(index_mpp), rel_tol=0.05):
            raise RetrievalError(f"the model was trained on patches at {mpp} um/px but the "
                                 f"index has patches at {index_mpp} um/px; extract at the "
                                 "model's resolution")
        if mpp is None and index_mpp is None and int(level or 0) != int(index_level):
            raise RetrievalError(f"the model was trained on level {level} patches but the "
                                 f"index has level {index_level} patches")
        return {"size": int(size or patch["size"]), "level": level, "mpp": mpp}
    return {"size": int(size or first["size"]),
            "level": None if index_mpp is not None else int(index_level),
            "mpp": None if index_mpp is None else float(index_mpp)}


def _index(source, filter):
    """The selected index rows (sorted by slide id) and the slides' paths."""
    import pyarrow.compute as pc

    from exaslide.data.sources import _slide_paths, read_index_table

    table = read_index_table(source, filter)
    if table.num_rows == 0:
        raise RetrievalError(f"{source}: the index selects no patches")
    slide_ids = sorted(str(s) for s in pc.unique(table.column("slide_id")).to_pylist())
    paths = _slide_paths(source, slide_ids, None, None)
    return table, slide_ids, paths


def _slide_table(table, slide_id: str):
    import pyarrow.compute as pc

    rows = table.filter(pc.equal(table.column("slide_id"), slide_id))
    names = [c for c in (*TABLE_COLUMNS, "centre") if c in rows.column_names]
    return rows, rows.select(names)


def _embed_slide(module, rows, path: str, *, device, size: int | None, mean, std,
                 batch_size: int, workers: int, mpp: float | None = None,
                 decode: str = "off") -> np.ndarray:
    """float16 ``(rows, D)`` features of one slide's patches, in row order (read at
    ``mpp`` centred on the indexed patches when given, else at the index's
    resolution)."""
    import torch

    from exaslide.augment import to_float
    from exaslide.data import SlidePatchDataset

    slide_id = rows.column("slide_id")[0].as_py()
    dataset = SlidePatchDataset(rows, slides={slide_id: path}, size=size, mpp=mpp)
    cuda = device.type == "cuda"
    out, keys = [], []
    try:
        with torch.inference_mode():
            for images, meta in _batches(dataset, batch_size, workers, device, decode):
                x = to_float(images, mean, std, channels_last=cuda)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                    enabled=cuda):
                    features = _features(module, x)
                out.append(features.float().cpu().numpy().astype(np.float16))
                keys += list(meta["key"])
    finally:
        dataset.close()
    if keys != rows.column("key").to_pylist():
        raise RetrievalError(f"{slide_id}: the loader returned patches out of index order")
    return np.concatenate(out)


def _batches(dataset, batch_size: int, workers: int, device, decode: str):
    """``(uint8 NCHW images on the device, metadata)`` in index order: decoded by the
    loader processes (``decode="off"``), or their compressed tiles decoded here
    (``"cpu"``: libjpeg-turbo threads, the same pixels; ``"gpu"``: nvJPEG). The loader's
    processes are shut down when the slide ends, also on an error (not whenever the
    garbage collector meets the loader: in a process forked later, that fails)."""
    from exaslide.data import make_loader, to_device
    from exaslide.data.loader_workers import shutdown_workers

    cuda = device.type == "cuda"
    if decode == "off":
        loader = make_loader(dataset, batch_size=batch_size, workers=workers, device=device)
        batches = ((to_device(images, device, channels_last=cuda), meta)
                   for images, _labels, meta in loader)
    else:
        from exaslide.data.batch_decode import BatchDecoder, DecodedLoader
        from exaslide.data.compressed_dataset import (
            CompressedPatchDataset,
            make_compressed_loader,
        )

        loader = make_compressed_loader(CompressedPatchDataset.like(dataset),
                                        batch_size=batch_size, workers=workers,
                                        device=device)
        decoder = BatchDecoder(device, decoder="nvjpeg" if decode == "gpu" else
                               "imagecodecs")
        batches = ((images, meta) for images, _labels, meta in
                   DecodedLoader(loader, decoder))
    try:
        yield from batches
    finally:
        batches.close()
        shutdown_workers(loader)
        if decode != "off":
            decoder.close()
            loader.dataset.close()


def _features(module, x):
    from exaslide.models import forward_features

    return forward_features(module, x)


def embed_patches(model, source, out_dir, *, filter=None, batch_size: int = 256,
                  device: str = "cpu", workers: int | None = None, size: int | None = None,
                  pretrained: str | os.PathLike | None = None,
                  encoder: str | None = None, weights: str | os.PathLike | None = None,
                  hf_cache: str | os.PathLike | None = None,
                  rank: int | None = None, world_size: int | None = None,
                  progress: bool = True,
                  on_result: Callable[[EmbedOutcome], None] | None = None,
                  decode: str = "off") -> Path:
    """Embed the patches of an extraction into the store ``out_dir`` (see module doc).

    Args:
        model: a model file written by :func:`~exaslide.models.save_model` (its meta gives
            the patch spec and normalisation), a registered model name (ImageNet
            normalisation; random weights unless ``pretrained`` names a local file), or a
            module built by ``create_model``; ``None`` with ``encoder``.
        encoder: a registered foundation-model encoder (``exaslide encoders list``): its
            spec gives the input size, resolution, normalisation and embedding rule;
            patches are read at its µm/px and size, centred on the indexed patches and
            resampled as the extraction engine does, so one index serves every encoder.
        weights: the encoder's local weights (a file or folder, see
            :func:`exaslide.encoders.resolve_weights`), or ``"random"`` (seeded random
            weights, to exercise the pipeline); default: the Hugging Face cache
            ``hf_cache`` (huggingface_hub's default cache when ``None``).
        source: an ``exaslide extract`` output folder, its ``index/`` or an index file.
        out_dir: the store folder.
        filter: a pyarrow expression selecting index rows (``pc.field("split") == "test"``).
        batch_size: patches per forward pass.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (bf16 autocast and channels-last on CUDA;
            plain ``cuda`` under torchrun is the rank's GPU).
        workers: loader processes per slide (0: read in this process; default
            :func:`exaslide.infer.default_workers`: none on the CPU, where the model is
            the bottleneck, the cores less one on a GPU).
        decode: where stored JPEG tiles are decoded: ``"off"`` (the default: in the
            loader processes), ``"cpu"`` (the loader processes ship compressed tiles,
            libjpeg-turbo threads decode them here: the same vectors), ``"gpu"``
            (nvJPEG), ``"auto"`` (``gpu`` on CUDA when the first 4 slides are JPEG-tiled,
            else ``off``: the setting for a GPU node once bench/device.sh has measured
            nvJPEG there). Part of each slide's fingerprint: a rerun with another setting
            redoes the slides. See ``docs/decode.md``.
        size: read ``size`` x ``size`` pixels centred on each patch (default: the
            model's trained patch size, else the indexed size; not with ``encoder``,
            whose input size is fixed).
        rank, world_size: this process's share of the slides (default: from torchrun).
        progress: log one line per slide at INFO level.
        on_result: called with each slide's :class:`EmbedOutcome`.

    Returns:
        ``out_dir``. Each slide's outcome is also written to ``embed_status.json``
        (``embed_status.rank<r>.json`` under torchrun); a failed slide is logged and
        recorded, the others still run.

    Raises:
        ModelError: the model cannot be built or loaded. RetrievalError: empty selection,
        the store holds other embeddings, or the model's patch resolution is not the
        index's. DatasetError: slides without a known path.
    """
    from exaslide.infer.batches import default_workers
    from exaslide.infer.cohort import with_decode_off
    from exaslide.jobs import SlideEntry, Stage, run_stage
    from exaslide.runtime import resolve_device

    if (model is None) == (encoder is None):
        raise RetrievalError("give a model or an encoder (not both)")
    if encoder is not None and size is not None:
        raise RetrievalError(f"encoder {encoder}: its input size is fixed by its spec; "
                             "drop size")
    table, slide_ids, paths = _index(source, filter)
    module, name, model_path, meta = resolve_model(model, pretrained, encoder=encoder,
                                                   weights=weights, hf_cache=hf_cache)
    dev = resolve_device(device)
    module.to(dev)
    if dev.type == "cuda":
        import torch

        module.to(memory_format=torch.channels_last)
    from exaslide.storage.urls import is_remote

    out = str(out_dir) if is_remote(str(out_dir)) else Path(out_dir)
    resolved = _decode(decode, dev, paths, slide_ids)  # a bad setting: before writing
    options = _store_options(module, name, model_path, meta, table, size, source, filter,
                             out, decode)
    runner = _Runner(module, table, dev, batch_size,
                     default_workers(dev.type, world_size) if workers is None else workers,
                     resolved)
    stage = Stage("embed", options, process=functools.partial(_process, runner),
                  inputs=lambda entry: [entry.path],
                  extra_fingerprint=lambda entry, _: {"patches": _keys_digest(table,
                                                                             entry.slide_id)},
                  upgrade_status=with_decode_off)

    def on_event(kind: str, value) -> None:
        if kind == "slide":
            if progress:
                logger.info("%s: %s (%s patches, %.1f s)", value.slide_id, value.status,
                            value.result.get("patches", 0), value.seconds)
            if on_result is not None:
                on_result(_outcome(value))

    entries = [SlideEntry(s, paths[s]) for s in slide_ids]
    run_stage(stage, entries, out, scheduler="inline", rank=rank, world_size=world_size,
              on_event=on_event)
    return out


def _store_options(module, name, model_path, meta, table, size, source, filter,
                   out: Path | str, decode: str) -> EmbedOptions:
    """The store's embedding space, written into (or checked against) its
    ``embeddings.json``, as the stage's options."""
    from exaslide.augment import IMAGENET_MEAN, IMAGENET_STD
    from exaslide.models import embedding_dim
    from exaslide.retrieval.store import has_parts, write_info

    patch = _patch_spec(meta, table, size)
    mean = list(meta.get("mean") or IMAGENET_MEAN)
    std = list(meta.get("std") or IMAGENET_STD)
    weights = meta.get("weights")
    if weights == "random" and has_parts(str(out)):
        raise RetrievalError(f"{out}: already holds embeddings made with random weights of "
                             f"{name}; new random weights would not be comparable: embed "
                             "into a new folder, or use a model file or --pretrained")
    write_info(out, {"kind": "patches", "dim": embedding_dim(module), "model": name,
                     "model_path": model_path, "weights": weights, "patch": patch,
                     "mean": mean, "std": std, "source": str(source)})
    return EmbedOptions(name, model_path, weights, patch, mean, std, str(filter), decode)


@dataclass(frozen=True)
class EmbedOptions:
    """What decides a slide's patch embeddings (stored in its status)."""

    model: str
    model_path: str | None
    weights: str | None
    patch: dict[str, Any]
    mean: list[float]
    std: list[float]
    filter: str
    #: the requested ``decode`` setting (``auto`` as such): ``gpu`` pixels differ from
    #: ``off`` ones by IDCT rounding, so another setting redoes the slides.
    decode: str = "off"


@dataclass(frozen=True)
class _Runner:
    module: Any
    table: Any
    device: Any
    batch_size: int
    workers: int
    decode: str = "off"


def _decode(decode: str, device, paths: dict, slide_ids: list[str]) -> str:
    """``off``, ``cpu`` or ``gpu`` for the whole run (``auto``: from the first slides, see
    :func:`~exaslide.infer.decoded.resolve_decode`).

    Raises:
        RetrievalError: an unknown setting, or ``gpu`` without CUDA.
    """
    from exaslide.infer.decoded import resolve_decode

    try:
        return resolve_decode(decode, device, (paths[s] for s in slide_ids))
    except ValueError as exc:
        raise RetrievalError(str(exc)) from None


def _keys_digest(table, slide_id: str) -> str:
    """SHA-256 of the slide's patch keys in index order: a re-extraction that moves the
    patches (another seed, stride, spec) redoes the slide even with the same count."""
    import hashlib

    import pyarrow.compute as pc

    keys = table.filter(pc.equal(table.column("slide_id"), slide_id)).column("key")
    return hashlib.sha256("\n".join(keys.to_pylist()).encode()).hexdigest()


def _process(runner: _Runner, entry, options: EmbedOptions, ctx) -> dict[str, Any]:
    """The ``embed`` stage: one slide's part, written into the partial folder and adopted
    (vectors and checksums first, the Parquet table, the part's completion mark, last)."""
    from exaslide.retrieval.store import write_part

    started = time.perf_counter()
    rows, columns = _slide_table(runner.table, entry.slide_id)
    vectors = _embed_slide(runner.module, rows, entry.path, device=runner.device,
                           size=options.patch["size"], mean=options.mean, std=options.std,
                           batch_size=runner.batch_size, workers=runner.workers,
                           mpp=options.patch["mpp"] if options.patch.get("resample")
                           else None, decode=runner.decode)
    write_part(ctx.partial, entry.slide_id, columns, vectors)
    adopt_parts(ctx)
    return {"patches": len(vectors), "seconds": round(time.perf_counter() - started, 3)}


def adopt_parts(ctx) -> None:
    """Adopt every file a store part wrote under ``ctx.partial/parts``, Parquet tables
    last (a part whose table exists is complete)."""
    files = sorted((ctx.partial / "parts").iterdir(), key=lambda p: (p.suffix == ".parquet",
                                                                     p.name))
    for path in files:
        ctx.adopt(path, f"parts/{path.name}")


def _outcome(o) -> EmbedOutcome:
    return EmbedOutcome(o.slide_id, o.status, o.error, int(o.result.get("patches", 0)),
                        float(o.result.get("seconds", 0.0)))
