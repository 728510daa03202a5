"""Cohort extraction on a real Dask LocalCluster: outputs, resume, failures, regions."""

from __future__ import annotations

import csv
import hashlib
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from exaslide.manifest import read_manifest
from exaslide.patches import (
    ExtractOptions,
    PatchSpec,
    SamplingOptions,
    open_index,
    run_extraction,
)
from exaslide.synth import SynthSpec, make_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return make_cohort(out, 3, tumour_fraction=0.67, seed=8,
                       base=SynthSpec(width=3072, height=2048, tumours=2))


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


OPTIONS = ExtractOptions(spec=PatchSpec(size=128), materialize="png", shard_size=50,
                         chunk_patches=10, region_size=1024)


def test_dask_cluster_outputs_match_inline_and_are_consistent(cohort, tmp_path):
    entries = read_manifest(cohort)
    dask_out, inline_out = tmp_path / "dask", tmp_path / "inline"
    outcomes = run_extraction(entries, dask_out, OPTIONS, workers=2)
    assert [o.status for o in outcomes] == ["done"] * 3
    run_extraction(entries, inline_out, OPTIONS, scheduler="inline")
    assert _digests(dask_out / "shards") == _digests(inline_out / "shards")
    assert open_index(dask_out).to_table().equals(open_index(inline_out).to_table())
    table = open_index(dask_out).to_table()
    assert table.num_rows == sum(o.patches for o in outcomes)
    members = {}
    for shard in sorted((dask_out / "shards").iterdir()):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                members[member.name] = shard.name
            meta = json.loads(tar.extractfile(tar.getnames()[1]).read())
            assert {"slide_id", "x", "y", "level", "size", "label"} <= set(meta)
    for row in table.select(["key", "shard", "member"]).to_pylist():
        assert row["member"] == row["key"] + ".png"
        assert members[row["member"]] == row["shard"]
        assert members[row["key"] + ".json"] == row["shard"]
    status = json.loads((dask_out / "status" / "synth_000.json").read_text())
    assert status["status"] == "done" and status["stage"] == "extract"
    result = status["result"]
    assert result["chunks"] > 1  # split into regions
    assert result["tile_decodes"] <= result["patches"]  # 128-px patches in 256-px tiles


def test_rerun_skips_and_changed_options_redo(cohort, tmp_path):
    entries = read_manifest(cohort)
    inline = {"scheduler": "inline"}
    run_extraction(entries, tmp_path, ExtractOptions(spec=PatchSpec(size=128)), **inline)
    again = run_extraction(entries, tmp_path, ExtractOptions(spec=PatchSpec(size=128)), **inline)
    assert [o.status for o in again] == ["skipped"] * 3
    other = run_extraction(entries, tmp_path, ExtractOptions(spec=PatchSpec(size=256)), **inline)
    assert [o.status for o in other] == ["done"] * 3
    assert set(pq.read_table(tmp_path / "index" / "synth_000.parquet")["size"].to_pylist()) \
        == {256}


def test_corrupt_slide_is_reported_and_others_finish(cohort, tmp_path):
    rows = list(csv.DictReader(cohort.open()))
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + bytes(64))
    rows.insert(1, dict(rows[0], slide_id="bad", path=str(tmp_path / "bad.tif"), annotation=""))
    for row in rows[0:1] + rows[2:]:
        row["path"] = str(cohort.parent / row["path"])
        row["annotation"] = str(cohort.parent / row["annotation"]) if row["annotation"] else ""
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    outcomes = run_extraction(read_manifest(manifest), tmp_path / "out", OPTIONS, workers=2)
    assert [o.status for o in outcomes] == ["done", "failed", "done", "done"]
    assert "bad.tif" in outcomes[1].error
    status = json.loads((tmp_path / "out" / "status" / "bad.json").read_text())
    assert status["status"] == "failed"
    assert not list((tmp_path / "out" / "shards").glob("bad-*"))


def test_random_sampler_with_physical_size(cohort, tmp_path):
    options = ExtractOptions(spec=PatchSpec(size=64, level=None, mpp=2.0),
                             sampling=SamplingOptions(sampler="random", per_class=20, seed=4))
    outcomes = run_extraction(read_manifest(cohort), tmp_path, options, scheduler="inline")
    table = open_index(tmp_path).to_table()
    assert set(table["mpp"].to_pylist()) == {2.0} and set(table["size"].to_pylist()) == {64}
    assert all(o.counts["normal"] == 20 for o in outcomes)
    assert sum(o.counts["tumour"] for o in outcomes) >= 20


def test_exact_tile_decodes_blank_slide_and_key_encoding(tmp_path):
    from exaslide.patches.job import patch_keys
    from exaslide.synth import write_synthetic_slide

    blank = write_synthetic_slide(tmp_path / "blank.tif", SynthSpec(width=1024, height=768,
                                                                      tumours=0, seed=1))
    # paint the slide white: no tissue at all -> zero patches, still "done"
    import tifffile

    with tifffile.TiffWriter(blank.path) as tif:
        tif.write(np.full((768, 1024, 3), 250, np.uint8), tile=(256, 256),
                  photometric="rgb", compression="jpeg")
    (tmp_path / "m.csv").write_text("slide_id,path,annotation,label,split\n"
                                    "a.b,blank.tif,,normal,train\n")
    [outcome] = run_extraction(read_manifest(tmp_path / "m.csv"), tmp_path / "out", OPTIONS,
                               scheduler="inline")
    assert outcome.status == "done" and outcome.patches == 0
    assert "0 patches" in outcome.warnings[0]
    assert open_index(tmp_path / "out").count_rows() == 0
    a, b = patch_keys("a.b", [0], [0])[0], patch_keys("a_b", [0], [0])[0]
    assert a == "a%2Eb_x0_y0" and b == "a_b_x0_y0" and "." not in a


def test_one_decode_per_tile_per_chunk(cohort, tmp_path):
    options = ExtractOptions(spec=PatchSpec(size=128), materialize="png", chunk_patches=10**6)
    [done] = run_extraction(read_manifest(cohort)[:1], tmp_path, options,
                               scheduler="inline")
    status = json.loads((tmp_path / "status" / "synth_000.json").read_text())
    table = pq.read_table(tmp_path / "index" / "synth_000.parquet")
    tiles = {(x // 256, y // 256) for x, y in zip(table["x"].to_pylist(),
                                                  table["y"].to_pylist(), strict=True)}
    assert done.status == "done" and status["result"]["chunks"] == 1
    assert status["result"]["tile_decodes"] == len(tiles)


def test_failing_chunk_leaves_no_shards(cohort, tmp_path):
    """A slide whose level-0 tiles are corrupt (metadata and low levels fine) fails in its
    extraction chunks; its other chunks finish first and then all its outputs go."""
    import shutil

    import tifffile

    rows = list(csv.DictReader(cohort.open()))
    src = cohort.parent / rows[0]["path"]
    bad = tmp_path / "bad.tif"
    shutil.copy(src, bad)
    with tifffile.TiffFile(bad) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    with open(bad, "r+b") as fh:
        for i in range(len(offsets) // 2, len(offsets)):  # the lower half of level 0
            fh.seek(offsets[i])  # destroy the JPEG header: the decoder must fail
            fh.write(b"\x00" * min(64, counts[i]))
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,path,annotation,label,split\nbad,bad.tif,,normal,train\n")
    options = ExtractOptions(spec=PatchSpec(size=128), materialize="png", chunk_patches=5,
                             region_size=512)
    [outcome] = run_extraction(read_manifest(manifest), tmp_path / "out", options, workers=2)
    assert outcome.status == "failed"
    files = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
    assert files == [".exaslide.lock", "extract_status.json", "status", "status/bad.json"]


def test_invalid_options_are_refused(cohort, tmp_path):
    from exaslide.patches import PatchError

    for bad in (ExtractOptions(shard_size=0), ExtractOptions(quality=150),
                ExtractOptions(materialize="gif")):
        with pytest.raises(PatchError):
            run_extraction(read_manifest(cohort), tmp_path, bad, scheduler="inline")


def _tile_buffer_faults(count: int = 100) -> float:
    """Page faults per allocation of a decoded 256-px tile buffer (a worker task)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        buffer = np.empty((256, 256, 3), np.uint8)
        buffer[::16] = 1  # touch every page
        del buffer
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / count


def test_local_cluster_workers_keep_freed_tiles_in_the_heap():
    """Dask's default MALLOC_TRIM_THRESHOLD_ (64 KiB) makes every tile decode page-fault,
    and any malloc setting freezes the mmap threshold at 128 KiB (tiles are mapped and
    unmapped); exaslide's LocalCluster sets both for its workers."""
    import os

    from distributed import Client

    from exaslide.jobs.executors import (
        WORKER_MALLOC_MMAP_THRESHOLD,
        WORKER_MALLOC_TRIM_THRESHOLD,
        local_cluster,
    )

    with local_cluster(1) as cluster, Client(cluster) as client:
        values = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                                     os.environ.get("MALLOC_MMAP_THRESHOLD_")))
        faults = client.submit(_tile_buffer_faults).result()
    assert list(values.values()) == [(WORKER_MALLOC_TRIM_THRESHOLD,
                                      WORKER_MALLOC_MMAP_THRESHOLD)]
    assert faults < 5  # not the 48 pages of a mapped tile


def test_a_slide_extracted_by_the_previous_release_is_redone_without_stale_shards(cohort,
                                                                                 tmp_path):
    entries = read_manifest(cohort)[:1]
    slide = entries[0].slide_id
    (tmp_path / "shards").mkdir()
    stale = tmp_path / "shards" / f"{slide}-0007-00000.tar"
    stale.write_bytes(b"old")
    (tmp_path / "status").mkdir()
    (tmp_path / "status" / f"{slide}.json").write_text(json.dumps(
        {"status": "done", "slide_id": slide, "shards": [stale.name]}))  # no "stage"
    options = ExtractOptions(spec=PatchSpec(size=128), materialize="png")
    [outcome] = run_extraction(entries, tmp_path, options, scheduler="inline")
    assert outcome.status == "done" and not stale.exists()


def _outputs(out):
    """``{relative path: sha256}`` of the index and shards, and the index table."""
    files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
             for sub in ("index", "shards") for p in sorted((out / sub).glob("*"))}
    return files, open_index(out).to_table()


#: Background patches too (min_tissue 0), so some are blank and some shards hold fewer
#: samples than plan rows (or none at all).
CUT = ExtractOptions(spec=PatchSpec(size=64), materialize="jpeg", shard_size=50,
                     sampling=SamplingOptions(min_tissue=0.0), region_size=1024)


def test_outputs_do_not_depend_on_workers_or_chunks_and_resume_across_them(cohort,
                                                                          tmp_path):
    from dataclasses import replace

    entries = read_manifest(cohort)
    dask = run_extraction(entries, tmp_path / "dask", CUT, workers=2)
    assert [o.status for o in dask] == ["done"] * 3 and sum(o.blank for o in dask) > 0
    reference = _outputs(tmp_path / "dask")
    statuses = [json.loads((tmp_path / "dask" / "status" / f"{e.slide_id}.json")
                           .read_text()) for e in entries]
    assert max(s["result"]["chunks"] for s in statuses) > 1  # the last slides were shared
    assert all("chunk_patches" not in s["options"] for s in statuses)
    rows = [s["result"]["patches"] + s["result"]["blank_rejected"] for s in statuses]
    assert any(len(s["result"]["shards"]) < -(-n // CUT.shard_size)  # all-blank: none
               for s, n in zip(statuses, rows, strict=True))
    for name, options in (("inline", CUT), ("small", replace(CUT, chunk_patches=37))):
        outcomes = run_extraction(entries, tmp_path / name, options, scheduler="inline")
        files, table = _outputs(tmp_path / name)
        assert files == reference[0] and table.equals(reference[1])
        assert [o.blank for o in outcomes] == [o.blank for o in dask]
    table = reference[1]
    shards = table.column("shard").to_pylist()
    assert len(shards) == table.num_rows and all(shards)
    members = {}
    for shard in sorted((tmp_path / "dask" / "shards").iterdir()):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
        assert 2 <= len(names) <= 2 * CUT.shard_size
        members.update(dict.fromkeys(names, shard.name))
    assert [members[m] for m in table.column("member").to_pylist()] == shards
    # a rerun with another worker count or chunk size skips every slide
    again = run_extraction(entries, tmp_path / "dask", replace(CUT, chunk_patches=3),
                           scheduler="inline")
    assert [o.status for o in again] == ["skipped"] * 3
    again = run_extraction(entries, tmp_path / "inline", CUT, workers=2)
    assert [o.status for o in again] == ["skipped"] * 3


def _previous_release(out, slide, options_update, rename=None):
    """Turn a slide's status into one the previous release wrote (``chunk_patches`` in
    the options, shards named ``<id>-<chunk>-<n>.tar``)."""
    path = out / "status" / f"{slide}.json"
    status = json.loads(path.read_text())
    status["options"]["chunk_patches"] = 4096
    status["options"].update(options_update)
    if rename:
        outputs = {}
        for name, size in status["outputs"].items():
            if name.startswith("shards/"):
                old = name.replace(f"{slide}-", f"{slide}-0000-")
                (out / name).rename(out / old)
                name = old
            outputs[name] = size
        status["outputs"] = outputs
    path.write_text(json.dumps(status))


def test_status_files_of_the_previous_release(cohort, tmp_path):
    """Index-only outputs did not depend on the chunk size: they are kept. Shards were
    cut per chunk then: a materialised slide is redone and its old shards go."""
    entries = read_manifest(cohort)[:2]
    index_only = ExtractOptions(spec=PatchSpec(size=128))
    run_extraction(entries, tmp_path / "a", index_only, scheduler="inline")
    _previous_release(tmp_path / "a", entries[0].slide_id, {})
    again = run_extraction(entries, tmp_path / "a", index_only, scheduler="inline")
    assert [o.status for o in again] == ["skipped", "skipped"]

    jpeg = ExtractOptions(spec=PatchSpec(size=128), materialize="jpeg", shard_size=20)
    run_extraction(entries, tmp_path / "b", jpeg, scheduler="inline")
    before = _outputs(tmp_path / "b")
    _previous_release(tmp_path / "b", entries[0].slide_id, {}, rename=True)
    assert list((tmp_path / "b" / "shards").glob(f"{entries[0].slide_id}-0000-*"))
    again = run_extraction(entries, tmp_path / "b", jpeg, scheduler="inline")
    assert [o.status for o in again] == ["done", "skipped"]
    assert not list((tmp_path / "b" / "shards").glob(f"{entries[0].slide_id}-0000-*"))
    files, table = _outputs(tmp_path / "b")
    assert files == before[0] and table.equals(before[1])
