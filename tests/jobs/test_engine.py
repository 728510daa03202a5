"""The job engine on its own: the documented example stage (docs/architecture.md), resume,
redo on changed options or inputs, failures, foreign folders, unsafe output names, the
'committing' state, ranks and Dask."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from exaslide.jobs import JobError, SlideEntry, Stage, read_status, run_stage


# -- the example of docs/architecture.md, verbatim ------------------------------------------
@dataclass(frozen=True)
class TissueAreaOptions:
    level: int = 2          # pyramid level the tissue mask is computed at
    min_area_um2: float = 10_000.0


def tissue_area(entry, options: TissueAreaOptions, ctx) -> dict:
    """One slide: its tissue mask as a PNG and the tissue area in mm^2."""
    from PIL import Image

    from exaslide.masks.tissue import TissueParams, detect_tissue
    from exaslide.slides import open_slide

    with open_slide(entry.path) as slide:
        image = slide.read_level(options.level)
        mpp = slide.level_mpp(options.level)
        mask = detect_tissue(image, mpp[0] if mpp else None,
                             TissueParams(min_area_um2=options.min_area_um2))
    with ctx.output(f"tissue/{entry.slide_id}.png") as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    area = float(mask.sum()) * (mpp[0] * mpp[1] if mpp else 0.0) / 1e6
    return {"tissue_mm2": round(area, 4)}


def run_tissue_area(entries, out, **kwargs):
    stage = Stage("tissue-area", TissueAreaOptions(**kwargs.pop("options", {})),
                  process=tissue_area)
    return run_stage(stage, entries, out, **kwargs)
# -------------------------------------------------------------------------------------------


@pytest.fixture
def entries(synth_slide, tmp_path):
    other = tmp_path / "copy.tif"
    other.write_bytes(Path(synth_slide.path).read_bytes())
    return [SlideEntry("a", synth_slide.path), SlideEntry("b", other)]


def test_example_stage_writes_outputs_status_and_resumes(entries, tmp_path):
    out = tmp_path / "out"
    first = run_tissue_area(entries, out)
    assert [o.status for o in first] == ["done", "done"]
    assert first[0].result["tissue_mm2"] > 0
    assert (out / "tissue" / "a.png").is_file()
    status = read_status(out, "a")
    assert status["stage"] == "tissue-area" and status["status"] == "done"
    assert status["options"] == {"level": 2, "min_area_um2": 10_000.0}
    assert status["outputs"] == {"tissue/a.png": (out / "tissue" / "a.png").stat().st_size}
    summary = json.loads((out / "tissue-area_status.json").read_text())
    assert [s["status"] for s in summary] == ["done", "done"]
    assert [o.status for o in run_tissue_area(entries, out)] == ["skipped", "skipped"]
    assert not (out / ".partial").exists()


def test_changed_options_inputs_or_missing_outputs_are_redone(entries, tmp_path):
    out = tmp_path / "out"
    run_tissue_area(entries, out)
    assert [o.status for o in run_tissue_area(entries, out, options={"level": 1})] == \
        ["done", "done"]
    Path(entries[1].path).write_bytes(Path(entries[1].path).read_bytes())  # new mtime
    (out / "tissue" / "a.png").unlink()
    again = run_tissue_area(entries, out, options={"level": 1})
    assert [o.status for o in again] == ["done", "done"]
    (out / "tissue" / "a.png").write_bytes(b"truncated")  # size no longer matches
    assert run_tissue_area(entries, out, options={"level": 1})[0].status == "done"


def test_a_failing_slide_is_recorded_and_leaves_no_output(entries, tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + bytes(64))
    out = tmp_path / "out"
    outcomes = run_tissue_area([entries[0], SlideEntry("bad", broken)], out)
    assert [o.status for o in outcomes] == ["done", "failed"]
    assert "broken.tif" in outcomes[1].error
    assert read_status(out, "bad")["status"] == "failed"
    assert not (out / "tissue" / "bad.png").exists()
    missing = run_tissue_area([SlideEntry("gone", tmp_path / "nope.tif")], out)
    assert missing[0].status == "failed" and "nope.tif" in missing[0].error


def test_refuses_another_stages_folder_duplicate_ids_and_escaping_names(entries, tmp_path):
    out = tmp_path / "out"
    run_tissue_area(entries[:1], out)
    other = Stage("other", TissueAreaOptions(), process=tissue_area)
    with pytest.raises(JobError, match="holds 'tissue-area' outputs"):
        run_stage(other, entries[:1], out)
    with pytest.raises(JobError, match="two slides have the id"):
        run_tissue_area([entries[0], entries[0]], tmp_path / "dup")

    def escape(entry, options, ctx):
        with ctx.output("../outside.txt") as tmp:
            tmp.write_text("x")
        return {}

    [outcome] = run_stage(Stage("escape", None, process=escape), entries[:1],
                          tmp_path / "esc")
    assert outcome.status == "failed" and "would escape" in outcome.error
    assert not (tmp_path / "outside.txt").exists()


def test_a_run_killed_while_committing_is_cleaned_before_the_redo(entries, tmp_path):
    out = tmp_path / "out"
    run_tissue_area(entries[:1], out)
    status = read_status(out, "a")
    # as if killed after moving a file of a different run and before the final status
    (out / "tissue" / "a_stale.png").write_bytes(b"x")
    status.update(status="committing", outputs={"tissue/a_stale.png": 0, "tissue/a.png": 0})
    (out / "status" / "a.json").write_text(json.dumps(status))
    assert run_tissue_area(entries[:1], out)[0].status == "done"
    assert not (out / "tissue" / "a_stale.png").exists()
    assert read_status(out, "a")["status"] == "done"


def test_ranks_share_the_slides_and_dask_gives_the_same_files(entries, tmp_path):
    ranks = [run_tissue_area(entries, tmp_path / "ranks", rank=r, world_size=2)
             for r in (0, 1)]
    assert [[o.slide_id for o in r] for r in ranks] == [["a"], ["b"]]
    assert (tmp_path / "ranks" / "tissue-area_status.rank1.json").is_file()
    dask = run_tissue_area(entries, tmp_path / "dask", scheduler=None, workers=2)
    assert [o.status for o in dask] == ["done", "done"]
    for name in ("a", "b"):
        assert (tmp_path / "dask" / "tissue" / f"{name}.png").read_bytes() == \
            (tmp_path / "ranks" / "tissue" / f"{name}.png").read_bytes()


def test_a_forged_status_cannot_make_the_engine_delete_other_files(entries, tmp_path):
    out = tmp_path / "out"
    run_tissue_area(entries, out)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a_thesis.pdf").write_text("precious")
    (out / "links").symlink_to(tmp_path / "elsewhere")
    (out / "manifest.csv").write_text("the user's")
    forged = read_status(out, "a")
    forged["outputs"] = {"links/a_thesis.pdf": 8, "manifest.csv": 10, "status/b.json": 1,
                         "a_status.json": 1, "../elsewhere/a_thesis.pdf": 8,
                         "/etc/passwd": 1, "tissue/b.png": 1}
    forged["options"] = {"changed": True}  # so the slide is redone and its outputs cleared
    (out / "status" / "a.json").write_text(json.dumps(forged))
    assert [o.status for o in run_tissue_area(entries, out)] == ["done", "skipped"]
    assert (tmp_path / "elsewhere" / "a_thesis.pdf").read_text() == "precious"
    assert (out / "manifest.csv").read_text() == "the user's"
    assert read_status(out, "b")["status"] == "done" and (out / "tissue" / "b.png").exists()


def test_a_slide_that_fails_while_committing_leaves_no_output(entries, tmp_path):
    out = tmp_path / "out"
    (out / "tissue" / "a.png").mkdir(parents=True)  # the target is a folder: rename fails

    def two_files(entry, options, ctx):
        with ctx.output(f"first/{entry.slide_id}.txt") as tmp:
            tmp.write_text("1")
        with ctx.output(f"tissue/{entry.slide_id}.png") as tmp:
            tmp.write_text("2")
        return {}

    [outcome] = run_stage(Stage("two", None, process=two_files), entries[:1], out)
    assert outcome.status == "failed"
    assert not (out / "first" / "a.txt").exists()  # moved, then removed with the failure
    assert read_status(out, "a")["status"] == "failed"
    assert not (out / ".partial").exists()


def test_a_plain_run_and_a_torchrun_job_cannot_share_a_folder(tmp_path):
    from exaslide.jobs import OutputLock, OutputLockedError

    out = tmp_path / "out"
    with OutputLock(out, rank=0), OutputLock(out, rank=1):  # ranks of one job coexist
        with pytest.raises(OutputLockedError, match="rank 0"):
            OutputLock(out).__enter__()  # a plain run
        with pytest.raises(OutputLockedError):
            OutputLock(out, rank=1).__enter__()  # the same rank of another job
    with OutputLock(out), pytest.raises(OutputLockedError):
        OutputLock(out, rank=0).__enter__()


def test_file_urls_are_fingerprinted_like_paths(entries, tmp_path):
    url = Path(entries[0].path).resolve().as_uri()
    [outcome] = run_tissue_area([SlideEntry("a", url)], tmp_path / "out")
    assert outcome.status == "done"
    assert read_status(tmp_path / "out", "a")["inputs"]["slide"]["size"] > 0


def test_the_documented_example_is_this_one():
    import inspect
    import re

    docs = (Path(__file__).parents[2] / "docs" / "architecture.md").read_text()
    block = re.search(r"```python\n(.*?)```", docs, re.S).group(1)
    for fn in (TissueAreaOptions, tissue_area):
        assert inspect.getsource(fn) in block


def test_a_folder_the_lock_made_goes_when_the_run_failed_before_writing(tmp_path):
    from exaslide.jobs import OutputLock

    out = tmp_path / "new"
    with pytest.raises(RuntimeError), OutputLock(out):
        raise RuntimeError("bad input found after the lock")
    assert not out.exists()
    (tmp_path / "kept").mkdir()
    with OutputLock(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir()  # not ours: only the lock file may remain in it


# -- a split stage: plan in a task, cut in the driver for the run's shape, finish ----------
@dataclass(frozen=True)
class SumOptions:
    scale: int = 1
    tasks_per_worker: int = 2  # how the work is shared: not in the fingerprint


CUTS: list = []  # the shapes the driver cut slides for (cut runs in this process)


def _sum_plan(entry, options):
    import os

    return os.getpid(), ["ignored: cut replaces the plan's tasks"]


def _sum_cut(state, options, shape):
    CUTS.append(shape)
    return list(range(options.tasks_per_worker * shape.workers))


def _sum_task(entry, options, task, partial):
    return task * options.scale


def _sum_finish(entry, options, state, results, ctx):
    with ctx.output(f"sums/{entry.slide_id}.txt") as tmp:
        tmp.write_text(str(sum(results)))
    return {"tasks": len(results), "planned_by": state}


def _sum_fingerprint(options):
    return {"scale": options.scale}


def _sum_upgrade(status):
    options = {k: v for k, v in status["options"].items() if k != "old_knob"}
    return dict(status, options=options)


def _run_sums(entries, out, options=SumOptions(), **kwargs):
    stage = Stage("sums", options, plan=_sum_plan, run_task=_sum_task, finish=_sum_finish,
                  cut=_sum_cut, fingerprint=_sum_fingerprint, upgrade_status=_sum_upgrade)
    return run_stage(stage, entries, out, **kwargs)


def test_split_stage_is_cut_for_the_workers_and_slides_left(synth_slide, tmp_path):
    entries = [SlideEntry(name, synth_slide.path) for name in "abc"]
    CUTS.clear()
    inline = _run_sums(entries, tmp_path / "inline")
    assert [o.result["tasks"] for o in inline] == [2, 2, 2]
    assert [(s.workers, s.slides_left) for s in CUTS] == [(1, 3), (1, 2), (1, 1)]
    assert (tmp_path / "inline" / "sums" / "a.txt").read_text() == "1"
    CUTS.clear()
    dask = _run_sums(entries, tmp_path / "dask", scheduler=None, workers=2)
    assert [o.result["tasks"] for o in dask] == [4, 4, 4]
    assert sorted((s.workers, s.slides_left) for s in CUTS) == [(2, 1), (2, 2), (2, 3)]
    assert (tmp_path / "dask" / "sums" / "c.txt").read_text() == "6"
    # planned here while the LocalCluster started (these plans take no time)
    assert {o.result["planned_by"] for o in dask} == {os.getpid()}


def test_fingerprint_and_upgrade_status_decide_what_a_rerun_compares(synth_slide, tmp_path):
    entries = [SlideEntry("a", synth_slide.path)]
    out = tmp_path / "out"
    _run_sums(entries, out)
    assert read_status(out, "a")["options"] == {"scale": 1}
    again = _run_sums(entries, out, SumOptions(tasks_per_worker=5))  # not fingerprinted
    assert again[0].status == "skipped"
    status = read_status(out, "a")
    status["options"]["old_knob"] = 4096  # what an earlier release saved
    (out / "status" / "a.json").write_text(json.dumps(status))
    assert _run_sums(entries, out)[0].status == "skipped"  # upgraded, then compared
    assert _run_sums(entries, out, SumOptions(scale=2))[0].status == "done"
    assert (out / "sums" / "a.txt").read_text() == "2"


def test_outputs_are_flushed_together_and_a_failed_flush_names_the_output(tmp_path):
    import time

    from exaslide.jobs.engine import _commit, _flush

    files = []
    for i in range(3):
        files.append(tmp_path / ".partial" / "a" / f"{i}.bin")
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        files[-1].write_bytes(bytes(1000))
    missing = str(tmp_path / ".partial" / "a" / "gone.bin")
    errors = _flush([*map(str, files), missing])
    assert list(errors) == [missing] and isinstance(errors[missing], FileNotFoundError)
    outputs = {"shards/a-00000.tar": str(files[0]), "shards/a-00001.tar": missing}
    with pytest.raises(FileNotFoundError, match=r"a-00001\.tar"):
        _commit(tmp_path, "a", {"stage": "s"}, outputs, {}, time.perf_counter())


def _imported(name: str) -> bool:
    import sys

    return name in sys.modules


def test_dask_workers_are_warmed_with_the_stages_imports():
    from distributed import wait

    from exaslide.jobs import DaskExecutor

    executor = DaskExecutor(workers=2)
    try:
        assert not executor.client.submit(_imported, "colorsys").result()
        executor.warm(("colorsys", "no_such_module_xyz"))  # a failing import is ignored
        wait(executor._warm)
        assert len(executor._warm) == 2 and all(f.status == "finished"
                                                for f in executor._warm)
        assert executor.client.run(_imported, "colorsys") == \
            dict.fromkeys(executor.client.scheduler_info()["workers"], True)
    finally:
        executor.close()
