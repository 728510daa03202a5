"""One JSON conversion and one atomic JSON writer."""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path

import numpy as np
import pytest

from exaslide.jsonio import dumps, to_jsonable, write_json


class Colour(enum.IntEnum):
    RED = 1


@dataclasses.dataclass
class Spec:
    size: int
    mpp: float | None = None


def test_to_jsonable_converts_the_usual_types():
    import torch

    value = {"f32": np.float32(0.5), "i64": np.int64(3), "arr": np.arange(3),
             "path": Path("/runs/x"), "tuple": (1, (2, 3)), "set": {"b", "a"},
             "tensor": torch.tensor([1.5, 2.5]), "scalar": torch.tensor(7), "none": None,
             "spec": Spec(224), "enum": Colour.RED, "bool": np.bool_(True), 5: "int key",
             "nan": float("nan")}
    out = to_jsonable(value)
    assert out["f32"] == 0.5 and type(out["f32"]) is float and out["i64"] == 3
    assert out["arr"] == [0, 1, 2] and out["path"] == "/runs/x"
    assert out["tuple"] == [1, [2, 3]] and out["set"] == ["a", "b"]
    assert out["tensor"] == [1.5, 2.5] and out["scalar"] == 7 and out["none"] is None
    assert out["spec"] == {"size": 224, "mpp": None} and out["enum"] == 1
    assert out["bool"] is True and out["5"] == "int key"
    assert json.loads(json.dumps(out, allow_nan=True))["f32"] == 0.5


def test_unknown_types_become_strings_unless_strict():
    assert to_jsonable({"x": object}) == {"x": str(object)}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        to_jsonable({"x": object()}, strict=True)
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="circular"):
        to_jsonable(loop)
    with pytest.raises(ValueError):
        dumps({"x": float("nan")}, allow_nan=False)


def test_write_json_is_atomic_and_optionally_checked(tmp_path):
    from exaslide.integrity import verify

    path = write_json(tmp_path / "a.json", {"p": Path("x")})
    assert json.loads(path.read_text()) == {"p": "x"} and path.read_text().endswith("\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    with pytest.raises(TypeError):
        write_json(path, {"x": object()}, strict=True)
    assert json.loads(path.read_text()) == {"p": "x"}  # unchanged
    write_json(tmp_path / "b.json", {"k": 1}, checksum=True)
    assert (tmp_path / "b.json.sha256").exists() and verify(tmp_path / "b.json")
