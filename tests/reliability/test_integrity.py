"""Integrity of the artefacts read back later (catalogue A10): a flipped bit or a
truncated copy of a vector index, an embedding store, a model file, a training
checkpoint or projection heads is a one-line error that names the file, says it is
corrupt and what to do, instead of wrong numbers (a flipped bit in ``index.faiss`` once
returned cosine 1.0007). Files without a recorded checksum (written by an earlier
release) load with a warning.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import numpy as np
import pytest
from harness import exaslide

SIZE = 32  # patch side of the tiny model


def flip_bit(path, offset: int | None = None) -> None:
    """Flip one bit of ``path`` (in the middle of the file by default)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path) -> None:
    """Cut ``path`` to 90 % of its size."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 9 // 10])


def sidecars(folder) -> list:
    return sorted(folder.rglob("*.sha256"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small-cnn model file, a 300-vector store of its dimension, a flat index of it and
    a query image, built through the library (module scope: built once)."""
    import cv2
    import pyarrow as pa
    import torch

    from exaslide.models import create_model, save_model
    from exaslide.retrieval.index import build_index
    from exaslide.retrieval.store import write_info, write_part

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("integrity")
    meta = {"classes": ["normal", "tumour"], "patch": {"size": SIZE, "level": 0, "mpp": None},
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    model = save_model(root / "model" / "model.pt", create_model("small-cnn", 2), meta)
    rng = np.random.default_rng(0)
    n, dim = 300, 400
    table = pa.table({"key": [f"k{i}" for i in range(n)],
                      "label": ["a" if i % 2 else "b" for i in range(n)]})
    store = root / "store"
    write_info(store, {"kind": "patches", "dim": dim, "model": "small-cnn",
                       "model_path": str(model), "patch": meta["patch"],
                       "mean": meta["mean"], "std": meta["std"]})
    write_part(store, "a", table, rng.normal(size=(n, dim)).astype(np.float32))
    build_index(store, root / "index", "flat")
    image = root / "query.png"
    cv2.imwrite(str(image), rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    return {"root": root, "model": model, "store": store, "index": root / "index",
            "image": image}


def copy(src, tmp_path):
    dst = tmp_path / src.name
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    return dst


def assert_corrupt(result, path, remedy: str) -> str:
    """Exit 2 and one line that names ``path``, says corrupt and gives ``remedy``."""
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    line = result.one_line_error()
    assert str(path) in line and "corrupt" in line and remedy in line, line
    assert "expected" in line and "found" in line, line
    return line


def test_every_artefact_has_a_sha256sum_sidecar(built):
    names = {str(p.relative_to(built["root"])) for p in sidecars(built["root"])}
    assert {"model/model.pt.sha256", "store/embeddings.json.sha256",
            "store/parts/a.npy.sha256", "store/parts/a.parquet.sha256",
            "index/index.faiss.sha256", "index/meta.parquet.sha256",
            "index/index.json.sha256"} <= names
    for sidecar in sidecars(built["root"]):
        digest, name = sidecar.read_text().split()
        target = sidecar.with_name(name)
        assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    if shutil.which("sha256sum"):  # the standard tool checks them too
        done = subprocess.run(["sha256sum", "-c", "index.faiss.sha256"],
                              cwd=built["index"], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_intact_artefacts_load(built, tmp_path, watch):
    index = copy(built["index"], tmp_path)
    check = watch()
    done = exaslide("search", index, "--image", built["image"], "-k", "3", "--json")
    assert done.code == 0, done.stderr
    assert "WARNING" not in done.stderr and "checksum" not in done.stderr
    check()


@pytest.mark.parametrize("damage", [flip_bit, truncate])
def test_damaged_index_faiss_is_refused(built, tmp_path, watch, damage):
    index = copy(built["index"], tmp_path)
    damage(index / "index.faiss")
    check = watch()
    done = exaslide("search", index, "--image", built["image"], "-k", "3")
    assert_corrupt(done, index / "index.faiss", "rebuild")
    check()


def test_damaged_index_metadata_is_refused(built, tmp_path, watch):
    index = copy(built["index"], tmp_path)
    flip_bit(index / "meta.parquet")
    check = watch()
    done = exaslide("search", index, "--image", built["image"])
    assert_corrupt(done, index / "meta.parquet", "rebuild")
    check()


@pytest.mark.parametrize("name", ["parts/a.npy", "parts/a.parquet", "embeddings.json"])
@pytest.mark.parametrize("damage", [flip_bit, truncate])
def test_damaged_store_is_refused(built, tmp_path, watch, name, damage):
    store = copy(built["store"], tmp_path)
    if name == "embeddings.json":  # keep it valid JSON: "small-cnn" -> "small-cno"
        text = (store / name).read_text()
        offset = text.index("small-cnn") + 8
        damage(store / name, offset) if damage is flip_bit else damage(store / name)
    else:
        damage(store / name)
    check = watch()
    out = tmp_path / "idx"
    done = exaslide("index", "build", store, "--out", out, "--kind", "flat")
    assert_corrupt(done, store / name, "re-embed")
    assert not out.exists()
    check()


@pytest.mark.parametrize("damage", [flip_bit, truncate])
def test_damaged_model_file_is_refused_by_infer(built, synth_slide, tmp_path, watch, damage):
    model = copy(built["model"], tmp_path)
    shutil.copy2(built["model"].with_name("model.pt.sha256"), tmp_path)
    damage(model)
    check = watch()
    out = tmp_path / "out"
    done = exaslide("infer", model, synth_slide.path, "--out", out)
    assert_corrupt(done, model, "retrain")
    check()


def test_file_without_checksum_loads_with_a_warning(built, tmp_path, watch):
    """Outputs of the previous release (no ``.sha256`` files) still load, with a
    warning that they cannot be checked."""
    index = copy(built["index"], tmp_path)
    for sidecar in sidecars(index):
        sidecar.unlink()
    check = watch()
    done = exaslide("search", index, "--image", built["image"], "-k", "2")
    assert done.code == 0, done.stderr
    assert "no checksum" in done.stderr and "index.faiss" in done.stderr
    check()


def test_replaced_file_with_a_stale_checksum_is_refused(built, tmp_path):
    """The sidecar of another file (a model copied over an older one) is a mismatch."""
    from exaslide.errors import ModelError
    from exaslide.models import create_model, load_model

    model = copy(built["model"], tmp_path)
    shutil.copy2(built["model"].with_name("model.pt.sha256"), tmp_path)
    import torch

    torch.save({"format": "exaslide-model/1", "name": "small-cnn", "num_classes": 2,
                "state_dict": create_model("small-cnn", 2).state_dict(), "meta": {}}, model)
    with pytest.raises(ModelError, match=r"model.pt: corrupt .*model\.pt\.sha256"):
        load_model(model)


def test_damaged_training_checkpoint_is_refused(tmp_path):
    import torch

    from exaslide.errors import TrainingError
    from exaslide.train.checkpoint import load_training_state, save_training_state

    path = save_training_state(tmp_path / "checkpoints" / "last.pt",
                               {"epoch": 3, "model": {"w": torch.arange(50_000.0)}})
    assert load_training_state(path)["epoch"] == 3
    flip_bit(path)
    with pytest.raises(TrainingError, match=r"last.pt: corrupt.*expected.*found"):
        load_training_state(path)


def test_damaged_pretrained_weights_are_refused(built, tmp_path):
    from exaslide.errors import ModelError
    from exaslide.models import create_model

    model = copy(built["model"], tmp_path)
    shutil.copy2(built["model"].with_name("model.pt.sha256"), tmp_path)
    flip_bit(model)
    with pytest.raises(ModelError, match=r"model.pt: corrupt"):
        create_model("small-cnn", 2, pretrained=model)


def test_damaged_projection_heads_are_refused(tmp_path):
    from exaslide.errors import RetrievalError
    from exaslide.retrieval.multimodal import ProjectionHeads, load_heads

    path = ProjectionHeads(64, 32, dim=16, hidden=None).save(tmp_path / "projection.pt")
    assert load_heads(path).dim == 16
    flip_bit(path)
    with pytest.raises(RetrievalError, match=r"projection.pt: corrupt.*re-embed"):
        ProjectionHeads.load(path)


def test_rewrite_keeps_one_line_and_a_failed_write_changes_nothing(tmp_path):
    from exaslide.integrity import atomic_write, recorded_digests, verify

    path = tmp_path / "a.bin"
    for content in (b"first", b"second"):
        with atomic_write(path) as tmp:
            tmp.write_bytes(content)
        assert recorded_digests(path) == [hashlib.sha256(content).hexdigest()]
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_bytes(b"third")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"second" and verify(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.bin.sha256"]


def test_a_write_killed_before_the_rename_leaves_a_matching_digest(tmp_path):
    """Between the two phases the sidecar lists the new digest and the old one: the file
    (old or new) matches either."""
    from exaslide.errors import ModelError
    from exaslide.integrity import verify

    path = tmp_path / "m.pt"
    path.write_bytes(b"old")
    old, new = (hashlib.sha256(b).hexdigest() for b in (b"old", b"new"))
    path.with_name("m.pt.sha256").write_text(f"{new}  m.pt\n{old}  m.pt\n")
    assert verify(path, ModelError)
    path.write_bytes(b"other")
    with pytest.raises(ModelError, match=r"m.pt: corrupt file \(sha256 expected"):
        verify(path, ModelError, "retrain")


def test_bad_sidecar_and_missing_file(tmp_path, caplog):
    from exaslide.errors import RetrievalError
    from exaslide.integrity import verify

    assert verify(tmp_path / "missing.npy", RetrievalError) is False  # the reader reports it
    path = tmp_path / "a.npy"
    path.write_bytes(b"data")
    with caplog.at_level("WARNING", logger="exaslide.integrity"):
        assert verify(path, RetrievalError) is False
    assert "a.npy: no checksum recorded" in caplog.text
    path.with_name("a.npy.sha256").write_text("garbage\n")
    with pytest.raises(RetrievalError, match=r"a.npy.sha256: not a sha256sum line"):
        verify(path, RetrievalError)
