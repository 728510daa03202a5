"""Many slides: resume against the inputs' fingerprint, failures reported, rank shares."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from exaslide.errors import InferenceError
from exaslide.evaluate.heatmap import read_heatmap
from exaslide.infer import infer_cohort, output_paths
from exaslide.manifest import write_manifest


def _manifest(tmp_path, synth_slide, ids=("a", "bad", "c")):
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 100)
    rows = [{"slide_id": i, "path": corrupt if i == "bad" else synth_slide.path,
             "annotation": "", "label": "", "split": ""} for i in ids]
    return write_manifest(tmp_path / "cohort.csv", rows)


def test_failure_reported_others_finish_then_resume(tmp_path, synth_slide, colour_model_file):
    model = shutil.copy(colour_model_file, tmp_path / "model.pt")
    manifest = _manifest(tmp_path, synth_slide)
    out = tmp_path / "out"
    seen = []
    first = infer_cohort(model, manifest, out, batch_size=32, on_result=seen.append)
    assert [(o.slide_id, o.status) for o in first] == \
        [("a", "done"), ("bad", "failed"), ("c", "done")]
    assert "corrupt.tif" in first[1].error and seen == first
    assert first[0].cells == read_heatmap(out, "a").meta["computed_cells"] > 0
    np.testing.assert_array_equal(read_heatmap(out, "a").probabilities,
                                  read_heatmap(out, "c").probabilities)
    status = json.loads((out / "infer_status.json").read_text())
    assert [s["status"] for s in status] == ["done", "failed", "done"]
    assert not output_paths(out, "bad")["json"].exists()

    again = infer_cohort(model, manifest, out)
    assert [o.status for o in again] == ["skipped", "failed", "skipped"]
    # a newer model file makes every heatmap stale
    future = output_paths(out, "a")["json"].stat().st_mtime + 10
    os.utime(model, (future, future))
    assert [o.status for o in infer_cohort(model, manifest, out)] == \
        ["done", "failed", "done"]
    # a changed stride is not the same heatmap; overwrite redoes
    assert infer_cohort(model, manifest, out, stride=256)[0].status == "done"
    assert read_heatmap(out, "a").meta["cell"] == 256
    assert [o.status for o in infer_cohort(model, manifest, out, stride=256,
                                           overwrite=True)] == ["done", "failed", "done"]


def test_rank_takes_its_share(tmp_path, synth_slide, colour_model_file):
    manifest = _manifest(tmp_path, synth_slide, ids=("a", "b", "c"))
    out = tmp_path / "out"
    outcomes = infer_cohort(colour_model_file, manifest, out, rank=1, world_size=2)
    assert [(o.slide_id, o.status) for o in outcomes] == [("b", "done")]
    assert (out / "infer_status.rank1.json").is_file()
    assert not output_paths(out, "a")["json"].exists()


def test_single_slide_path(tmp_path, synth_slide, colour_model_file):
    outcomes = infer_cohort(colour_model_file, synth_slide.path, tmp_path, stride=512)
    assert [(o.slide_id, o.status) for o in outcomes] == [("slide", "done")]
    assert read_heatmap(tmp_path, "slide").shape == (5, 6)


def test_duplicate_slide_ids_refused(tmp_path, synth_slide, colour_model_file):
    with pytest.raises(InferenceError, match="two slides have the id 'slide'"):
        infer_cohort(colour_model_file, [synth_slide.path, str(synth_slide.path)], tmp_path)


def test_resume_compares_the_whole_fingerprint(tmp_path, synth_slide, colour_model_file):
    model = shutil.copy(colour_model_file, tmp_path / "model.pt")
    out = tmp_path / "out"

    def status(**kwargs):
        return infer_cohort(model, synth_slide.path, out, stride=512, **kwargs)[0].status

    assert status() == "done"
    first = read_heatmap(out, "slide").meta
    assert first["fingerprint"]["model"]["path"] == str(model.resolve())
    assert first["fingerprint"]["slide"]["path"] == str(synth_slide.path.resolve())
    assert first["fingerprint"]["class"] == "tumour"
    assert first["fingerprint"]["patch"] == first["patch"]
    assert status() == "skipped"  # identical settings
    # another class, another min_tissue: recomputed, then skipped again
    assert status(class_name="normal") == "done"
    assert read_heatmap(out, "slide").meta["class"] == "normal"
    assert status(class_name="normal") == "skipped"
    assert status(class_name="normal", min_tissue=0.5) == "done"
    assert status(class_name="normal", min_tissue=0.5) == "skipped"
    # the default stride is not the stride of the existing heatmap
    assert infer_cohort(model, synth_slide.path, out, class_name="normal",
                        min_tissue=0.5)[0].status == "done"
    assert status(class_name="normal", min_tissue=0.5) == "done"


def test_a_rerun_with_another_decode_redoes_the_slide(tmp_path, synth_slide,
                                                      colour_model_file):
    """The requested ``decode`` is part of the fingerprint: another setting recomputes
    (``auto`` too, even where it resolves to ``off``) rather than mixing decoders."""
    out = tmp_path / "out"

    def status(**kwargs):
        return infer_cohort(colour_model_file, synth_slide.path, out, stride=512,
                            progress=False, **kwargs)[0].status

    assert status() == "done"
    assert status(decode="off") == "skipped"  # the default is off
    assert status(decode="cpu") == "done"
    assert read_heatmap(out, "slide").meta["decode"] == "cpu"
    assert status(decode="cpu") == "skipped"
    assert status(decode="auto") == "done"
    assert status(decode="auto") == "skipped"


def test_a_status_written_before_decode_was_recorded_is_read_as_off(tmp_path, synth_slide,
                                                                    colour_model_file):
    out = tmp_path / "out"
    assert infer_cohort(colour_model_file, synth_slide.path, out, stride=512,
                        progress=False)[0].status == "done"
    path = out / "status" / "slide.json"
    status = json.loads(path.read_text())
    del status["options"]["decode"]  # as the previous release wrote it
    path.write_text(json.dumps(status))
    assert infer_cohort(colour_model_file, synth_slide.path, out, stride=512,
                        progress=False)[0].status == "skipped"
    assert infer_cohort(colour_model_file, synth_slide.path, out, stride=512,
                        progress=False, decode="cpu")[0].status == "done"


def test_replaced_model_file_recomputes_even_when_older(tmp_path, synth_slide,
                                                        colour_model_file):
    from colour_model import colour_meta

    from exaslide.models import create_model, save_model

    model = shutil.copy(colour_model_file, tmp_path / "model.pt")
    out = tmp_path / "out"
    assert infer_cohort(model, synth_slide.path, out, stride=512)[0].status == "done"
    assert infer_cohort(model, synth_slide.path, out, stride=512)[0].status == "skipped"
    save_model(model, create_model("test-colour", num_classes=2), colour_meta())
    past = output_paths(out, "slide")["json"].stat().st_mtime - 3600
    os.utime(model, (past, past))  # older than the heatmaps: still another model file
    assert infer_cohort(model, synth_slide.path, out, stride=512)[0].status == "done"
    assert infer_cohort(model, synth_slide.path, out, stride=512)[0].status == "skipped"


def test_heatmap_without_fingerprint_is_redone(tmp_path, synth_slide, colour_model_file):
    out = tmp_path / "out"
    infer_cohort(colour_model_file, synth_slide.path, out, stride=512)
    json_path = output_paths(out, "slide")["json"]
    meta = json.loads(json_path.read_text())
    del meta["fingerprint"]  # written by an older version
    json_path.write_text(json.dumps(meta))
    assert infer_cohort(colour_model_file, synth_slide.path, out,
                        stride=512)[0].status == "done"


def test_heatmap_files_of_an_older_layout_are_redone(tmp_path, synth_slide, colour_model_file):
    """Version 1 TIFFs stored round(255 p), 0 meaning both "p = 0" and "not computed": a
    resumed run redoes them rather than keeping the ambiguous file."""
    from exaslide.infer.cohort import HEATMAP_FILES_VERSION

    out = tmp_path / "out"
    infer_cohort(colour_model_file, synth_slide.path, out, stride=512)
    json_path = output_paths(out, "slide")["json"]
    meta = json.loads(json_path.read_text())
    assert meta["fingerprint"]["files"] == HEATMAP_FILES_VERSION == 2
    meta["fingerprint"]["files"] = 1
    json_path.write_text(json.dumps(meta))
    assert infer_cohort(colour_model_file, synth_slide.path, out,
                        stride=512)[0].status == "done"
    assert json.loads(json_path.read_text())["fingerprint"]["files"] == 2
