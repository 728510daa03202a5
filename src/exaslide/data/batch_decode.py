"""Decode a :class:`~exaslide.data.compressed_batch.CompressedBatch` and assemble its
patches on a device: the training-process half of the compressed batch path.

:class:`BatchDecoder` turns a batch of JPEG streams and its plan into the same
``(images, labels, metadata)`` that :func:`~exaslide.data.loader.make_loader` yields:
``images`` a ``uint8`` ``N x 3 x S x S`` tensor in channels-last memory on the device.

- On a CUDA device (``decoder="nvjpeg"``) all streams go to one batched
  ``torchvision.io.decode_jpeg(list, device="cuda")`` call (nvJPEG); the patches are then
  gathered from the decoded tiles in one vectorised indexing per tile shape (no Python loop
  over patches), resampled for ``mpp`` patches with two batched matrix products (exact
  area / linear weights, as OpenCV's ``INTER_AREA`` / ``INTER_LINEAR``), and the fallback
  pixels are copied in. Pixels differ from the CPU reader's only by the IDCT and
  rounding (mean absolute difference <= 1 is the tested bound).
- On the CPU (``decoder="imagecodecs"``) streams are decoded by libjpeg-turbo in threads
  that release the GIL, and patches are assembled with block copies and
  ``cv2.resize`` exactly as :class:`~exaslide.patches.reader.PatchReader` does: the
  pixels are identical to it (the CI twin of the GPU path). ``assemble="torch"`` runs the
  GPU assembly code on CPU tensors instead (for tests).

A stream that does not decode raises :class:`~exaslide.data.tile_bytes.TileDecodeError`
naming the slide, level and tile: on the GPU the failed batch is decoded again on the
CPU, stream by stream, to find it (and if every stream decodes there, the batch is used
with a warning rather than lost).

:class:`DecodedLoader` wraps a loader of compressed batches: it decodes the next batch in
a background thread (on its own CUDA stream on a GPU) while the model trains on this one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import queue
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from exaslide.data.compressed_batch import AREA, NO_RESAMPLE, CompressedBatch
from exaslide.data.tile_bytes import TileDecodeError

logger = logging.getLogger(__name__)

DECODERS = ("auto", "nvjpeg", "imagecodecs")
ASSEMBLERS = ("auto", "numpy", "torch")
#: Largest mean absolute difference accepted between nvJPEG and libjpeg on an RGB-coded
#: (Adobe transform 0) stream before RGB streams are decoded on the CPU instead.
RGB_CHECK_TOLERANCE = 1.5


def _cv2_interpolation(mode: int) -> int:
    import cv2

    return cv2.INTER_AREA if mode == AREA else cv2.INTER_LINEAR


class BatchDecoder:
    """Decode and assemble compressed batches on ``device`` (see the module docstring).

    Args:
        device: where images end up (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        decoder: ``"nvjpeg"`` (CUDA devices), ``"imagecodecs"`` (libjpeg-turbo on CPU
            threads), or ``"auto"``: nvjpeg on CUDA, else imagecodecs.
        assemble: ``"numpy"`` (block copies and cv2 on the CPU, then one copy of the
            batch to the device: pixels identical to the CPU reader), ``"torch"``
            (vectorised on the device), or ``"auto"``: numpy with the imagecodecs decoder,
            torch with nvjpeg.
        threads: CPU decoding threads (default: ``exaslide.runtime.default_threads()``).
    """

    def __init__(self, device: str | torch.device = "cpu", *, decoder: str = "auto",
                 assemble: str = "auto", threads: int | None = None):
        from exaslide.runtime import default_threads

        self.device = torch.device(device)
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if assemble not in ASSEMBLERS:
            raise ValueError(f"assemble must be one of {ASSEMBLERS}, got {assemble!r}")
        cuda = self.device.type == "cuda"
        self.decoder = decoder if decoder != "auto" else "nvjpeg" if cuda else "imagecodecs"
        if self.decoder == "nvjpeg" and not cuda:
            raise ValueError(f"decoder 'nvjpeg' needs a CUDA device, not {self.device}")
        self.assemble = assemble if assemble != "auto" else \
            "numpy" if self.decoder == "imagecodecs" else "torch"
        self.threads = max(1, threads or default_threads())
        self._pool: ThreadPoolExecutor | None = None
        self._gpu_reads_rgb: bool | None = None  # decided on the first RGB-coded stream

    def __call__(self, batch: CompressedBatch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(images, labels, metadata)`` of one batch (images on the device)."""
        if self.assemble == "numpy":
            images = torch.from_numpy(self._assemble_numpy(batch))
            if self.device.type != "cpu":
                images = images.pin_memory().to(self.device, non_blocking=True)
        else:
            images = self._assemble_torch(batch)
        return images.permute(0, 3, 1, 2), batch.labels, batch.metadata

    # ------------------------------------------------------------------------ decoding
    def decode_cpu(self, batch: CompressedBatch,
                   which: list[int] | None = None) -> list[np.ndarray]:
        """The ``(height, width, 3)`` pixels of streams ``which`` (default: all), decoded
        by libjpeg-turbo in :attr:`threads` threads.

        Raises:
            TileDecodeError: a stream that does not decode (named).
        """
        data = batch.data.numpy()
        bounds = batch.offsets.tolist()
        which = list(range(batch.stream_count)) if which is None else which

        def one(i: int) -> np.ndarray:
            return _decode_one(data[bounds[i] : bounds[i + 1]], batch, i)

        if self.threads == 1 or len(which) < 2:
            return [one(i) for i in which]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="jpeg")
        chunk = -(-len(which) // self.threads)
        parts = [which[k : k + chunk] for k in range(0, len(which), chunk)]
        results = self._pool.map(lambda part: [one(i) for i in part], parts)
        return [tile for part in results for tile in part]

    def decode_device(self, batch: CompressedBatch) -> list[torch.Tensor]:
        """Every stream decoded to a ``(height, width, 3)`` ``uint8`` tensor on the
        device (nvJPEG on CUDA; CPU-decoded and copied otherwise)."""
        if self.decoder != "nvjpeg" or batch.stream_count == 0:
            return [torch.from_numpy(t).to(self.device, non_blocking=True)
                    for t in self.decode_cpu(batch)]
        rgb = batch.stream_rgb.tolist()
        if any(rgb) and self._gpu_reads_rgb is None:
            self._gpu_reads_rgb = self._check_rgb(batch, rgb.index(True))
        on_cpu = [i for i, is_rgb in enumerate(rgb) if is_rgb and not self._gpu_reads_rgb]
        cpu_set = set(on_cpu)
        on_gpu = [i for i in range(batch.stream_count) if i not in cpu_set]
        tiles: list[torch.Tensor | None] = [None] * batch.stream_count
        for i, tile in zip(on_gpu, self._nvjpeg(batch, on_gpu), strict=True):
            tiles[i] = tile
        for i, tile in zip(on_cpu, self.decode_cpu(batch, on_cpu), strict=True):
            tiles[i] = torch.from_numpy(tile).to(self.device, non_blocking=True)
        return tiles

    def _nvjpeg(self, batch: CompressedBatch, which: list[int]) -> list[torch.Tensor]:
        """Streams ``which`` decoded by nvJPEG; when it fails, decoded on the CPU
        instead (naming the damaged stream if libjpeg refuses it too)."""
        if not which:
            return []
        try:
            return self._nvjpeg_raw(batch, which)
        except RuntimeError as exc:  # find the damaged stream on the CPU
            tiles = self.decode_cpu(batch, which)  # raises TileDecodeError naming it
            logger.warning("nvJPEG failed on a batch that libjpeg decodes (%s); using the "
                           "CPU decode for it", exc)
            return [torch.from_numpy(t).to(self.device) for t in tiles]

    def _nvjpeg_raw(self, batch: CompressedBatch, which: list[int]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        streams = batch.streams()
        # torchvision allocates the outputs on this stream but writes them on its own:
        # let this stream's queued work finish first, so that no memory block it still
        # reads is handed to the decoder (pytorch/vision#9606)
        torch.cuda.current_stream(self.device).synchronize()
        with warnings.catch_warnings():  # torchvision 0.29 points to torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            chw = decode_jpeg([streams[i] for i in which], mode=ImageReadMode.RGB,
                              device=self.device)
        return [t.permute(1, 2, 0) for t in chw]

    def _check_rgb(self, batch: CompressedBatch, i: int) -> bool:
        """True when nvJPEG decodes RGB-coded (Adobe transform 0) stream ``i`` like
        libjpeg (mean absolute difference within :data:`RGB_CHECK_TOLERANCE`)."""
        reference = torch.from_numpy(self.decode_cpu(batch, [i])[0]).float()
        try:
            gpu = self._nvjpeg_raw(batch, [i])[0].float().cpu()
        except Exception as exc:  # any failure: do not use nvJPEG for them
            logger.warning("nvJPEG cannot decode RGB-coded JPEG tiles (%s): they are "
                           "decoded on the CPU", exc)
            return False
        diff = float((gpu - reference).abs().mean()) if gpu.shape == reference.shape \
            else math.inf
        if diff > RGB_CHECK_TOLERANCE:
            logger.warning("nvJPEG decodes RGB-coded JPEG tiles differently from libjpeg "
                           "(mean difference %.1f): they are decoded on the CPU", diff)
        return diff <= RGB_CHECK_TOLERANCE

    # ---------------------------------------------------------------------- assembling
    def _assemble_numpy(self, batch: CompressedBatch) -> np.ndarray:
        """``(N, S, S, 3)`` pixels: block copies from CPU-decoded tiles (PatchReader's)."""
        import cv2

        size = batch.size
        out = np.empty((len(batch), size, size, 3), np.uint8)
        tiles = self.decode_cpu(batch)
        plan = zip(batch.position.tolist(), batch.box.tolist(), batch.tile0.tolist(),
                   batch.tiles.numpy(), batch.tile_size.tolist(), batch.level_size.tolist(),
                   batch.resample.tolist(), strict=True)
        for position, box, tile0, table, tile_size, level_size, resample in plan:
            x0, y0, x1, y1 = box
            region = out[position] if resample == NO_RESAMPLE else \
                np.empty((y1 - y0, x1 - x0, 3), np.uint8)
            _paste_tiles(region, box, tile0, table, tile_size, level_size, tiles)
            if resample != NO_RESAMPLE:
                out[position] = cv2.resize(region, (size, size),
                                           interpolation=_cv2_interpolation(resample))
        if len(batch.fallback_position):
            out[batch.fallback_position.numpy()] = batch.fallback_pixels.numpy()
        return out

    def _assemble_torch(self, batch: CompressedBatch) -> torch.Tensor:
        """``(N, S, S, 3)`` pixels on the device: one vectorised gather (and, for
        resampled patches, two matrix products) per group of patches that share tile
        size, box size and resampling; no Python loop over patches."""
        size, device = batch.size, self.device
        out = torch.empty((len(batch), size, size, 3), dtype=torch.uint8, device=device)
        if len(batch.position):
            tiles = self.decode_device(batch)
            boxes = batch.box.numpy()
            keys = np.stack([batch.tile_size[:, 0].numpy(), batch.tile_size[:, 1].numpy(),
                             boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1],
                             batch.resample.numpy()], axis=1)
            for key in np.unique(keys, axis=0):
                rows = torch.from_numpy(np.flatnonzero((keys == key).all(axis=1)))
                pixels = self._gather_group(tiles, batch, rows, key, size)
                out[batch.position[rows].to(device, non_blocking=True)] = pixels
        if len(batch.fallback_position):
            out[batch.fallback_position.to(device)] = \
                batch.fallback_pixels.to(device, non_blocking=True)
        return out

    def _gather_group(self, tiles: list[torch.Tensor], batch: CompressedBatch,
                      rows: torch.Tensor, key: np.ndarray, size: int) -> torch.Tensor:
        """The planned patches ``rows``, which share tile size, box size and resampling:
        ``(len(rows), size, size, 3)`` on the device."""
        tw, th, bw, bh, resample = (int(v) for v in key)
        tables = batch.tiles[rows]  # (P, KY, KX) stream indices, on the CPU
        used = torch.unique(tables[tables >= 0])
        local = torch.full((batch.stream_count + 1,), -1, dtype=torch.int64)
        local[used] = torch.arange(len(used))  # stream -> row of the stack; -1 stays -1
        if len(used):
            stack = torch.stack([_pad_tile(tiles[i], th, tw) for i in used.tolist()])
        else:
            stack = torch.full((1, th, tw, 3), 255, dtype=torch.uint8, device=self.device)
        device = self.device
        pixels = gather_patches(stack, local[tables].to(device, non_blocking=True),
                                batch.box[rows].to(device, non_blocking=True),
                                batch.tile0[rows].to(device, non_blocking=True),
                                batch.level_size[rows].to(device, non_blocking=True), bh, bw)
        if resample == NO_RESAMPLE:
            return pixels
        return resample_torch(pixels, size, resample)

    def close(self) -> None:
        """Stop the decoding threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"] = None
        return state


def _decode_one(stream: np.ndarray, batch: CompressedBatch, i: int) -> np.ndarray:
    import imagecodecs

    try:
        tile = imagecodecs.jpeg8_decode(stream)
    except Exception as exc:
        raise TileDecodeError(f"{batch.stream_name(i)}: the stored JPEG tile does not "
                              f"decode: {exc}") from exc
    if tile.ndim != 3 or tile.shape[2] != 3:
        raise TileDecodeError(f"{batch.stream_name(i)}: expected a 3-channel JPEG tile, "
                              f"got shape {tile.shape}")
    return tile


def _paste_tiles(region: np.ndarray, box, tile0, table: np.ndarray, tile_size, level_size,
                 tiles: list[np.ndarray]) -> None:
    """Copy the tiles of ``table`` into ``region`` (the box's pixels); white where the box
    leaves the level (as :class:`PatchReader` assembles a patch)."""
    x0, y0, x1, y1 = box
    tw, th = tile_size
    lw, lh = level_size
    if x0 < 0 or y0 < 0 or x1 > lw or y1 > lh:
        region.fill(255)
    for ky, kx in zip(*np.nonzero(table >= 0), strict=True):
        tile = tiles[table[ky, kx]]
        sx0, sy0 = (tile0[0] + kx) * tw, (tile0[1] + ky) * th
        ax0, ay0 = max(x0, sx0), max(y0, sy0)
        ax1 = min(x1, sx0 + tile.shape[1], lw)
        ay1 = min(y1, sy0 + tile.shape[0], lh)
        if ax1 <= ax0 or ay1 <= ay0:
            continue  # the tile holds none of the box's pixels inside the level
        region[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = \
            tile[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0]


def _pad_tile(tile: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """A decoded tile as exactly ``th x tw`` (JPEG tiles are; this guards odd files)."""
    h, w = tile.shape[:2]
    if (h, w) == (th, tw):
        return tile
    out = torch.full((th, tw, 3), 255, dtype=torch.uint8, device=tile.device)
    out[: min(h, th), : min(w, tw)] = tile[:th, :tw]
    return out


def gather_patches(stack: torch.Tensor, tables: torch.Tensor, box: torch.Tensor,
                   tile0: torch.Tensor, level_size: torch.Tensor, height: int,
                   width: int) -> torch.Tensor:
    """Gather ``P`` boxes of ``height x width`` pixels from decoded tiles in one indexing.

    Args:
        stack: ``(n, th, tw, 3)`` decoded tiles (any strides).
        tables: ``(P, KY, KX)`` index into ``stack`` of each box's tiles, -1 for none.
        box, tile0, level_size: the plan's columns for these boxes (see
            :mod:`~exaslide.data.compressed_batch`).

    Returns:
        ``(P, height, width, 3)`` ``uint8``; white (255) outside the level.
    """
    device = stack.device
    th, tw = stack.shape[1], stack.shape[2]
    ys = box[:, 1, None] + torch.arange(height, device=device)  # (P, H) level rows
    xs = box[:, 0, None] + torch.arange(width, device=device)  # (P, W) level columns
    ky = (torch.div(ys, th, rounding_mode="floor") - tile0[:, 1, None]) \
        .clamp_(0, tables.shape[1] - 1)
    kx = (torch.div(xs, tw, rounding_mode="floor") - tile0[:, 0, None]) \
        .clamp_(0, tables.shape[2] - 1)
    rows = torch.arange(len(box), device=device)[:, None, None]
    which = tables[rows, ky[:, :, None], kx[:, None, :]]  # (P, H, W)
    inside_y = (ys >= 0) & (ys < level_size[:, 1, None])
    inside_x = (xs >= 0) & (xs < level_size[:, 0, None])
    valid = inside_y[:, :, None] & inside_x[:, None, :] & (which >= 0)
    pixels = stack[which.clamp(min=0), torch.remainder(ys, th)[:, :, None],
                   torch.remainder(xs, tw)[:, None, :]]  # (P, H, W, 3)
    return pixels.masked_fill_(~valid[..., None], 255)


@functools.lru_cache(maxsize=256)
def resample_matrix(n_in: int, n_out: int, mode: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of OpenCV's 1-D resampling, computed as ``cv::resize``
    does (same scale arithmetic): ``INTER_AREA`` when shrinking (overlap areas), its
    ``INTER_AREA`` kernel when enlarging, or ``INTER_LINEAR`` (half-pixel centres, edge
    replicated). Rows sum to 1."""
    inv = n_out / n_in
    scale = 1.0 / inv
    weights = np.zeros((n_out, n_in), np.float64)
    if mode == AREA and n_in >= n_out:
        _area_weights(weights, n_in, n_out, scale)
        return weights
    for i in range(n_out):
        if mode == AREA:  # cv2's INTER_AREA when enlarging
            sx = math.floor(i * scale)
            fx = float(np.float32((i + 1) - (sx + 1) * inv))
            fx = 0.0 if fx <= 0 else fx - math.floor(fx)
        else:
            f = float(np.float32((i + 0.5) * scale - 0.5))
            sx = math.floor(f)
            fx = f - sx
        if sx < 0:
            sx, fx = 0, 0.0
        if sx >= n_in - 1:
            sx, fx = n_in - 1, 0.0
        weights[i, sx] += 1 - fx
        weights[i, min(sx + 1, n_in - 1)] += fx
    return weights


def _area_weights(weights: np.ndarray, n_in: int, n_out: int, scale: float) -> None:
    """OpenCV's ``computeResizeAreaTab``: each output pixel averages the input cells its
    footprint ``[i * scale, (i + 1) * scale)`` covers, partial cells by their overlap."""
    for i in range(n_out):
        start = i * scale
        end = start + scale
        cell = min(scale, n_in - start)
        first, last = math.ceil(start), min(math.floor(end), n_in - 1)
        first = min(first, last)
        if first - start > 1e-3:
            weights[i, first - 1] = (first - start) / cell
        weights[i, first:last] = 1.0 / cell
        if end - last > 1e-3:
            weights[i, last] = min(min(end - last, 1.0), cell) / cell


def resample_torch(pixels: torch.Tensor, size: int, mode: int) -> torch.Tensor:
    """Resize ``(G, H, W, 3)`` ``uint8`` boxes to ``(G, size, size, 3)`` on their device
    with two batched matrix products (:func:`resample_matrix` weights)."""
    device = pixels.device
    _, height, width, _ = pixels.shape
    wy = torch.from_numpy(resample_matrix(height, size, mode)).float().to(device)
    wx = torch.from_numpy(resample_matrix(width, size, mode)).float().to(device)
    x = pixels.permute(0, 3, 1, 2).float()  # (G, 3, H, W)
    y = torch.matmul(torch.matmul(wy, x), wx.T)  # (G, 3, size, size)
    return y.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


class DecodedLoader:
    """Iterate decoded batches of a loader of :class:`CompressedBatch`.

    Args:
        loader: e.g. :func:`~exaslide.data.compressed_dataset.make_compressed_loader`.
        decoder: a :class:`BatchDecoder`.
        prefetch: batches decoded ahead in a background thread (0: decode in the
            iterating thread). On CUDA the thread decodes on its own stream.

    Yields ``(images, labels, metadata)`` as :func:`~exaslide.data.loader.make_loader`
    does (``images`` already on the decoder's device).
    """

    def __init__(self, loader, decoder: BatchDecoder, prefetch: int = 1):
        self.loader, self.decoder, self.prefetch = loader, decoder, max(0, int(prefetch))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        if self.prefetch == 0:
            for batch in self.loader:
                yield self.decoder(batch)
            return
        yield from _Prefetcher(self.loader, self.decoder, self.prefetch)


class _Prefetcher:
    """One pass over a loader, decoding ahead in a daemon thread."""

    _END = object()

    def __init__(self, loader, decoder: BatchDecoder, depth: int):
        self.loader, self.decoder = loader, decoder
        self.device = decoder.device
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="exaslide-decode",
                                       daemon=True)

    def __iter__(self):
        self.thread.start()
        try:
            while True:
                item = self.queue.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                images, labels, metadata, event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    images.record_stream(current)
                yield images, labels, metadata
        finally:
            self.stop.set()
            while self.thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self.queue.get(timeout=0.05)
            self.thread.join()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        cuda = self.device.type == "cuda"
        try:
            if cuda:
                if self.device.index is not None:
                    torch.cuda.set_device(self.device)
                stream = torch.cuda.Stream(self.device)
            for batch in self.loader:
                if self.stop.is_set():
                    return
                event = None
                if cuda:
                    with torch.cuda.stream(stream):
                        images, labels, metadata = self.decoder(batch)
                        event = stream.record_event()
                else:
                    images, labels, metadata = self.decoder(batch)
                if not self._put((images, labels, metadata, event)):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the iterating thread
            self._put(exc)
