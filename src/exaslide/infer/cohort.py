"""Many slides: resumable, one slide's failure reported, slides shared over ``torchrun``
ranks (rank ``r`` of ``n`` does slides ``r, r+n, r+2n, ...``)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exaslide.errors import InferenceError
from exaslide.patches.spec import PatchSpec

logger = logging.getLogger(__name__)


@dataclass
class SlideOutcome:
    """What happened to one slide of :func:`infer_cohort`."""

    slide_id: str
    status: str  #: "done", "skipped" (already done with the same inputs) or "failed"
    error: str = ""
    cells: int = 0  #: cells computed
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def _entries(slides) -> list[tuple[str, Any]]:
    """``(slide_id, path)`` pairs from a manifest path, one slide path, or an iterable of
    paths / :class:`~exaslide.manifest.ManifestEntry`."""
    from exaslide.manifest import ManifestEntry, read_manifest
    from exaslide.naming import slide_stem

    if isinstance(slides, str | os.PathLike):
        if str(slides).lower().endswith(".csv"):
            return [(e.slide_id, e.path) for e in read_manifest(slides)]
        slides = [slides]
    pairs = []
    for item in slides:
        if isinstance(item, ManifestEntry):
            pairs.append((item.slide_id, item.path))
        else:
            pairs.append((slide_stem(item), item))
    seen: set[str] = set()
    for slide_id, path in pairs:
        if slide_id in seen:
            raise InferenceError(f"two slides have the id {slide_id!r} ({path}); give a "
                                "manifest with unique slide_id values")
        seen.add(slide_id)
    return pairs


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Resolved path, size and modification time (ns) of a local file; size, ETag and
    last-modified time of a URL (see :func:`exaslide.jobs.status.file_fingerprint`).

    Raises:
        OSError: the file cannot be found (``StorageError`` for a URL).
    """
    from exaslide.infer.slide import slide_key
    from exaslide.jobs.status import file_fingerprint as fingerprint

    return fingerprint(slide_key(path))


#: Version of the files a heatmap is written as; part of the fingerprint, so a resumed run
#: redoes heatmaps written in an older layout. 2: the TIFF stores 1 + round(254 p), 0 = not
#: computed (version 1 stored round(255 p), where 0 also meant "not computed").
HEATMAP_FILES_VERSION = 2


def heatmap_fingerprint(model: Mapping[str, Any], slide_path, *, class_name: str,
                        min_tissue: float, stride: int | None,
                        spec: PatchSpec) -> dict[str, Any]:
    """Everything that decides a heatmap's content, stored as ``"fingerprint"`` in its
    JSON: the model file's and the slide's :func:`file_fingerprint` (``model`` is the
    former), the class, ``min_tissue``, the requested ``stride`` (``None``: the default),
    the patch spec, the tissue-detection parameters and :data:`HEATMAP_FILES_VERSION`.

    Raises:
        OSError: the slide cannot be found (``StorageError`` for a URL).
    """
    from exaslide.masks.tissue import TissueParams

    return {"model": dict(model), "slide": file_fingerprint(slide_path),
            "class": str(class_name), "min_tissue": float(min_tissue),
            "stride": None if stride is None else int(stride),
            "patch": {"size": spec.size, "level": spec.level, "mpp": spec.mpp},
            "tissue": TissueParams().to_dict(), "files": HEATMAP_FILES_VERSION}


def default_workers(device: str, world_size: int | None = None) -> int:
    """Patch-reading processes per slide (see :func:`exaslide.infer.batches.default_workers`)."""
    from exaslide.infer.batches import default_workers as default

    return default(device, world_size)


@dataclass(frozen=True)
class InferOptions:
    """Everything that decides a heatmap (stored in each slide's status; a change redoes
    the slide). How the work runs (device, batch size, threads) is not here."""

    class_name: str = "tumour"
    min_tissue: float = 0.1
    stride: int | None = None
    backend: str | None = None
    #: the requested ``decode`` setting (``auto`` as such, not what it resolved to for
    #: the slide): ``gpu`` pixels differ from ``off`` ones by IDCT rounding, so a rerun
    #: with another setting redoes the slides rather than mixing decoders.
    decode: str = "off"


@dataclass(frozen=True)
class _Runner:
    """The loaded model and how to run it (not part of the fingerprint)."""

    model: Any
    meta: dict
    model_print: dict
    spec: PatchSpec
    device: Any
    batch_size: int
    workers: int
    amp: bool
    progress: bool
    readers: str = "processes"


def _process(runner: _Runner, entry, options: InferOptions, ctx) -> dict[str, Any]:
    """The ``infer`` stage: one slide's heatmap files, written into the partial folder
    and adopted under their final names."""
    from exaslide.infer.outputs import output_paths
    from exaslide.infer.slide import run_slide

    fingerprint = heatmap_fingerprint(runner.model_print, entry.path,
                                      class_name=options.class_name,
                                      min_tissue=options.min_tissue, stride=options.stride,
                                      spec=runner.spec)
    _, info = run_slide(runner.model, runner.meta, entry.path, ctx.partial,
                        slide_id=entry.slide_id, stride=options.stride,
                        batch_size=runner.batch_size, device=runner.device,
                        workers=runner.workers, amp=runner.amp,
                        min_tissue=options.min_tissue, class_name=options.class_name,
                        backend=options.backend, progress=runner.progress,
                        fingerprint=fingerprint, decode=options.decode,
                        readers=runner.readers)
    for path in output_paths(ctx.partial, entry.slide_id).values():
        ctx.adopt(path, path.name)
    warnings = [] if info["computed_cells"] else \
        ["0 cells computed: no patch position meets --min-tissue"]
    return {"cells": info["computed_cells"], "seconds": info["seconds"],
            "warnings": warnings}


def infer_cohort(model_path: str | os.PathLike, slides: str | os.PathLike | Iterable,
                 out_dir: str | os.PathLike, *, stride: int | None = None,
                 batch_size: int = 64, device: str = "cpu", workers: int | None = None,
                 amp: bool = True, min_tissue: float = 0.1, class_name: str = "tumour",
                 backend: str | None = None, overwrite: bool = False,
                 rank: int | None = None, world_size: int | None = None,
                 progress: bool = True,
                 on_result: Callable[[SlideOutcome], None] | None = None,
                 decode: str = "off", readers: str = "processes"
                 ) -> list[SlideOutcome]:
    """Heatmaps of many slides with one model file (see :func:`infer_slide`), on the job
    engine (:func:`exaslide.jobs.run_stage`, stage ``infer``).

    Args:
        model_path: a file written by :func:`exaslide.models.save_model`.
        slides: a manifest CSV, one slide path, or an iterable of slide paths or manifest
            entries (slide ids: the manifest's, or file names without extension).
        out_dir: output folder; ``status/<slide_id>.json`` and ``infer_status.json``
            (``infer_status.rank<r>.json`` under torchrun) record each slide's outcome.
        workers: patch-reading processes per slide (default: :func:`default_workers`).
        overwrite: redo slides already done (same model file, slide and settings).
        rank, world_size: this process's share of the slides (default: from
            ``torch.distributed`` or the ``RANK`` / ``WORLD_SIZE`` variables torchrun sets).
        on_result: called with each slide's :class:`SlideOutcome`.
        stride, batch_size, device, amp, min_tissue, class_name, backend, progress,
            decode, readers: as for :func:`infer_slide`.

    Returns:
        The outcomes of this rank's slides, in order. A failing slide is logged and
        recorded; the others still run.

    Raises:
        ModelError: the model file cannot be loaded. ManifestError: a bad manifest.
        InferenceError: bad meta, class or device.
    """
    from exaslide.infer.slide import model_inputs, resolve_device
    from exaslide.jobs import SlideEntry, Stage, run_stage
    from exaslide.models import load_model

    entries = [SlideEntry(slide_id, path) for slide_id, path in _entries(slides)]
    from exaslide.storage.urls import is_remote

    model_file = str(model_path) if is_remote(str(model_path)) else Path(model_path)
    # before loading: a file replaced meanwhile then does not match its heatmaps
    model_print = file_fingerprint(model_file) if isinstance(model_file, str) or \
        model_file.is_file() else {}
    model, meta = load_model(model_file)
    spec = model_inputs(meta, class_name).spec  # bad meta or class: fail once, not per slide
    dev = resolve_device(device)
    _check_reading(decode, readers, dev)  # fail once, not per slide
    runner = _Runner(model, meta, model_print, spec, dev, batch_size,
                     default_workers(dev.type, world_size) if workers is None else workers, amp,
                     progress, readers)
    options = InferOptions(class_name, float(min_tissue), stride, backend, decode)
    stage = Stage("infer", options, process=functools.partial(_process, runner),
                  inputs=lambda entry: [entry.path],
                  extra_fingerprint=lambda _e, _o: {"model": model_print, "patch": {
                      "size": spec.size, "level": spec.level, "mpp": spec.mpp}},
                  upgrade_status=with_decode_off)

    def on_event(kind: str, value) -> None:
        if kind == "slide" and on_result is not None:
            on_result(_outcome(value))

    outcomes = run_stage(stage, entries, out_dir, scheduler="inline", overwrite=overwrite,
                         rank=rank, world_size=world_size, on_event=on_event)
    return [_outcome(o) for o in outcomes]


def with_decode_off(status: dict) -> dict:
    """A status written before ``decode`` was recorded among the options (of ``infer``
    or ``embed``), in today's form: with ``decode: off``. Until then the default decoded
    in the reader processes, except ``auto`` on CUDA, and no GPU had run the nvJPEG path,
    so such outputs are those of ``off`` and are skipped by a rerun with it."""
    options = status.get("options")
    if isinstance(options, dict) and "decode" not in options:
        return dict(status, options={**options, "decode": "off"})
    return status


def _check_reading(decode: str, readers: str, device) -> None:
    """Refuse an unknown ``readers`` or ``decode``, or ``decode="gpu"`` without CUDA."""
    from exaslide.infer.batches import READERS
    from exaslide.infer.decoded import resolve_decode

    if readers not in READERS:
        raise InferenceError(f"readers must be one of {READERS}, got {readers!r}")
    try:
        resolve_decode(decode, device)  # auto on CUDA: each slide looked at in its turn
    except ValueError as exc:
        raise InferenceError(str(exc)) from None


def _outcome(o) -> SlideOutcome:
    return SlideOutcome(o.slide_id, o.status, o.error, int(o.result.get("cells", 0)),
                        float(o.result.get("seconds", 0.0)), o.warnings)
