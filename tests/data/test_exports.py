"""``exaslide.data`` exports the compressed batch path next to the pixel loaders, and
importing it stays cheap (no module that is not already needed by the pixel path)."""

from __future__ import annotations

import subprocess
import sys

import exaslide.data as data
from exaslide.data.batch_decode import BatchDecoder, DecodedLoader
from exaslide.data.compressed_batch import CompressedBatch
from exaslide.data.compressed_dataset import CompressedPatchDataset, make_compressed_loader
from exaslide.data.tile_bytes import TileDecodeError


def test_the_compressed_path_is_exported():
    assert data.BatchDecoder is BatchDecoder and data.DecodedLoader is DecodedLoader
    assert data.CompressedBatch is CompressedBatch
    assert data.CompressedPatchDataset is CompressedPatchDataset
    assert data.make_compressed_loader is make_compressed_loader
    assert data.TileDecodeError is TileDecodeError
    for name in data.__all__:
        assert getattr(data, name) is not None, name
    assert sorted(data.__all__) == data.__all__


def test_import_loads_no_gpu_decoder_or_image_codec():
    """torchvision (nvJPEG), imagecodecs and cv2 are imported when a batch is decoded,
    not by ``import exaslide.data``."""
    code = ("import sys, exaslide.data; "
            "print(' '.join(m for m in ('torchvision', 'imagecodecs', 'cv2') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []
