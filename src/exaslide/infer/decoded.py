"""Cell batches through the compressed batch path: reader processes ship the stored JPEG
tiles' bytes, this process decodes them (nvJPEG on a GPU, libjpeg-turbo threads on the
CPU) and assembles the patches (``docs/decode.md``).

``decode="cpu"`` gives the pixels of :class:`~exaslide.patches.PatchReader` exactly, so the
same heatmap as ``decode="off"``; ``"gpu"`` is within IDCT rounding of it. Patches a slide
cannot ship as JPEG tiles (other compressions, sparse tiles) are read as pixels by the
reader processes in the same batches.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import numpy as np
import torch

from exaslide.patches.spec import PatchSpec

logger = logging.getLogger(__name__)

#: ``decode`` settings: ``off`` (pixels decoded in the reader processes), ``cpu`` /
#: ``gpu`` (compressed tiles decoded in this process), ``auto`` (see
#: :func:`resolve_decode`). The default everywhere is ``off`` until bench/device.sh has
#: measured the nvJPEG path on a GPU (``docs/decode.md``).
DECODE_MODES = ("auto", "gpu", "cpu", "off")

#: How many slides ``auto`` checks (the first ones given).
AUTO_SLIDES = 4


def resolve_decode(decode: str, device, slides=(), backend: str | None = None) -> str:
    """``"off"``, ``"cpu"`` or ``"gpu"`` for a ``decode`` setting on ``device`` (a
    ``torch.device``): the one rule of training, inference and embedding.

    ``auto`` is ``gpu`` when ``device`` is CUDA and each of the first
    :data:`AUTO_SLIDES` of ``slides`` (paths; inference gives its one slide) is a
    JPEG-tiled TIFF (:func:`~exaslide.data.tile_bytes.is_jpeg_tiled`), else ``off``;
    slides are opened only then. Any other setting is returned as it is.

    Raises:
        ValueError: an unknown setting, or ``gpu`` without a CUDA device (each caller
            raises it as its own error type).
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    cuda = device.type == "cuda"
    if decode == "gpu" and not cuda:
        raise ValueError(f"decode 'gpu' needs a CUDA device, but this runs on {device}; "
                         "use decode 'cpu', 'off' or 'auto'")
    if decode != "auto":
        return decode
    if not cuda:
        return "off"
    from exaslide.data.tile_bytes import is_jpeg_tiled

    paths = list(itertools.islice(slides, AUTO_SLIDES))
    return "gpu" if paths and all(is_jpeg_tiled(p, backend) for p in paths) else "off"


def cell_table(path, spec: PatchSpec, xs: np.ndarray, ys: np.ndarray):
    """The cells as a one-slide :class:`~exaslide.data.sources.PatchTable` (row ``i`` is
    cell ``i``: top-left ``(xs[i], ys[i])``, the model's size and level or mpp)."""
    import pyarrow as pa

    from exaslide.data.sources import PatchTable

    n = len(xs)
    return PatchTable(
        keys=pa.array([str(i) for i in range(n)], pa.string()),
        slide=np.zeros(n, np.int32), slide_ids=[str(path)], paths=[str(path)],
        x=np.asarray(xs, np.int64), y=np.asarray(ys, np.int64),
        level=np.full(n, spec.level or 0, np.int16),
        mpp=np.full(n, np.nan if spec.mpp is None else spec.mpp, np.float32),
        size=np.full(n, spec.size, np.int32), label=np.full(n, -1, np.int16), classes=[])


def iter_decoded_batches(path, spec: PatchSpec, xs: np.ndarray, ys: np.ndarray,
                         batch_size: int, *, workers: int, device: torch.device,
                         decode: str, backend: str | None = None, prefetch: int = 2
                         ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(ids, batch)`` as :func:`~exaslide.infer.batches.iter_batches` does, the
    batch an ``(n, size, size, 3)`` uint8 view on ``device``: batches of consecutive
    cells (raster order), read as compressed tiles by ``workers`` processes (0: in this
    process) and decoded here by a :class:`~exaslide.data.batch_decode.BatchDecoder`
    (``decode``: ``"gpu"`` or ``"cpu"``).

    Raises:
        InferenceError: a reading process died. ``TileDecodeError`` (a ``SlideError``):
            a damaged tile, named.
    """
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    from exaslide.data.batch_decode import BatchDecoder, DecodedLoader
    from exaslide.data.compressed_dataset import CompressedPatchDataset, identity
    from exaslide.data.loader_workers import unwrap_worker_error
    from exaslide.infer.batches import reader_death

    if len(xs) == 0:
        return
    dataset = CompressedPatchDataset(cell_table(path, spec, xs, ys), backend=backend)
    batches = BatchSampler(SequentialSampler(range(len(xs))), batch_size, False)
    options = {"prefetch_factor": prefetch} if workers > 0 else {}
    loader = DataLoader(dataset, batch_size=None, sampler=batches, num_workers=workers,
                        pin_memory=device.type == "cuda", collate_fn=identity,
                        persistent_workers=False, **options)
    decoder = BatchDecoder(device, decoder="nvjpeg" if decode == "gpu" else "imagecodecs")
    started = _Started(loader)  # made here: shut down here, whatever thread iterates it
    try:
        for images, _labels, meta in DecodedLoader(started, decoder, prefetch=1):
            yield meta["index"].numpy(), images.permute(0, 2, 3, 1)
    except Exception as exc:
        death = reader_death(exc)
        if death is not None:
            raise death from exc
        clean = unwrap_worker_error(exc)
        if clean is exc:
            raise
        raise clean from None
    finally:
        started.close()
        decoder.close()
        dataset.close()


class _Started:
    """A DataLoader's one iterator, started in the calling thread and shut down by
    :meth:`close` (not whenever the garbage collector meets it: in a process forked for
    the next slide's readers, that shutdown would fail)."""

    def __init__(self, loader):
        self.iterator = iter(loader)

    def __iter__(self):
        return self.iterator

    def close(self) -> None:
        from exaslide.data.loader_workers import shutdown_workers

        shutdown_workers(self.iterator)
