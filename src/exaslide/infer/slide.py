"""One slide to a heatmap: tissue cells, batched patches, model, files."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exaslide.errors import InferenceError
from exaslide.masks.tissue import TissueParams
from exaslide.naming import is_valid_slide_id, slide_stem
from exaslide.patches.spec import PatchSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInputs:
    """What a model file's meta says about its input and output."""

    spec: PatchSpec
    mean: Sequence[float] | None
    std: Sequence[float] | None
    classes: list[str]
    class_index: int


def model_inputs(meta: Mapping[str, Any], class_name: str = "tumour") -> ModelInputs:
    """The patch spec, normalisation and output index a model's ``meta`` gives.

    ``meta["patch"]`` (``{"size", "level", "mpp"}``) is required; ``mean`` / ``std``
    default to ImageNet's; ``class_name`` must be one of ``meta["classes"]``.

    Raises:
        InferenceError: a missing or invalid patch spec, or an unknown class.
    """
    from exaslide.augment import IMAGENET_MEAN, IMAGENET_STD
    from exaslide.patches.spec import PatchError

    patch = meta.get("patch")
    if not isinstance(patch, Mapping) or not patch.get("size"):
        raise InferenceError(f"the model's meta has no patch size (meta['patch'] = {patch!r}); "
                             "save it with meta={'patch': {'size', 'level', 'mpp'}, ...}")
    mpp = patch.get("mpp")
    level = None if mpp is not None else int(patch.get("level") or 0)
    spec = PatchSpec(size=int(patch["size"]), level=level,
                     mpp=float(mpp) if mpp is not None else None)
    try:
        spec.validate()
    except PatchError as exc:
        raise InferenceError(f"the model's patch spec is invalid: {exc}") from exc
    classes = [str(c) for c in meta.get("classes") or []]
    if class_name not in classes:
        raise InferenceError(f"class {class_name!r} is not one of the model's classes "
                             f"{classes}; choose one with class_name= (--class)")
    mean, std = meta.get("mean", IMAGENET_MEAN), meta.get("std", IMAGENET_STD)
    return ModelInputs(spec, mean, std, classes, classes.index(class_name))


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` (:func:`exaslide.runtime.resolve_device`: ``auto``,
    ``cpu``, ``cuda``, ``cuda:N``, ``mps``); plain ``"cuda"`` under ``torchrun`` is this
    process's GPU (``LOCAL_RANK``).

    Raises:
        InferenceError: an unknown device, or a GPU this machine does not have.
    """
    from exaslide import runtime

    try:
        return runtime.resolve_device(device)
    except runtime.DeviceError as exc:
        raise InferenceError(str(exc)) from exc


def _predict(model: torch.nn.Module, batch: torch.Tensor, inputs: ModelInputs,
             device: torch.device, amp: bool) -> torch.Tensor:
    """The class probability of every patch of a uint8 NHWC batch, on ``device`` (not
    synchronised: the caller copies results back in groups)."""
    from exaslide.augment import to_float

    cuda = device.type == "cuda"
    x = batch.to(device, non_blocking=True)  # uint8: a quarter of float32's bytes
    x = to_float(x.permute(0, 3, 1, 2), inputs.mean, inputs.std, channels_last=cuda)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and cuda):
        logits = model(x)
    logits = logits.float()
    if logits.shape[1] == 1:  # a single-logit binary model
        probs = torch.sigmoid(logits[:, 0])
    else:
        probs = torch.softmax(logits, dim=1)[:, inputs.class_index]
    return probs


def slide_key(path: str | os.PathLike) -> str:
    """How a slide is named in the heatmap JSON: a URL as given, a local path absolute."""
    from exaslide.storage import is_remote, to_local

    if is_remote(path):
        return str(path)
    return str(Path(to_local(os.fspath(path))).resolve())


def infer_slide(model: torch.nn.Module, meta: Mapping[str, Any], slide_path: str | os.PathLike,
                out_dir: str | os.PathLike, *, slide_id: str | None = None,
                stride: int | None = None, batch_size: int = 64,
                device: str | torch.device = "cpu", workers: int | None = None,
                amp: bool = True,
                min_tissue: float = 0.1, class_name: str = "tumour",
                tissue: TissueParams | None = None, backend: str | None = None,
                progress: bool = True, readers: str = "processes",
                decode: str = "off") -> Path:
    """Compute a slide's probability heatmap and write its files into ``out_dir``.

    Tissue is detected at low resolution; a grid of ``stride``-pixel cells covers the slide
    and every cell whose patch (centred on the cell, of the model's size and resolution)
    holds at least ``min_tissue`` tissue is read (each stored tile decoded once), batched,
    normalised with the model's mean/std and classified under ``torch.inference_mode``
    (bf16 autocast and channels-last on CUDA). Files (see ``docs/inference.md``):
    ``<slide_id>.overlay.png``, ``.heatmap.tif``, ``.heatmap.npy`` and, last,
    ``.heatmap.json``; each is written atomically.

    Args:
        model: the classifier (e.g. from :func:`exaslide.models.load_model`).
        meta: the model's metadata: ``patch``, ``classes``, ``mean``, ``std``, ``model``.
        slide_path: the slide (path or URL).
        out_dir: output folder.
        slide_id: names the files (default: the slide's file name without extension).
        stride: cell side in level-0 pixels (default: the patch footprint).
        batch_size: patches per forward pass.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        workers: patch-reading processes, each reading a contiguous share of the cells
            (0: read in this process; default :func:`exaslide.infer.default_workers`:
            none on the CPU, the cores less one on a GPU).
        amp: bf16 autocast on CUDA (ignored on the CPU).
        min_tissue: smallest tissue share of a patch for its cell to be computed.
        class_name: the class whose probability is mapped.
        tissue: tissue-detection parameters.
        backend: force a slide backend.
        progress: show a progress bar over cells (on a terminal).
        readers: ``"processes"`` or ``"threads"`` (same cells and values; threads share
            the GIL and stop scaling near 4; a daemonic process uses threads).
        decode: where stored JPEG tiles are decoded: ``"off"`` (the default: in the
            readers, as pixels), ``"cpu"`` (readers ship compressed tiles, libjpeg-turbo
            threads here: the same values), ``"gpu"`` (nvJPEG on the device), ``"auto"``
            (``gpu`` on CUDA for a JPEG-tiled slide, else ``off``: the setting for a GPU
            node once bench/device.sh has measured nvJPEG there). See ``docs/decode.md``.

    Returns:
        The ``.heatmap.npy`` path.

    Raises:
        InferenceError: bad meta, class or device. Slide errors (``SlideError``) pass
            through.
    """
    return run_slide(model, meta, slide_path, out_dir, slide_id=slide_id, stride=stride,
                     batch_size=batch_size, device=device, workers=workers, amp=amp,
                     min_tissue=min_tissue, class_name=class_name, tissue=tissue,
                     backend=backend, progress=progress, readers=readers,
                     decode=decode)[0]


def run_slide(model, meta, slide_path, out_dir, *, slide_id=None, stride=None,
              batch_size=64, device="cpu", workers=None, amp=True, min_tissue=0.1,
              class_name="tumour", tissue=None, backend=None, progress=True,
              fingerprint=None, readers="processes",
              decode="off") -> tuple[Path, dict[str, Any]]:
    """:func:`infer_slide`, also returning the heatmap's JSON metadata; ``fingerprint``
    (see :func:`exaslide.infer.cohort.heatmap_fingerprint`) is stored in it when given."""
    from exaslide.heatmaps import write_heatmap
    from exaslide.infer.grid import plan_grid
    from exaslide.infer.outputs import OVERLAY_SIDE, output_paths, write_extra_outputs
    from exaslide.models import model_name
    from exaslide.naming import remove_stale_temporaries
    from exaslide.slides import open_slide

    if batch_size < 1:
        raise InferenceError(f"batch_size must be at least 1, got {batch_size}")
    inputs = model_inputs(meta, class_name)
    dev = resolve_device(device)
    slide_id = slide_id or slide_stem(slide_path)
    if not is_valid_slide_id(slide_id):
        raise InferenceError(f"slide_id {slide_id!r} must be non-empty, without a path "
                             "separator and not start with '.' (it names the output files)")
    slide_path = slide_key(slide_path)
    decode, workers = _reading(dev, slide_path, backend, decode, workers, readers)
    started = time.perf_counter()
    with open_slide(slide_path, backend=backend) as slide:
        grid = plan_grid(slide, inputs.spec, stride=stride, min_tissue=min_tissue,
                         tissue=tissue)
        level0_size, mpp = slide.dimensions, slide.mpp
        thumbnail = slide.thumbnail(OVERLAY_SIDE)
    probabilities = _classify(model, grid, inputs, slide_path, dev, batch_size, workers,
                              amp, backend, progress, slide_id, readers, decode)
    heat_meta = {
        "slide_id": slide_id, "slide": slide_path, "level0_size": list(level0_size),
        "mpp": list(mpp) if mpp else None, "origin": [0, 0], "cell": grid.cell,
        "patch_footprint": grid.footprint, "classes": inputs.classes,
        "model": meta.get("model") or model_name(model) or type(model).__name__,
        "class": class_name, "patch": {"size": inputs.spec.size, "level": inputs.spec.level,
                                       "mpp": inputs.spec.mpp},
        "computed_cells": len(grid), "min_tissue": min_tissue, "decode": decode,
    }
    if fingerprint is not None:
        heat_meta["fingerprint"] = dict(fingerprint)
    out = Path(out_dir)
    remove_stale_temporaries(output_paths(out, slide_id).values())
    write_extra_outputs(out, slide_id, probabilities, thumbnail, grid.cell, level0_size, mpp)
    heat_meta["seconds"] = round(time.perf_counter() - started, 3)
    path = write_heatmap(out, slide_id, probabilities, heat_meta)
    logger.info("%s: %d cells of %d x %d in %.1f s", slide_id, len(grid), grid.rows,
                grid.cols, heat_meta["seconds"])
    return path, heat_meta


def _reading(device: torch.device, slide_path, backend, decode: str, workers: int | None,
             readers: str) -> tuple[str, int]:
    """``(decode, workers)`` resolved for one slide.

    Raises:
        InferenceError: unknown ``readers`` or ``decode``, ``decode="gpu"`` off CUDA.
    """
    from exaslide.infer.batches import READERS, default_workers
    from exaslide.infer.decoded import resolve_decode

    if readers not in READERS:
        raise InferenceError(f"readers must be one of {READERS}, got {readers!r}")
    try:
        decode = resolve_decode(decode, device, [slide_path], backend)
    except ValueError as exc:
        raise InferenceError(str(exc)) from None
    return decode, default_workers(device.type) if workers is None else workers


def _classify(model, grid, inputs: ModelInputs, slide_path, device: torch.device,
              batch_size: int, workers: int, amp: bool, backend, progress: bool,
              slide_id: str, readers: str = "processes", decode: str = "off") -> np.ndarray:
    """The ``(rows, cols)`` float32 map: the class probability of every grid cell, NaN
    for cells not computed."""
    import sys

    from tqdm import tqdm

    from exaslide.infer.batches import reader_death

    values = np.full(len(grid), np.nan, np.float32)
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    bar = tqdm(total=len(grid), desc=slide_id, unit="cell", leave=False, file=sys.stderr,
               disable=True if not progress else None)
    pending: list[tuple[np.ndarray, torch.Tensor]] = []  # results not yet copied back

    def collect() -> None:
        if pending:
            ids = np.concatenate([i for i, _ in pending])
            values[ids] = torch.cat([p for _, p in pending]).cpu().numpy()
            pending.clear()

    try:
        with torch.inference_mode():
            for ids, batch in _batches(slide_path, inputs.spec, grid, batch_size, workers,
                                       backend, readers, device, decode):
                pending.append((ids, _predict(model, batch, inputs, device, amp)))
                if len(pending) >= _COLLECT_EVERY:
                    collect()
                bar.update(len(ids))
            collect()
    except RuntimeError as exc:  # a reading process killed while the model ran
        death = reader_death(exc)
        if death is None:
            raise
        raise death from exc
    finally:
        bar.close()
    heat = np.full((grid.rows, grid.cols), np.nan, np.float32)
    heat[grid.index_r, grid.index_c] = values
    return heat


def _batches(slide_path, spec, grid, batch_size: int, workers: int, backend,
             readers: str, device: torch.device, decode: str):
    """``(ids, uint8 NHWC batch)`` of the grid's cells: pixels from the reader
    processes (``decode="off"``), or compressed tiles decoded here."""
    if decode == "off":
        from exaslide.infer.batches import iter_batches

        return iter_batches(slide_path, spec, grid.xs, grid.ys, batch_size, workers=workers,
                            backend=backend, readers=readers,
                            pin_memory=device.type == "cuda")
    from exaslide.infer.decoded import iter_decoded_batches

    return iter_decoded_batches(slide_path, spec, grid.xs, grid.ys, batch_size,
                                workers=workers, device=device, decode=decode,
                                backend=backend)


#: Batches whose results stay on the device before one copy back: the GPU is not
#: stopped for every batch.
_COLLECT_EVERY = 16
