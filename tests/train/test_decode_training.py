"""Training through the compressed batch path (``decode: cpu``) sees the same batches as
the per-item path (``decode: off``): same losses, same weights; the decode setting is
validated in one line."""

from __future__ import annotations

import pytest
import torch

from exaslide.errors import TrainingError
from exaslide.train import TrainConfig, train
from exaslide.train.config import load_config


def _config(extracted, out, **extra) -> TrainConfig:
    values = {"data": str(extracted), "out": str(out), "model": "small-cnn",
              "patch_size": 48, "epochs": 2, "batch_size": 16, "workers": 0,
              "max_steps": 3, "lr": 0.001, "seed": 2, "patience": None, "threads": 1,
              "tensorboard": False}
    values.update(extra)
    return TrainConfig(**values)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_decode_cpu_trains_on_the_same_batches_as_the_per_item_path(extracted, tmp_path,
                                                                     caplog):
    runs = {}
    for decode in ("off", "cpu"):
        caplog.clear()
        with caplog.at_level("INFO", logger="exaslide.train.loop"):
            runs[decode] = train(_config(extracted, tmp_path / decode, decode=decode),
                                 progress=False)
        compressed = "decoding JPEG tiles in the training process (cpu" in caplog.text
        assert compressed == (decode == "cpu")
    off, cpu = runs["off"], runs["cpu"]
    assert off.weights_digest == cpu.weights_digest  # every batch's pixels and labels
    for a, b in zip(off.history, cpu.history, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
        assert a["val_auc"] == b["val_auc"] or (a["val_auc"] != a["val_auc"]
                                                and b["val_auc"] != b["val_auc"])


def test_decode_cpu_with_loader_workers_and_auto_on_the_cpu(extracted, tmp_path):
    from exaslide.train.distributed import setup, teardown
    from exaslide.train.loop import _decode_mode

    with_workers = train(_config(extracted, tmp_path / "w", decode="cpu", workers=2,
                                 epochs=1), progress=False)
    per_item = train(_config(extracted, tmp_path / "p", decode="off", workers=2, epochs=1),
                     progress=False)
    assert with_workers.weights_digest == per_item.weights_digest
    context = setup("cpu")
    try:
        assert _decode_mode(_config(extracted, tmp_path / "a"), context, None) is None
        assert _decode_mode(_config(extracted, tmp_path / "a", decode="auto"), context,
                            None) is None
        assert _decode_mode(_config(extracted, tmp_path / "a", decode="cpu"), context,
                            None) == "cpu"
        with pytest.raises(TrainingError, match="decode 'gpu' needs a CUDA device, but "
                                                "this runs on cpu"):
            _decode_mode(_config(extracted, tmp_path / "a", decode="gpu"), context, None)
    finally:
        teardown(context)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_is_gpu_on_a_cuda_device_with_jpeg_tiled_slides(extracted, tmp_path):
    from exaslide.data import SlidePatchDataset
    from exaslide.train.distributed import setup, teardown
    from exaslide.train.loop import _decode_mode

    context = setup("cuda")
    try:
        dataset = SlidePatchDataset(extracted)
        assert _decode_mode(_config(extracted, tmp_path / "a", decode="auto"), context,
                            dataset) == "gpu"
        # the default stays off on CUDA until bench/device.sh has measured nvJPEG
        assert _decode_mode(_config(extracted, tmp_path / "a"), context, dataset) is None
    finally:
        teardown(context)


@pytest.mark.parametrize(("values", "message"), [
    ({"decode": "fast"}, "decode: expected one of 'auto', 'gpu', 'cpu', 'off', got 'fast'"),
    ({"decode": True}, "decode: expected one of 'auto', 'gpu', 'cpu', 'off', got true"),
    ({"decode": "gpu", "source": "shards"}, "decode: expected 'auto' or 'off' with source "
                                            "'shards'"),
])
def test_bad_decode_values_are_one_line_errors(values, message):
    with pytest.raises(TrainingError) as info:
        TrainConfig(**values)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_decode_from_the_command_line_options():
    assert load_config(sets=["decode=cpu"]).decode == "cpu"
    assert TrainConfig().decode == "off"  # until nvJPEG is measured on a GPU
    with pytest.raises(TrainingError, match=r"^--set: decode: expected one of"):
        load_config(sets=["decode=nvjpeg"])
