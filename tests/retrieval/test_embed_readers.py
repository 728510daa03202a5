"""``embed patches`` reads with loader processes (or ships compressed tiles decoded in the
model's process): the same vectors as reading in the model's process, nothing left
behind; on the CPU the default reads in the model's process."""

from __future__ import annotations

import os
import resource

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from exaslide.errors import RetrievalError
from exaslide.models import create_model, save_model
from exaslide.retrieval.embed import embed_patches
from exaslide.retrieval.store import read_embeddings

VAL = pc.field("split") == "val"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    meta = {"classes": ["normal", "tumour"], "patch": {"size": 64, "level": 0, "mpp": None},
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    return save_model(path, create_model("small-cnn"), meta)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children only
    return usage.ru_utime + usage.ru_stime


def _live_children() -> set[int]:
    import multiprocessing

    multiprocessing.active_children()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == str(os.getpid()) and fields[0] != "Z":
                found.add(int(entry))
    return found


def _vectors(extracted, store, model, **kwargs) -> tuple[np.ndarray, float]:
    """The store's vectors sorted by key, and the CPU its reading processes spent."""
    before = _children_cpu()
    embed_patches(model, extracted, store, filter=VAL, batch_size=16, progress=False,
                  **kwargs)
    spent = _children_cpu() - before
    emb = read_embeddings(store)
    order = np.argsort(emb.table["key"].to_numpy(zero_copy_only=False))
    return np.asarray(emb.vectors)[order], spent


def test_processes_and_cpu_decoding_give_the_same_vectors(extracted, model_file, tmp_path):
    before = _live_children()
    inline, inline_cpu = _vectors(extracted, tmp_path / "inline", model=model_file,
                                  workers=0)
    processes, processes_cpu = _vectors(extracted, tmp_path / "p", model=model_file,
                                        workers=2)
    decoded, decoded_cpu = _vectors(extracted, tmp_path / "d", model=model_file,
                                    workers=2, decode="cpu")
    default, default_cpu = _vectors(extracted, tmp_path / "default", model=model_file)
    assert len(inline) > 10
    for other in (processes, decoded, default):
        np.testing.assert_array_equal(other, inline)
    assert inline_cpu == 0 and default_cpu == 0  # read in this process (the CPU default)
    assert processes_cpu > 0 and decoded_cpu > 0  # read by loader processes
    assert _live_children() - before == set()  # and they are gone


def test_decode_settings_are_checked(extracted, model_file, tmp_path):
    with pytest.raises(RetrievalError, match="decode must be one of"):
        embed_patches(model_file, extracted, tmp_path / "a", filter=VAL, decode="nvjpeg",
                      progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(RetrievalError, match="decode 'gpu' needs a CUDA device"):
            embed_patches(model_file, extracted, tmp_path / "b", filter=VAL, decode="gpu",
                          progress=False)


def test_a_rerun_with_another_decode_redoes_the_slides(extracted, model_file, tmp_path):
    """``decode`` is part of each slide's fingerprint (the requested setting): another
    one redoes the slides rather than mixing decoders in one store."""
    def statuses(**kwargs) -> set[str]:
        outcomes = []
        embed_patches(model_file, extracted, tmp_path / "store", filter=VAL, workers=0,
                      progress=False, on_result=outcomes.append, **kwargs)
        assert outcomes
        return {o.status for o in outcomes}

    assert statuses() == {"done"}
    assert statuses(decode="off") == {"skipped"}  # the default is off
    assert statuses(decode="cpu") == {"done"}
    assert statuses(decode="cpu") == {"skipped"}
    assert statuses(decode="auto") == {"done"}  # the request, not what it resolved to
    assert statuses(decode="auto") == {"skipped"}
