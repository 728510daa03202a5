"""exaslide.runtime: devices, ranks, seeds and threads resolved in one place.

The machines running these tests have no GPU, so the CUDA paths are tested for their
errors (a clear one-line message), and ``auto`` for its CPU answer.
"""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from exaslide import runtime
from exaslide.errors import ExaslideError
from exaslide.runtime import DeviceError, RuntimeSetupError

NO_GPU = not torch.cuda.is_available() and not runtime.mps_available()
needs_no_gpu = pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
ENV = {"OMP_NUM_THREADS": "1"}
FORMS = "auto, cpu, cuda, cuda:N, mps"


def test_import_does_not_import_torch():
    code = "import sys, exaslide.runtime; assert 'torch' not in sys.modules, 'torch'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@needs_no_gpu
def test_auto_and_cpu_resolve_to_the_cpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")  # no GPU: the rank does not matter
    assert runtime.resolve_device("auto") == torch.device("cpu")
    assert runtime.resolve_device(" CPU ") == torch.device("cpu")
    assert runtime.resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu0", "cuda:x", "cuda:-1", "", "tpu", "cpu:0", 0])
def test_unknown_device_lists_the_accepted_forms(bad):
    with pytest.raises(DeviceError) as info:
        runtime.resolve_device(bad)
    message = str(info.value)
    assert isinstance(info.value, ExaslideError) and "\n" not in message
    assert FORMS in message and repr(bad) in message


@needs_no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1), "mps"])
def test_unavailable_gpu_is_a_clear_error(device, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun: still no GPU to take
    with pytest.raises(DeviceError, match="is not available on this machine; use"):
        runtime.resolve_device(device)


@pytest.mark.parametrize("variable, value", [("LOCAL_RANK", "x"), ("LOCAL_RANK", "-1"),
                                             ("LOCAL_WORLD_SIZE", "0")])
def test_bad_launcher_variables_are_named(variable, value, monkeypatch):
    monkeypatch.setenv(variable, value)
    with pytest.raises(RuntimeSetupError, match=f"{variable}={value}"):
        runtime.local_rank() if variable == "LOCAL_RANK" else runtime.local_world_size()


def test_distributed_context_from_arguments_and_environment(monkeypatch):
    from exaslide.data import distributed_context as from_data
    from exaslide.data.sampler import distributed_context as from_sampler

    assert from_data is from_sampler is runtime.distributed_context  # the old imports work
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert runtime.distributed_context() == (0, 1)
    assert runtime.distributed_context(2, 3) == (2, 3)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert runtime.distributed_context() == (1, 4)
    assert runtime.distributed_context(world_size=2) == (1, 2)
    with pytest.raises(ValueError, match="world size"):  # and an ExaslideError
        runtime.distributed_context(4, 4)
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(RuntimeSetupError, match="RANK=one"):
        runtime.distributed_context()


def _draws():
    return (random.random(), float(np.random.random()), float(torch.rand(1)))


def test_seed_everything_is_reproducible_and_differs_per_rank():
    assert runtime.seed_everything(7) == 7
    first = _draws()
    runtime.seed_everything(7)
    assert _draws() == first
    other = runtime.seed_everything(7, rank=1)
    assert other != 7 and _draws() != first
    assert runtime.seed_everything(7, rank=1) == other  # same rank, same seed
    for bad in (-1, 2.5, True, "7"):
        with pytest.raises(RuntimeSetupError, match="seed"):
            runtime.seed_everything(bad)


def test_set_threads_explicit_and_default(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert runtime.default_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")  # more processes than cores
        assert runtime.default_threads() == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        assert runtime.default_threads() == runtime.cpu_count()
        with pytest.raises(RuntimeSetupError, match="threads"):
            runtime.set_threads(0)
    finally:
        torch.set_num_threads(before)


def _infer(*args):
    import os

    done = subprocess.run([sys.executable, "-m", "exaslide", "infer", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **ENV})
    return done


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from exaslide.models import create_model, save_model

    path = tmp_path_factory.mktemp("model") / "model.pt"
    return save_model(path, create_model("small-cnn", num_classes=2),
                      {"classes": ["normal", "tumour"],
                       "patch": {"size": 32, "level": 2, "mpp": None}})


def test_infer_device_auto_works_and_gpu0_is_one_line(small_model, synth_slide, tmp_path):
    out = tmp_path / "auto"
    done = _infer(small_model, synth_slide.path, "--device", "auto", "--out", out)
    assert done.returncode == 0, done.stderr
    assert (out / "slide.heatmap.npy").is_file()
    bad = _infer(small_model, synth_slide.path, "--device", "gpu0", "--out", tmp_path / "b")
    assert bad.returncode == 2, bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("exaslide: error: "), bad.stderr
    assert "'gpu0'" in errors[0] and FORMS in errors[0]
    assert not (tmp_path / "b").exists()
