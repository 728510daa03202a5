"""BatchDecoder: the device path's resampling against OpenCV's, damaged tiles named,
the prefetching loader; on a CUDA machine, nvJPEG against the CPU twin (skipped
elsewhere)."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
import torch
from jpeg_slides import index_table, texture, write_aperio_like

from exaslide.data import SlidePatchDataset
from exaslide.data.batch_decode import (
    BatchDecoder,
    DecodedLoader,
    resample_matrix,
    resample_torch,
)
from exaslide.data.compressed_batch import AREA, LINEAR
from exaslide.data.compressed_dataset import CompressedPatchDataset
from exaslide.data.loader import collate_patches
from exaslide.data.tile_bytes import TileDecodeError

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (nvJPEG)")


@pytest.mark.parametrize(("size_in", "size_out", "mode"), [
    (128, 64, AREA), (115, 64, AREA), (64, 64, AREA), (201, 224, AREA),
    (60, 64, LINEAR), (63, 64, LINEAR), (100, 64, LINEAR),
])
def test_torch_resampling_matches_opencv_within_rounding(size_in, size_out, mode):
    image = texture(size_in, size_in + 3, seed=size_in)
    expected = cv2.resize(image, (size_out, size_out), interpolation=cv2.INTER_AREA
                          if mode == AREA else cv2.INTER_LINEAR)
    got = resample_torch(torch.from_numpy(image)[None], size_out, mode)[0].numpy()
    diff = np.abs(got.astype(int) - expected)
    assert diff.max() <= 1 and diff.mean() < 0.25  # cv2 rounds fixed-point weights
    weights = resample_matrix(size_in, size_out, mode)
    np.testing.assert_allclose(weights.sum(1), 1.0)


def test_a_tile_that_does_not_decode_is_named(synth_slide):
    dataset = CompressedPatchDataset(index_table([0, 300], [0, 40], size=64),
                                     slides={"s": str(synth_slide.path)})
    batch = dataset[[0, 1]]
    start = int(batch.offsets[1])
    dht = bytes(batch.data[start:].numpy()).index(b"\xff\xc4")
    batch.data[start + dht + 4 : start + dht + 30] = 0xFF  # a bogus Huffman table
    for assemble in ("numpy", "torch"):
        with pytest.raises(TileDecodeError, match=r"s level 0 tile \(1, 0\): the stored "
                                                  "JPEG tile does not decode"):
            BatchDecoder("cpu", assemble=assemble, threads=2)(batch)


def test_bad_decoder_settings_are_refused():
    with pytest.raises(ValueError, match="decoder must be one of"):
        BatchDecoder("cpu", decoder="pil")
    with pytest.raises(ValueError, match="assemble must be one of"):
        BatchDecoder("cpu", assemble="loop")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        BatchDecoder("cpu", decoder="nvjpeg")


class _Batches:
    """A loader stand-in: real compressed batches, then optionally an error."""

    def __init__(self, batches, error=None):
        self.batches, self.error = batches, error
        self.taken = 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.taken += 1
            yield batch
        if self.error is not None:
            raise self.error


def test_prefetching_loader_keeps_order_passes_errors_and_stops_early(synth_slide):
    dataset = CompressedPatchDataset(index_table(np.arange(0, 2000, 97),
                                                 np.arange(0, 2000, 97), size=64),
                                     slides={"s": str(synth_slide.path)})
    batches = [dataset[[i, i + 1]] for i in range(0, 20, 2)]
    decoder = BatchDecoder("cpu", threads=2)
    plain = [decoder(b)[0] for b in batches]
    got = [images for images, _, _ in DecodedLoader(_Batches(batches), decoder, prefetch=2)]
    assert len(got) == len(plain) and all(torch.equal(a, b) for a, b in zip(plain, got,
                                                                             strict=True))
    failing = DecodedLoader(_Batches(batches[:2], RuntimeError("worker died")), decoder, 1)
    with pytest.raises(RuntimeError, match="worker died"):
        list(failing)
    source = _Batches(batches)
    for step, _ in enumerate(DecodedLoader(source, decoder, prefetch=1)):
        if step == 1:
            break
    assert source.taken <= 4  # the thread stopped soon after
    assert not any(t.name == "exaslide-decode" for t in threading.enumerate())


# ---------------------------------------------------------------- on a CUDA device only
def _gpu_against_cpu(table, slides, **options):
    dataset = CompressedPatchDataset(table, slides=slides, **options)
    batch = dataset[list(range(len(dataset)))]
    cpu, _, _ = BatchDecoder("cpu")(batch)
    gpu_decoder = BatchDecoder("cuda")
    gpu, _, _ = gpu_decoder(batch.pin_memory())
    assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
    reference = collate_patches([SlidePatchDataset(table, slides=slides, **options)[i]
                                 for i in range(len(dataset))])[0]
    assert torch.equal(cpu, reference)
    diff = (gpu.cpu().int() - cpu.int()).abs().float()
    assert diff.mean() <= 1.0, f"mean absolute difference {diff.mean():.3f}"
    return gpu_decoder, diff


@needs_cuda
def test_nvjpeg_level_edge_and_resampled_patches_are_within_one_of_the_cpu(synth_slide):
    w, h = synth_slide.level_dimensions[0]
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(-40, w, 64), rng.integers(-40, h, 64)
    slides = {"s": str(synth_slide.path)}
    for options in ({}, {"size": 48}, {"mpp": 0.9}, {"mpp": 0.49}):
        _gpu_against_cpu(index_table(xs, ys, size=64), slides, **options)
    _gpu_against_cpu(index_table(xs // 4, ys // 4, size=64, level=1), slides)


@needs_cuda
def test_nvjpeg_rgb_coded_tiles_match_or_go_to_the_cpu(tmp_path):
    path = write_aperio_like(tmp_path / "rgb.tif", texture(300, 400), tile=64)
    rng = np.random.default_rng(1)
    decoder, _ = _gpu_against_cpu(index_table(rng.integers(0, 380, 32),
                                              rng.integers(0, 280, 32), size=48),
                                  {"s": path})
    assert decoder._gpu_reads_rgb is not None  # decided, and either way within bounds


@needs_cuda
def test_nvjpeg_damaged_tile_is_named_and_the_device_still_works(synth_slide):
    dataset = CompressedPatchDataset(index_table([0, 300], [0, 40], size=64),
                                     slides={"s": str(synth_slide.path)})
    batch = dataset[[0, 1]]
    start = int(batch.offsets[1])
    dht = bytes(batch.data[start:].numpy()).index(b"\xff\xc4")
    batch.data[start + dht + 4 : start + dht + 30] = 0xFF
    with pytest.raises(TileDecodeError, match=r"tile \(1, 0\)"):
        BatchDecoder("cuda")(batch)
    images, _, _ = BatchDecoder("cuda")(dataset[[0, 1]])
    assert images.float().mean().item() > 0  # CUDA is still usable
