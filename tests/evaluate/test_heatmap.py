"""Heatmap files: the format shared with `exaslide infer`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exaslide.errors import EvaluationError
from exaslide.evaluate import Heatmap, read_heatmap, write_heatmap

META = {"slide": "/data/t1.tif", "level0_size": [1000, 600], "mpp": [0.25, 0.26],
        "origin": [16, 8], "cell": 100.0, "patch_footprint": 224.0,
        "classes": ["normal", "tumour"], "model": "resnet18"}


def test_round_trip_atomic_and_slide_id_filled(tmp_path):
    probs = np.arange(12, dtype=np.float64).reshape(3, 4) / 12
    probs[0, 0] = np.nan
    path = write_heatmap(tmp_path, "t1", probs, {**META, "slide_id": "other"})
    assert path == tmp_path / "t1.heatmap.npy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.heatmap.json", "t1.heatmap.npy"]
    meta = json.loads((tmp_path / "t1.heatmap.json").read_text())
    assert meta["slide_id"] == "t1" and meta["model"] == "resnet18"
    for source in (tmp_path, path):
        heatmap = read_heatmap(source, "t1")
        assert heatmap.probabilities.dtype == np.float32 and heatmap.shape == (3, 4)
        assert np.isnan(heatmap.probabilities[0, 0])
        np.testing.assert_allclose(heatmap.probabilities[1:], probs[1:], rtol=1e-6)
    assert read_heatmap(tmp_path).slide_id == "t1"  # the folder's only heatmap


def test_geometry_helpers():
    heatmap = Heatmap(np.zeros((3, 4), np.float32), dict(META, slide_id="t1"))
    assert heatmap.mpp == (0.25, 0.26) and heatmap.level0_size == (1000, 600)
    x, y = heatmap.cell_centres([0, 2], [1, 3])
    np.testing.assert_allclose(x, [16 + 150, 16 + 350])
    np.testing.assert_allclose(y, [8 + 50, 8 + 250])
    xs, ys = heatmap.grid_centres()
    assert len(xs) == 4 and len(ys) == 3 and xs[0] == 66 and ys[-1] == 258
    rows, cols = heatmap.cell_of([16, 115.9, 116], [8, 107.9, 108])
    assert rows.tolist() == [0, 0, 1] and cols.tolist() == [0, 0, 1]
    assert Heatmap(heatmap.probabilities, {**META, "mpp": None}).mpp is None


def test_errors(tmp_path):
    with pytest.raises(EvaluationError, match="2-D"):
        write_heatmap(tmp_path, "a", np.zeros(5), META)
    with pytest.raises(EvaluationError, match="lacks cell"):
        write_heatmap(tmp_path, "a", np.zeros((2, 2)), {**META, "cell": None})
    with pytest.raises(EvaluationError, match="not JSON"):
        write_heatmap(tmp_path, "a", np.zeros((2, 2)), {**META, "mpp": [float("nan")] * 2})
    with pytest.raises(EvaluationError, match="path separator"):
        write_heatmap(tmp_path, "../a", np.zeros((2, 2)), META)
    with pytest.raises(EvaluationError, match="no such heatmap file"):
        read_heatmap(tmp_path, "missing")
    with pytest.raises(EvaluationError, match="no such heatmap folder"):
        read_heatmap(tmp_path / "nowhere", "a")
    write_heatmap(tmp_path, "a", np.zeros((2, 2)), META)
    write_heatmap(tmp_path, "b", np.zeros((2, 2)), META)
    with pytest.raises(EvaluationError, match="2 heatmaps"):
        read_heatmap(tmp_path)
    (tmp_path / "b.heatmap.json").write_text('{"slide_id": "zzz", "cell": 1, '
                                              '"origin": [0, 0], "level0_size": [2, 2]}')
    with pytest.raises(EvaluationError, match="names slide 'zzz'"):
        read_heatmap(tmp_path, "b")
    (tmp_path / "a.heatmap.npy").write_bytes(b"junk")
    with pytest.raises(EvaluationError, match=r"a\.heatmap\.npy: corrupt file"):
        read_heatmap(tmp_path, "a")
    legacy = json.loads((tmp_path / "a.heatmap.json").read_text())
    del legacy["npy_sha256"]  # written before heatmaps recorded their digest
    (tmp_path / "a.heatmap.json").write_text(json.dumps(legacy))
    with pytest.raises(EvaluationError, match="not a readable"):
        read_heatmap(tmp_path, "a")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_npy_is_refused(tmp_path, damage):
    """A flipped bit or a truncated copy of the ``.npy`` is an error, not wrong
    probabilities: the JSON records the SHA-256 of the bytes written."""
    import hashlib

    path = write_heatmap(tmp_path, "t1", np.full((40, 50), 0.25), META)
    meta = json.loads((tmp_path / "t1.heatmap.json").read_text())
    assert meta["npy_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = data[: len(data) - 8]
    path.write_bytes(bytes(data))
    with pytest.raises(EvaluationError, match=r"t1.heatmap.npy: corrupt file .*expected.*"
                                              r"found.*exaslide infer --overwrite"):
        read_heatmap(tmp_path, "t1")
