"""CLAM/TRIDENT feature files: exaslide's exports read back in h5py with the tools'
layout, files written by hand in each tool's layout import, round trips, bad files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pyarrow as pa
import pytest

from exaslide.cli.features import command
from exaslide.integrity import verify
from exaslide.patches.job import patch_keys
from exaslide.retrieval.h5features import export_h5, import_h5
from exaslide.retrieval.store import read_embeddings, write_info, write_part

DIM = 8


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A 1024 x 768 synthetic slide at 0.5 um/px (levels: downsample 1 and 4)."""
    from exaslide.synth import SynthSpec, write_synthetic_slide

    path = tmp_path_factory.mktemp("h5slide") / "s.tif"
    write_synthetic_slide(path, SynthSpec(width=1024, height=768, tumours=1, seed=2))
    return path


def make_store(folder, patch, level=0, slides=("a", "b"), n=5):
    """A patch store by hand: ``n`` patches per slide, random vectors (as float16)."""
    rng = np.random.default_rng(0)
    write_info(folder, {"kind": "patches", "dim": DIM, "model": "small-cnn",
                        "model_path": None, "patch": patch, "mean": None, "std": None,
                        "source": str(folder / "nowhere")})
    parts = {}
    for i, slide_id in enumerate(slides):
        x = np.arange(n, dtype=np.int64) * 64 + i
        y = np.full(n, 32 * i, dtype=np.int64)
        table = pa.table({
            "key": pa.array(patch_keys(slide_id, x, y), pa.string()),
            "slide_id": [slide_id] * n, "x": pa.array(x, pa.int64()),
            "y": pa.array(y, pa.int64()), "level": pa.array([level] * n, pa.int16()),
            "size": pa.array([patch["size"]] * n, pa.int32()),
            "label": ["tumour"] * n, "split": ["train"] * n})
        vectors = rng.normal(size=(n, DIM)).astype(np.float16)
        write_part(folder, slide_id, table, vectors)
        parts[slide_id] = (x, y, vectors.astype(np.float32))
    return parts


def run_cli(*args):
    """The `features` group through exaslide's root group (registered or not yet)."""
    from click.testing import CliRunner

    from exaslide.cli.main import ExaslideGroup, cli

    root = cli if "features" in cli.commands else \
        ExaslideGroup("exaslide", commands={"features": command})
    return CliRunner().invoke(root, ["features", *map(str, args)])


def attrs(path, name="coords"):
    with h5py.File(path, "r") as fh:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                for k, v in fh[name].attrs.items()}


def assert_done(outcomes):
    assert [o.status for o in outcomes] == ["done"] * len(outcomes), \
        [o.error for o in outcomes]


def test_trident_export_reads_back_in_h5py_with_the_tools_layout(tmp_path, slide):
    parts = make_store(tmp_path / "store", {"size": 64, "level": 1, "mpp": None}, level=1)
    for slide_id in parts:  # the slides' paths, as the extraction's status files give them
        status = tmp_path / "store" / "nowhere" / "status" / f"{slide_id}.json"
        status.parent.mkdir(parents=True, exist_ok=True)
        status.write_text(json.dumps({"inputs": {"slide": {"path": str(slide)}}}))
    out = tmp_path / "h5"
    assert_done(export_h5(tmp_path / "store", out))
    for slide_id, (x, y, vectors) in parts.items():
        with h5py.File(out / f"{slide_id}.h5", "r") as fh:
            assert fh["features"].dtype == np.float32 and fh["features"].shape == (5, DIM)
            assert fh["coords"].dtype == np.int64 and fh["coords"].shape == (5, 2)
            assert np.array_equal(fh["features"][:], vectors)
            assert np.array_equal(fh["coords"][:], np.stack([x, y], 1))
            assert fh["features"].maxshape == (None, DIM)
            assert fh.attrs["exaslide_model"] == "small-cnn"
        coords = attrs(out / f"{slide_id}.h5")
        assert coords == {"patch_size": 64, "patch_size_level0": 256,  # level 1: x4
                          "level0_magnification": 20, "target_magnification": 5,
                          "overlap": 0, "name": slide_id, "savetodir": str(out.resolve()),
                          "level0_width": 1024, "level0_height": 768}
        assert attrs(out / f"{slide_id}.h5", "features") == \
            {"name": slide_id, "savetodir": str(out.resolve())}
    assert not list(out.glob("*.sha256"))


def test_clam_export_with_checksums_and_mpp_patches(tmp_path, slide):
    make_store(tmp_path / "store", {"size": 64, "level": None, "mpp": 1.0}, level=0)
    out = tmp_path / "h5"
    assert_done(export_h5(tmp_path / "store", out, format="clam", checksum=True,
                          slides={"a": slide, "b": slide}))
    # 64 px at 1.0 um/px read from level 0 (0.5 um/px): 128 level-0 pixels
    assert attrs(out / "a.h5") == {"patch_size": 128, "patch_level": 0,
                                   "downsample": [1.0, 1.0],
                                   "downsampled_level_dim": [1024, 768],
                                   "level_dim": [1024, 768], "name": "a",
                                   "save_path": str(out.resolve())}
    assert verify(out / "a.h5") and verify(out / "b.h5")
    trident = tmp_path / "trident"
    assert_done(export_h5(tmp_path / "store", trident, slides={"a": slide, "b": slide}))
    coords = attrs(trident / "a.h5")
    assert coords["patch_size_level0"] == 128 and coords["target_magnification"] == 10


@pytest.mark.parametrize("format", ["trident", "clam"])
def test_round_trip_store_h5_store(tmp_path, slide, format):
    """Vectors come back exactly (float16 -> float32 -> float16), and so do keys,
    positions, levels, sizes, the model and the patch spec; labels do not travel (the
    files have no place for them) and the split comes from a manifest."""
    patch = {"size": 64, "level": 1, "mpp": None}
    make_store(tmp_path / "store", patch, level=1)
    assert_done(export_h5(tmp_path / "store", tmp_path / "h5", format=format,
                          slides={"a": slide, "b": slide}))
    assert_done(import_h5(tmp_path / "h5", tmp_path / "back"))
    before, after = read_embeddings(tmp_path / "store"), read_embeddings(tmp_path / "back")
    assert np.array_equal(before.vectors, after.vectors)
    for column in ("key", "slide_id", "x", "y", "level", "size"):
        assert before.table[column].to_pylist() == after.table[column].to_pylist(), column
    assert after.table["label"].null_count == len(after)
    assert after.info["model"] == "small-cnn" and after.info["patch"] == patch
    # the imported store exports again without the slides (its parts kept the geometry)
    assert_done(export_h5(tmp_path / "back", tmp_path / "again", format=format))
    folder_key = "savetodir" if format == "trident" else "save_path"
    assert attrs(tmp_path / "again" / "a.h5") == \
        {**attrs(tmp_path / "h5" / "a.h5"), folder_key: str((tmp_path / "again").resolve())}


def write_clam(path, features, coords, coords_attrs=None):
    """A file as CLAM's ``save_hdf5`` writes it (one row per chunk, resizable)."""
    with h5py.File(path, "w") as fh:
        for key, value in (("features", features), ("coords", coords)):
            dataset = fh.create_dataset(key, shape=value.shape, dtype=value.dtype,
                                        maxshape=(None, *value.shape[1:]),
                                        chunks=(1, *value.shape[1:]))
            dataset[:] = value
        for key, value in (coords_attrs or {}).items():
            fh["coords"].attrs[key] = value


def test_hand_written_clam_files_import(tmp_path):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(6, DIM)).astype(np.float32)
    coords = np.array([[0, 0], [256, 0], [512, 0], [0, 256], [256, 256], [512, 256]],
                      dtype=np.int32)
    (tmp_path / "h5_files").mkdir()
    write_clam(tmp_path / "h5_files" / "slide1.h5", features, coords)
    result = run_cli("import", tmp_path / "h5_files", "--out", tmp_path / "store1")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "pass --patch-size and --level" in \
        result.stderr and "slide1.h5" in result.stderr
    result = run_cli("import", tmp_path / "h5_files", "--out", tmp_path / "store1",
                     "--patch-size", 256, "--level", 0, "--model", "resnet50_trunc")
    assert result.exit_code == 0, result.output
    store = read_embeddings(tmp_path / "store1")
    np.testing.assert_allclose(store.vectors, features, rtol=1e-3, atol=1e-3)  # float16
    assert store.table["x"].to_pylist() == coords[:, 0].tolist()
    assert store.table["y"].to_pylist() == coords[:, 1].tolist()
    assert store.info["patch"] == {"size": 256, "level": 0, "mpp": None}
    assert store.info["model"] == "resnet50_trunc"
    # CLAM's patch-file attributes on coords are enough without options
    write_clam(tmp_path / "slide2.h5", features, coords.astype(np.int64),
               {"patch_size": 128, "patch_level": 1, "downsample": np.array([2.0, 2.0]),
                "level_dim": np.array([500, 400]), "name": "slide2", "save_path": "x"})
    assert_done(import_h5(tmp_path / "slide2.h5", tmp_path / "store2", model="m"))
    store = read_embeddings(tmp_path / "store2")
    assert store.info["patch"] == {"size": 128, "level": 1, "mpp": None}
    assert set(store.table["level"].to_pylist()) == {1}


def test_hand_written_trident_file_imports_and_exports_back(tmp_path):
    """TRIDENT layout: features_<encoder>/<name>.h5, coords attributes of coords_to_h5,
    features attributes name/savetodir; the model name comes from the folder."""
    folder = tmp_path / "20x_256px_0px_overlap" / "features_uni_v1"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    features = rng.normal(size=(4, DIM)).astype(np.float32)
    coords = np.array([[0, 0], [512, 0], [0, 512], [512, 512]], dtype=np.int64)
    coords_attrs = {"patch_size": 256, "patch_size_level0": 512,
                    "level0_magnification": 40, "target_magnification": 20, "overlap": 0,
                    "name": "TCGA-1", "savetodir": "/job/patches", "level0_width": 2000,
                    "level0_height": 1500}
    with h5py.File(folder / "TCGA-1.h5", "w") as fh:
        fh.create_dataset("features", data=features, maxshape=(None, DIM), chunks=(1, DIM))
        fh.create_dataset("coords", data=coords, maxshape=(None, 2), chunks=(1, 2))
        fh["features"].attrs.update({"name": "TCGA-1", "savetodir": str(folder)})
        fh["coords"].attrs.update(coords_attrs)
    assert_done(import_h5(folder, tmp_path / "store"))
    store = read_embeddings(tmp_path / "store")
    assert store.info["model"] == "uni_v1"
    assert store.info["patch"] == {"size": 256, "level": None, "mpp": 0.5}
    np.testing.assert_allclose(store.vectors, features, rtol=1e-3, atol=1e-3)
    assert store.table["key"].to_pylist() == list(patch_keys("TCGA-1", coords[:, 0],
                                                            coords[:, 1]))
    assert store.table["level"].null_count == 4
    assert_done(export_h5(tmp_path / "store", tmp_path / "out"))
    again = attrs(tmp_path / "out" / "TCGA-1.h5")
    assert again == {**coords_attrs, "savetodir": str((tmp_path / "out").resolve())}


def test_bad_files_are_one_line_each_and_the_batch_goes_on(tmp_path):
    good = np.ones((3, DIM), np.float32)
    xy = np.array([[0, 0], [64, 0], [128, 0]])
    attrs_ = {"patch_size": 64, "patch_level": 0}
    folder = tmp_path / "in"
    folder.mkdir()
    write_clam(folder / "good1.h5", good, xy, attrs_)
    write_clam(folder / "good2.h5", good * 2, xy, attrs_)
    write_clam(folder / "count.h5", good, xy[:2], attrs_)
    write_clam(folder / "cols.h5", good, np.zeros((3, 3), np.int64), attrs_)
    write_clam(folder / "nan.h5", np.where(np.eye(3, DIM) > 0, np.nan, good), xy, attrs_)
    write_clam(folder / "dim.h5", np.ones((3, 4), np.float32), xy, attrs_)
    write_clam(folder / "huge.h5", good * 1e6, xy, attrs_)
    write_clam(folder / "same.h5", good, np.zeros((3, 2), np.int64), attrs_)
    write_clam(folder / "spec.h5", good, xy, {"patch_size": 128, "patch_level": 0})
    (folder / "text.h5").write_text("not hdf5")
    write_clam(folder / "sum.h5", good, xy, attrs_)  # an export whose copy went wrong
    (folder / "sum.h5.sha256").write_text(f"{'0' * 64}  sum.h5\n")
    with h5py.File(folder / "empty.h5", "w") as fh:
        fh.create_dataset("features", data=good)
    result = run_cli("import", folder, "--out", tmp_path / "store", "--model", "m")
    assert result.exit_code == 1, result.output
    errors = {line.split(": ")[2]: line for line in result.stderr.splitlines()
              if line.startswith("exaslide: error: ")}
    expected = {"count": "3 feature rows but 2 coords", "cols": "expected (N, 2)",
                "nan": "NaN or infinite", "dim": "4-d features, but the store holds 8-d",
                "huge": "beyond float16", "same": "coords repeat",
                "spec": "patches of 128 px at level 0, but the store holds 64 px",
                "text": "not a readable HDF5 file", "empty": "no 'coords' dataset",
                "sum": "corrupt file (sha256 expected 0000"}
    assert sorted(errors) == sorted(expected)
    for name, message in expected.items():  # exaslide: error: <slide>: <file>: <problem>
        assert f"{name}: {folder / name}.h5: " in errors[name] and message in errors[name]
    assert "2 done" in result.output and "10 failed" in result.output
    assert len(read_embeddings(tmp_path / "store")) == 6
    # a rerun skips the imported files and tries the bad ones again
    (folder / "nan.h5").unlink()
    write_clam(folder / "nan.h5", good * 3, xy, attrs_)
    result = run_cli("import", folder, "--out", tmp_path / "store", "--model", "m")
    assert result.exit_code == 1 and "1 done, 2 already done, 9 failed" in result.output


def test_usage_errors(tmp_path, slide):
    folder = tmp_path / "in"
    folder.mkdir()
    write_clam(folder / "a.h5", np.ones((2, DIM), np.float32), np.array([[0, 0], [1, 1]]),
               {"patch_size": 64, "patch_level": 0})
    cases = [
        (["import", folder, "--out", tmp_path / "s", "--level", 0, "--mpp", 0.5],
         "--level or --mpp, not both"),
        (["import", folder, "--out", tmp_path / "s"], "pass --model NAME"),
        (["import", tmp_path / "s0", "--out", tmp_path / "s"], "does not exist"),
        (["import", tmp_path, "--out", tmp_path / "s", "--model", "m"],
         "no .h5 feature files"),
    ]
    (tmp_path / "s0").mkdir()
    (tmp_path / "s0").rmdir()
    for args, message in cases:
        result = run_cli(*args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.output)
    write_info(tmp_path / "slides", {"kind": "slides", "dim": DIM, "model": "m"})
    result = run_cli("export", tmp_path / "slides", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "only patch stores" in result.stderr
    assert result.stderr.count("\n") == 1


def test_export_without_a_slide_fails_that_slide(tmp_path, slide):
    make_store(tmp_path / "store", {"size": 64, "level": 0, "mpp": None})
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"slide_id,path,annotation,label,split\na,{slide},,normal,train\n")
    result = run_cli("export", tmp_path / "store", "--out", tmp_path / "h5", "--manifest",
                     manifest)
    assert result.exit_code == 1
    assert "exaslide: error: b: b: no slide file known" in result.stderr
    assert (tmp_path / "h5" / "a.h5").exists() and not (tmp_path / "h5" / "b.h5").exists()
    status = json.loads((tmp_path / "h5" / "features-export_status.json").read_text())
    assert [s["status"] for s in status] == ["done", "failed"]


def test_import_with_a_manifest_selects_slides_and_sets_their_split(tmp_path, slide):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "extra"):
        write_clam(folder / f"{name}.h5", np.ones((2, DIM), np.float32),
                   np.array([[0, 0], [64, 0]]), {"patch_size": 64, "patch_level": 0})
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("slide_id,path,annotation,label,split\n"
                        f"a,{slide},,normal,train\nb,{slide},,tumour,test\n"
                        f"gone,{slide},,normal,test\n")
    result = run_cli("import", folder, "--out", tmp_path / "store", "--model", "m",
                     "--manifest", manifest)
    assert result.exit_code == 1
    assert f"exaslide: error: gone: {folder / 'gone.h5'}: No such file or directory" in \
        result.stderr
    store = read_embeddings(tmp_path / "store")
    assert store.table["slide_id"].to_pylist() == ["a", "a", "b", "b"]
    assert store.table["split"].to_pylist() == ["train", "train", "test", "test"]


def test_store_embedded_at_another_size_exports_the_pixels_it_read(tmp_path, slide):
    """`exaslide embed --size 64` on a 96-px index reads 64 px centred on each patch: the
    coords are those pixels' top-left (16 level-1 pixels = 64 level-0 pixels further)."""
    from exaslide.retrieval.store import read_part

    parts = make_store(tmp_path / "store", {"size": 64, "level": 1, "mpp": None}, level=1)
    table, vectors = read_part(tmp_path / "store", "a")  # as if the index had 96 px
    table = table.set_column(table.schema.get_field_index("size"), "size",
                             pa.array([96] * 5, pa.int32()))
    write_part(tmp_path / "store", "a", table, vectors)
    assert_done(export_h5(tmp_path / "store", tmp_path / "h5", slides={"a": slide,
                                                                       "b": slide}))
    x, y, _ = parts["a"]
    with h5py.File(tmp_path / "h5" / "a.h5", "r") as fh:
        assert np.array_equal(fh["coords"][:], np.stack([x + 64, y + 64], 1))


def test_encoder_store_exports_the_pixels_centred_on_its_index(tmp_path, slide):
    """An encoder's store (read at its um/px, centred on the indexed patches) places
    each patch from the index's footprint: 64 px at 1 um/px = 128 level-0 pixels
    centred on a 96-pixel indexed patch start 16 pixels before it (outside the slide at
    its edge: allowed)."""
    from exaslide.patches.index import make_table, write_slide_index

    patch = {"size": 64, "level": None, "mpp": 1.0, "resample": True}
    parts = make_store(tmp_path / "store", patch, slides=("a",))
    x, y, vectors = parts["a"]
    write_slide_index(make_table({"key": patch_keys("a", x, y), "slide_id": "a", "x": x,
                                  "y": y, "level": 0, "size": 96, "footprint": 96.0}),
                      tmp_path / "store" / "nowhere" / "index" / "a.parquet")
    assert_done(export_h5(tmp_path / "store", tmp_path / "h5", slides={"a": slide}))
    with h5py.File(tmp_path / "h5" / "a.h5", "r") as fh:
        assert np.array_equal(fh["coords"][:], np.stack([x - 16, y - 16], 1))
    assert attrs(tmp_path / "h5" / "a.h5")["patch_size_level0"] == 128
    assert_done(import_h5(tmp_path / "h5", tmp_path / "back"))
    back = read_embeddings(tmp_path / "back")
    assert back.info["patch"] == patch and np.array_equal(back.vectors, vectors)
    assert back.table["x"].to_pylist() == (x - 16).tolist()
    # without the index the patches cannot be placed: that slide fails, saying why
    (tmp_path / "store" / "nowhere" / "index" / "a.parquet").unlink()
    outcome, = export_h5(tmp_path / "store", tmp_path / "h5b", slides={"a": slide})
    assert outcome.status == "failed" and "centred on the patches of its index" in \
        outcome.error


def test_a_store_embedded_by_exaslide_exports_from_its_extraction(extracted, tmp_path,
                                                                  one_torch_thread):
    """The real chain: extract -> embed patches -> features export (slides found through
    the extraction's status files) -> features import: same vectors and keys."""
    from exaslide.data.sources import read_index_table
    from exaslide.retrieval.embed import embed_patches

    store = embed_patches("small-cnn", extracted, tmp_path / "store", workers=0,
                          batch_size=64, progress=False)
    assert_done(export_h5(store, tmp_path / "h5"))
    index = read_index_table(extracted)
    first = index.slice(0, 1).to_pylist()[0]
    coords = attrs(tmp_path / "h5" / f"{first['slide_id']}.h5")
    assert coords["patch_size"] == 64 and coords["patch_size_level0"] == 64
    assert_done(import_h5(tmp_path / "h5", tmp_path / "back"))
    before, after = read_embeddings(store), read_embeddings(tmp_path / "back")
    assert np.array_equal(before.vectors, after.vectors)
    assert before.table["key"].to_pylist() == after.table["key"].to_pylist()
    assert after.info["model"] == before.info["model"] == "small-cnn"
