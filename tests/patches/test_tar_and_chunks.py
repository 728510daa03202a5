"""The pieces of fast extraction: tar members written by hand (byte-identical to
``tarfile``), JPEG from RGB (the bytes of cv2's BGR encoder), the metadata JSON (the
bytes of ``json.dumps``), shards cut on plan rows and joined from parts, the chunk cut,
and the row-sampled blank test."""

from __future__ import annotations

import io
import itertools
import json
import math
import tarfile
from dataclasses import replace

import cv2
import numpy as np
import pytest

from exaslide.patches import PatchSpec, is_blank
from exaslide.patches.job import (
    MAX_CHUNK_PATCHES,
    MIN_CHUNK_PATCHES,
    TASKS_PER_WORKER,
    chunk_bounds,
    patch_keys,
    sample_metadata,
)
from exaslide.patches.reader import blank_rows
from exaslide.patches.shards import (
    RowShardWriter,
    ShardWriter,
    encode,
    group_parts,
    join_parts,
    part_name,
    shard_name,
    tar_end,
    tar_member,
)

NAMES = ["a.jpg", "a.json", "n" * 99, "n" * 100, "n" * 101, "k" * 150 + ".json",
         "é" * 50 + ".png", "é" * 51 + ".png", "x" * 600]


def _tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """What ``tarfile`` writes (GNU format, the fields ShardWriter always set)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("sizes", [[0], [1, 511, 512, 513], [10_000, 20_480, 7]])
def test_tar_members_are_the_bytes_tarfile_writes(sizes):
    rng = np.random.default_rng(len(sizes))
    members = [(name, rng.integers(0, 256, size, dtype=np.uint8).tobytes())
               for name in NAMES for size in sizes]
    mine = b"".join(tar_member(name, data) for name, data in members)
    assert mine + tar_end(len(mine)) == _tarfile_bytes(members)
    assert tar_end(0) == _tarfile_bytes([])
    with tarfile.open(fileobj=io.BytesIO(mine + tar_end(len(mine)))) as tar:
        assert tar.getnames() == [name for name, _ in members]  # long names read back


def _patch(seed, shape=(32, 32)):
    """A smooth colour gradient plus a little noise (JPEG-friendly, like tissue)."""
    h, w = shape
    base = np.stack(np.broadcast_arrays(np.linspace(40, 220, w)[None, :],
                                        np.linspace(40, 220, h)[:, None],
                                        np.linspace(220, 40, h)[:, None]), 2)
    noise = np.random.default_rng(seed).normal(0, 4, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def test_shard_writer_shards_are_the_bytes_tarfile_writes(tmp_path):
    writer = ShardWriter(tmp_path, "s-0000", "jpeg", quality=80, max_samples=2)
    samples = [(f"s_x{i}_y0" + "k" * (95 * i), _patch(i), {"x": i, "label": "normal"})
               for i in range(3)]
    for key, patch, meta in samples:
        writer.add(key, patch, meta)
    assert writer.close() == ["s-0000-00000.tar", "s-0000-00001.tar"]
    members = [[(f"{k}.jpg", encode(p, "jpeg", 80)),
                (f"{k}.json", json.dumps(m, sort_keys=True).encode())]
               for k, p, m in samples]
    assert (tmp_path / "s-0000-00000.tar").read_bytes() == \
        _tarfile_bytes(members[0] + members[1])
    assert (tmp_path / "s-0000-00001.tar").read_bytes() == _tarfile_bytes(members[2])


@pytest.mark.parametrize("quality", [50, 85, 90, 95])
@pytest.mark.parametrize("shape", [(256, 256), (224, 224), (33, 70)])
def test_jpeg_from_rgb_is_the_bytes_of_cv2_from_bgr(quality, shape):
    """The previous release encoded with cv2 from BGR: same quality, 4:2:0, same bytes."""
    patch = _patch(quality, shape)
    bgr = cv2.cvtColor(patch, cv2.COLOR_RGB2BGR)
    ok, expected = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    readonly = patch.copy()
    readonly.flags.writeable = False  # what PatchReader returns
    assert ok and encode(readonly, "jpeg", quality) == expected.tobytes()
    png = encode(readonly, "png")
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8),
                                                            cv2.IMREAD_COLOR),
                                               cv2.COLOR_BGR2RGB), patch)
    with pytest.raises(ValueError, match="unknown image format"):
        encode(patch, "gif")


def test_metadata_is_the_bytes_of_json_dumps():
    columns = {"x": np.array([0, 256, 10**12]), "y": np.array([5, -3, 0], np.int32),
               "label": np.array(["tumour", 'no"rmal', "é"], dtype=object),
               "tissue_fraction": np.array([0.5, 1 / 3, np.nan], np.float32),
               "tumour_fraction": np.array([0.0, 1.0, 0.25], np.float32),
               "flag": np.array([True, False, True]),
               "odd": np.array([None, 1.5, "s"], dtype=object),
               "pct%": np.array([1, 2, 3])}
    keys = patch_keys("a.b%c", columns["x"], columns["y"])
    for mpp in (None, 0.5):
        spec = PatchSpec(size=224, level=None if mpp else 1, mpp=mpp)
        got = sample_metadata("a.b%c", columns, keys, 1, spec)
        for i, data in enumerate(got):
            meta = {k: v[i].item() if hasattr(v[i], "item") else v[i]
                    for k, v in columns.items()}
            meta.update(slide_id="a.b%c", key=keys[i], size=224, level=1, mpp=mpp)
            assert data == json.dumps(meta, sort_keys=True).encode()


def _write(tmp_path, chunks, total, shard_size, keep):
    """Write rows ``0..total`` (those in ``keep``) in the given chunks; join parts."""
    written = []
    for start, stop in chunks:
        writer = RowShardWriter(tmp_path, "s", shard_size, start, stop, total)
        for row in range(start, stop):
            if row in keep:
                writer.add(row, tar_member(f"s_{row}.json", b'{"row": %d}' % row))
        written += writer.close()
    for name, pieces in group_parts(written).items():
        join_parts(tmp_path, name, pieces)
    return {p.name: p.read_bytes() for p in sorted(tmp_path.iterdir())}


def test_shards_on_plan_rows_do_not_depend_on_the_chunks(tmp_path):
    total, size = 47, 10
    keep = set(range(total)) - {3, 4, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 46}
    reference = _write(tmp_path / "one", [(0, total)], total, size, keep)
    assert sorted(reference) == ["s-00000.tar", "s-00001.tar", "s-00003.tar", "s-00004.tar"]
    with tarfile.open(fileobj=io.BytesIO(reference["s-00000.tar"])) as tar:
        assert tar.getnames() == [f"s_{r}.json" for r in range(10) if r in keep]
    for chunks in ([(0, 7), (7, 14), (14, 31), (31, 47)], [(a, min(a + 3, total))
                                                         for a in range(0, total, 3)],
                   [(0, 25), (25, 47)]):
        folder = tmp_path / f"cut{len(chunks)}"
        assert _write(folder, chunks, total, size, keep) == reference
        assert not list(folder.glob(".*"))  # no temporaries left


def test_parts_are_grouped_by_their_exact_suffix():
    names = [part_name("case.tar.1", 0, 7), part_name("case.tar.1", 0, 0),
             part_name("case.tar.1", 1, 14), shard_name("case.tar.1", 2), "x.json"]
    assert group_parts(names) == {
        "case.tar.1-00000.tar": [part_name("case.tar.1", 0, 0), part_name("case.tar.1", 0, 7)],
        "case.tar.1-00001.tar": [part_name("case.tar.1", 1, 14)]}
    with pytest.raises(ValueError, match="not a shard part"):
        group_parts(["case.tar.1-00000.tar.7.part"])


def test_a_slide_id_with_tar_in_it_joins_its_split_shards(tmp_path, synth_slide):
    """Shards of slide ``case.tar.1`` cut across chunks are joined under their own names
    (the bytes of an extraction in one chunk)."""
    from exaslide.manifest import read_manifest
    from exaslide.patches import ExtractOptions, SamplingOptions, run_extraction

    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,path,annotation,label,split\n"
                        f"case.tar.1,{synth_slide.path},,tumour,train\n")
    options = ExtractOptions(spec=PatchSpec(size=256), materialize="jpeg", shard_size=10,
                             sampling=SamplingOptions(min_tissue=0.0), region_size=1024)
    shards = {}
    for name, chunk in (("whole", None), ("cut", 7)):  # 7: every shard split
        [outcome] = run_extraction(read_manifest(manifest), tmp_path / name,
                                   replace(options, chunk_patches=chunk),
                                   scheduler="inline")
        assert outcome.status == "done", outcome.error
        shards[name] = {p.name: p.read_bytes()
                        for p in sorted((tmp_path / name / "shards").iterdir())}
    assert len(shards["whole"]) > 1
    assert set(shards["whole"]) <= {shard_name("case.tar.1", k) for k in range(11)}
    assert shards["cut"] == shards["whole"]


def test_aborted_row_writer_leaves_nothing(tmp_path):
    writer = RowShardWriter(tmp_path, "s", 2, 0, 5, 5)
    for row in range(3):
        writer.add(row, tar_member(f"{row}.json", b"{}"))
    writer.abort()
    assert not list(tmp_path.iterdir())


def test_chunk_bounds():
    def check(bounds, n):
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a < b for a, b in bounds)
        assert all(b == c for (_, b), (c, _) in itertools.pairwise(bounds))
        return [b - a for a, b in bounds]

    assert chunk_bounds(0, 1000, 4, 1) == []
    assert chunk_bounds(4793, 1000, 1, 1) == [(0, 4793)]  # inline: one task
    assert chunk_bounds(4793, 1000, 2, 16) == [(0, 4793)]  # many slides left
    sizes = check(chunk_bounds(4793, 1000, 2, 1), 4793)  # the last slide: shared out
    assert len(sizes) == TASKS_PER_WORKER * 2 and max(sizes) - min(sizes) <= 1
    assert (2498, 5000) in chunk_bounds(9990, 1000, 2, 1)  # 4995 moved to a shard start
    sizes = check(chunk_bounds(4793, 1000, 2, 2), 4793)
    assert len(sizes) == TASKS_PER_WORKER
    assert chunk_bounds(300, 1000, 8, 1) == [(0, 300)]  # not below MIN_CHUNK_PATCHES
    assert len(chunk_bounds(2 * MIN_CHUNK_PATCHES, 1000, 8, 1)) == 2
    big = check(chunk_bounds(100_000, 1000, 1, 1), 100_000)  # progress: capped
    assert len(big) == math.ceil(100_000 / MAX_CHUNK_PATCHES)
    assert all(a % 1000 == 0 for a, _ in chunk_bounds(100_000, 1000, 1, 1))  # whole shards
    assert all(a % 1000 == 0 for a, _ in chunk_bounds(66_000, 1000, 64, 100))
    assert check(chunk_bounds(10, 3, 8, 1, chunk_patches=4), 10) == [4, 4, 2]


def test_blank_rows_keep_16_rows_and_4096_pixels():
    assert [blank_rows(s, s) for s in (32, 64, 128, 224, 256, 512)] == [1, 1, 4, 11, 16, 32]
    for side in (100, 224, 256, 300, 1000):
        step = blank_rows(side, side)
        assert len(range(0, side, step)) >= 16 and len(range(0, side, step)) * side >= 4096


def test_blank_rows_only_ever_keep_a_patch():
    """The row sample (every 16th row of a 256-px patch) keeps tissue on its own; it never
    makes a patch blank: that is decided on every pixel."""
    rng = np.random.default_rng(1)
    tissue = rng.integers(80, 200, (256, 256, 3), dtype=np.uint8)
    sampled = np.zeros(256, bool)
    sampled[::16] = True
    for fill in (250, 10, 128):  # white, black, flat on the sampled rows only
        on_sampled = tissue.copy()
        on_sampled[sampled] = fill
        assert not is_blank(on_sampled), fill
    stripe = np.full_like(tissue, 180)  # flat fill with tissue on 15 unsampled rows
    stripe[1:16] = tissue[1:16]
    assert not is_blank(stripe)
    band = np.full_like(tissue, 250)  # tissue on the top 20 rows: 92% glass
    band[:20] = tissue[:20]
    assert is_blank(band)
    white_elsewhere = np.full_like(tissue, 250)  # 15/16 glass the rows do not see: kept
    white_elsewhere[sampled] = tissue[sampled]
    assert not is_blank(white_elsewhere)
    assert is_blank(np.full((64, 64), 250, np.uint8))  # grey patches too
    assert not is_blank(tissue[:, :, 0])


def _blank_by_definition(patch, fraction=0.9):
    pixels = patch.reshape(-1, 3).astype(int)
    n = len(pixels)
    return bool((pixels.min(1) > 220).sum() >= fraction * n or
                (pixels.max(1) < 25).sum() >= fraction * n or pixels.std(0).max() < 2.0)


def test_blank_is_never_said_of_a_patch_the_definition_keeps():
    """Random glass/tissue mixtures, flat fills with some tissue, 256 px: a patch called
    blank is blank over all its pixels; the rows keep almost nothing the definition would
    drop."""
    rng = np.random.default_rng(11)
    disagree = 0
    for i in range(1500):
        patch = rng.integers(60, 200, (256, 256, 3), dtype=np.uint8)
        kind = i % 3
        if kind == 0:  # glass with blobs of tissue covering 2-20%
            mask = np.ones((256, 256), bool)
            for _ in range(rng.integers(1, 6)):
                (x, y), r = rng.integers(0, 256, 2).tolist(), int(rng.integers(5, 40))
                yy, xx = np.ogrid[:256, :256]
                mask &= (xx - x) ** 2 + (yy - y) ** 2 > r * r
            patch[mask] = rng.integers(225, 256, (mask.sum(), 3))
        elif kind == 1:  # glass with a band of tissue rows
            rows = int(rng.integers(1, 40))
            start = int(rng.integers(0, 256 - rows))
            glass = np.ones(256, bool)
            glass[start:start + rows] = False
            patch[glass] = 240
        else:  # flat fill with a few tissue rows
            rows = int(rng.integers(1, 20))
            start = int(rng.integers(0, 256 - rows))
            flat = np.ones(256, bool)
            flat[start:start + rows] = False
            patch[flat] = int(rng.integers(100, 200))
        expected = _blank_by_definition(patch)
        got = is_blank(patch)
        assert not got or expected, i  # never drops what the definition keeps
        disagree += got != expected
    assert disagree <= 15  # 1%: patches just over 90% glass whose rows show under 80%


def test_blank_test_equals_its_definition_near_the_thresholds():
    """The shortcuts never change the answer near the thresholds: patches with exactly or
    about 90% white or black pixels (the rest of any colour) agree with a direct count."""
    rng = np.random.default_rng(7)
    for i in range(400):
        patch = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
        mask = rng.random((64, 48)) < rng.choice([0.88, 0.9, 0.901, 0.92])
        if i % 2:
            patch[mask] = rng.integers(221, 256, (mask.sum(), 3))  # white
            patch[~mask] = rng.choice([0, 220, 255])  # the rest at an extreme
        else:
            patch[mask] = rng.integers(0, 25, (mask.sum(), 3))  # black
            patch[~mask] = rng.choice([25, 255])
        if i % 5 == 0:
            patch[mask] = 221 if i % 2 else 24  # exactly on the bound
        assert is_blank(patch) == _blank_by_definition(patch), i
