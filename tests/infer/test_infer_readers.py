"""Reading processes: the same heatmap as threads and inline reading, a damaged tile or a
killed reader ends its slide with a clear error (never a hang), and nothing is left
behind (processes, shared memory)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from colour_model import colour_meta

from exaslide.data.loader_workers import unwrap_worker_error
from exaslide.errors import InferenceError, SlideError
from exaslide.evaluate.heatmap import read_heatmap
from exaslide.infer import default_workers, infer_cohort, infer_slide
from exaslide.infer.batches import _process_batches, _Ring, iter_batches
from exaslide.manifest import write_manifest
from exaslide.models import create_model
from exaslide.patches.spec import PatchSpec

SECONDS = 90  # any path here takes a few seconds; a hang fails the test instead


@contextlib.contextmanager
def deadline(seconds: int = SECONDS):
    """Fail with TimeoutError instead of hanging (SIGALRM reaches the main thread)."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s: a reader hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _children() -> list[int]:
    """Live child processes of this process (zombies reaped first)."""
    multiprocessing.active_children()
    me, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.append(int(entry))
    return found


def _leaked_segments() -> list[str]:
    """torch shared-memory segments (``torch_<pid>_...``) of this process or of a process
    that no longer exists: what a reader would leak."""
    if not os.path.isdir("/dev/shm"):
        return []
    leaked = []
    for name in os.listdir("/dev/shm"):
        parts = name.split("_")
        if parts[0] != "torch" or len(parts) < 2 or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or not os.path.exists(f"/proc/{pid}"):
            leaked.append(name)
    return leaked


@pytest.fixture
def clean():
    """The test must leave no child process and no shared-memory segment behind."""
    before = set(_children())
    yield
    assert set(_children()) - before == set()
    assert _leaked_segments() == []


@pytest.fixture(scope="module")
def damaged_slide(synth_slide, tmp_path_factory):
    """The synthetic slide with the lower half of its level-1 tiles destroyed: tissue is
    found (on level 2) and the damage is met mid-slide by the reader of those cells."""
    import tifffile

    bad = tmp_path_factory.mktemp("damaged") / "damaged.tif"
    shutil.copy(synth_slide.path, bad)
    with tifffile.TiffFile(bad) as tif:
        page = tif.pages[1]
        offsets, counts = page.dataoffsets, page.databytecounts
    with open(bad, "r+b") as fh:
        for i in range(len(offsets) // 2, len(offsets)):
            fh.seek(offsets[i])
            fh.write(b"\x00" * min(64, counts[i]))
    return bad


def _heat(slide, out, **kwargs) -> np.ndarray:
    model = create_model("test-colour", num_classes=2)
    path = infer_slide(model, colour_meta(), slide, out, slide_id="s", batch_size=5,
                       progress=False, **kwargs)
    return read_heatmap(path).probabilities


def test_processes_threads_inline_and_cpu_decoding_give_the_same_heatmap(
        synth_slide, tmp_path, clean):
    with deadline():
        inline = _heat(synth_slide.path, tmp_path / "inline", workers=0, stride=64)
        processes = _heat(synth_slide.path, tmp_path / "p", workers=2, stride=64)
        threads = _heat(synth_slide.path, tmp_path / "t", workers=2, stride=64,
                        readers="threads")
        decoded = _heat(synth_slide.path, tmp_path / "d", workers=2, stride=64,
                        decode="cpu")
    assert np.isfinite(inline).sum() > 300
    for other in (processes, threads, decoded):
        np.testing.assert_array_equal(other, inline)  # bit for bit, NaN where not computed
    assert read_heatmap(tmp_path / "d", "s").meta["decode"] == "cpu"
    assert read_heatmap(tmp_path / "p", "s").meta["decode"] == "off"  # auto on the CPU


def test_every_cell_once_from_each_reader(synth_slide, clean):
    spec = PatchSpec(size=32, level=1)
    xs = np.arange(0, 2944, 64)
    ys = np.full(len(xs), 1024)
    with deadline():
        inline = {}
        for ids, batch in iter_batches(synth_slide.path, spec, xs, ys, 4, workers=0):
            inline.update((int(i), batch[k].clone()) for k, i in enumerate(ids))
        # batches of 2: each process's ring of 4 blocks is reused; more processes than
        # cells: one cell each; batches sent as tensors (the pinned path's protocol)
        runs = [iter_batches(synth_slide.path, spec, xs, ys, 2, workers=3),
                iter_batches(synth_slide.path, spec, xs, ys, 2, workers=3,
                             readers="threads"),
                iter_batches(synth_slide.path, spec, xs[:3], ys[:3], 2, workers=8),
                _process_batches(synth_slide.path, spec, None, xs, ys, 2, 3, 2, False,
                                 send=True)]
        for run, n in zip(runs, (len(xs), len(xs), 3, len(xs)), strict=True):
            seen = []
            for ids, batch in run:
                assert batch.dtype == torch.uint8 and batch.shape[1:] == (32, 32, 3)
                for k, i in enumerate(ids):
                    assert torch.equal(batch[k], inline[int(i)])
                seen += ids.tolist()
            assert sorted(seen) == list(range(n))


@pytest.mark.parametrize("workers,readers,decode", [
    (2, "processes", "off"), (2, "threads", "off"), (0, "processes", "off"),
    (2, "processes", "cpu")])
def test_a_damaged_tile_mid_slide_fails_that_slide_only(synth_slide, damaged_slide,
                                                         colour_model_file, tmp_path,
                                                         workers, readers, decode, clean):
    manifest = write_manifest(tmp_path / "m.csv", [
        {"slide_id": i, "path": p, "annotation": "", "label": "", "split": ""}
        for i, p in (("good", synth_slide.path), ("bad", damaged_slide),
                     ("after", synth_slide.path))])
    with deadline():
        outcomes = infer_cohort(colour_model_file, manifest, tmp_path / "out",
                                workers=workers, readers=readers, decode=decode,
                                batch_size=4, progress=False)
    assert [o.status for o in outcomes] == ["done", "failed", "done"], [o.error for o in outcomes]
    error = outcomes[1].error
    assert "damaged.tif" in error and "\n" not in error and "Traceback" not in error
    assert "damaged" in error  # "the slide may be damaged" / "a damaged JPEG stream"
    np.testing.assert_array_equal(read_heatmap(tmp_path / "out", "good").probabilities,
                                  read_heatmap(tmp_path / "out", "after").probabilities)


def _dies_after_one_batch(original):
    def share(*args, **kwargs):
        from torch.utils.data import get_worker_info

        for number, item in enumerate(original(*args, **kwargs)):
            if number == 1 and get_worker_info() is not None:
                os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
            yield item
    return share


def test_a_killed_reader_process_ends_the_slide_with_a_clear_error(
        synth_slide, tmp_path, monkeypatch, clean):
    import exaslide.infer.batches as batches

    # the reader processes are forked: they run the patched function
    monkeypatch.setattr(batches, "_share_batches", _dies_after_one_batch(
        batches._share_batches))
    model = create_model("test-colour", num_classes=2)
    with deadline(), pytest.raises(InferenceError, match="a patch-reading process died"):
        infer_slide(model, colour_meta(), synth_slide.path, tmp_path, workers=2,
                    batch_size=2, stride=64, progress=False)
    assert not (tmp_path / "slide.heatmap.json").exists()


def test_a_daemonic_process_reads_with_threads(synth_slide):
    """A daemonic process may not start processes: the readers become threads."""
    context = multiprocessing.get_context("fork")
    result = context.Queue()

    def run() -> None:
        spec = PatchSpec(size=32, level=1)
        xs, ys = np.arange(0, 2048, 128), np.full(16, 1024)
        ids = [i for part, _ in iter_batches(synth_slide.path, spec, xs, ys, 3, workers=2)
               for i in part.tolist()]
        result.put(sorted(ids))

    child = context.Process(target=run, daemon=True)
    child.start()
    try:
        assert result.get(timeout=SECONDS) == list(range(16))
    finally:
        child.join(SECONDS)
    assert child.exitcode == 0


def test_settings_are_checked(synth_slide, tmp_path, colour_model_file):
    model = create_model("test-colour", num_classes=2)
    with pytest.raises(InferenceError, match="readers must be one of"):
        infer_slide(model, colour_meta(), synth_slide.path, tmp_path, readers="fibers")
    with pytest.raises(InferenceError, match="decode must be one of"):
        infer_cohort(colour_model_file, synth_slide.path, tmp_path, decode="nvjpeg")
    if not torch.cuda.is_available():
        with pytest.raises(InferenceError, match="decode 'gpu' needs a CUDA device"):
            infer_cohort(colour_model_file, synth_slide.path, tmp_path, decode="gpu")
    assert default_workers("cpu") == 0  # the model is the bottleneck: read inline
    assert 1 <= default_workers("cuda") <= 16
    assert default_workers("cuda", world_size=10_000) == 1


def test_a_full_ring_gives_fresh_memory_never_a_wait():
    flags = torch.zeros(2, dtype=torch.uint8).share_memory_()
    ring = _Ring(flags)
    first = ring.take((2, 4, 4, 3))
    assert ring.slot == 0 and flags.tolist() == [1, 0]
    ring.take((2, 4, 4, 3))
    assert ring.slot == 1 and flags.tolist() == [1, 1]
    fresh = ring.take((2, 4, 4, 3))  # both blocks in flight: fresh memory, slot -1
    assert ring.slot == -1 and fresh.is_shared()
    flags[0] = 0  # the consumer let go of block 0: reused
    again = ring.take((1, 4, 4, 3))
    assert ring.slot == 0 and again.data_ptr() == first.data_ptr()
    shared = _Ring(flags, [torch.UntypedStorage._new_shared(96)] * 2)
    flags.zero_()
    shared.take((2, 4, 4, 3))  # 96 bytes: fits block 0
    assert shared.slot == 0
    shared.take((3, 4, 4, 3))  # 144 bytes: no block is large enough
    assert shared.slot == -1


def test_a_reader_error_keeps_its_type_and_message():
    wrapped = SlideError("Caught SlideError in DataLoader worker process 1.\n"
                         "Original Traceback (most recent call last):\n"
                         '  File "x.py", line 1, in f\n'
                         "exaslide.errors.SlideError: s.tif level 1: tile (2, 3) is damaged")
    clean = unwrap_worker_error(wrapped)
    assert type(clean) is SlideError and str(clean) == "s.tif level 1: tile (2, 3) is damaged"
    plain = ValueError("not from a worker")
    assert unwrap_worker_error(plain) is plain


def test_one_decode_rule_for_training_inference_and_embedding(tmp_path, synth_slide):
    """``auto`` is ``gpu`` on a CUDA device when each of the first 4 slides is
    JPEG-tiled, else ``off`` (only the device's type is looked at: no GPU needed)."""
    import cv2

    from exaslide.infer.decoded import AUTO_SLIDES, resolve_decode

    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.full((64, 64, 3), 200, np.uint8))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    jpeg = [synth_slide.path] * AUTO_SLIDES
    assert AUTO_SLIDES == 4
    assert resolve_decode("auto", cuda, jpeg) == "gpu"
    assert resolve_decode("auto", cuda, [*jpeg, png]) == "gpu"  # the 5th is not looked at
    assert resolve_decode("auto", cuda, [synth_slide.path, png]) == "off"
    assert resolve_decode("auto", cuda, []) == "off"
    assert resolve_decode("auto", cuda, [synth_slide.path], backend="openslide") == "off"
    assert resolve_decode("auto", cpu, jpeg) == "off"
    assert resolve_decode("off", cuda, jpeg) == "off"
    assert resolve_decode("cpu", cpu) == "cpu" and resolve_decode("gpu", cuda) == "gpu"
    with pytest.raises(ValueError, match="decode 'gpu' needs a CUDA device, but this "
                                         "runs on cpu"):
        resolve_decode("gpu", cpu)
    with pytest.raises(ValueError, match="decode must be one of"):
        resolve_decode("nvjpeg", cuda)
