"""``exaslide encoders list [--json]``."""

from __future__ import annotations

import json

from click.testing import CliRunner

from exaslide.cli.encoders import command
from exaslide.encoders import available_encoders


def _fake_uni(root):
    snapshot = root / "models--MahmoodLab--UNI" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "pytorch_model.bin").write_bytes(b"w")
    return snapshot / "pytorch_model.bin"


def test_list_json(tmp_path):
    path = _fake_uni(tmp_path)
    result = CliRunner().invoke(command, ["list", "--json", "--hf-cache", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == available_encoders()
    assert all({"name", "dim", "mpp", "size", "weights"} <= set(r) for r in rows)
    by_name = {r["name"]: r for r in rows}
    assert by_name["uni"]["weights"] == "found"
    assert by_name["uni"]["weights_path"] == str(path)
    assert (by_name["virchow2"]["dim"], by_name["virchow2"]["mpp"],
            by_name["virchow2"]["size"]) == (2560, 0.5, 224)
    assert by_name["uni2-h"]["weights"] == "not found"
    assert "models--MahmoodLab--UNI2-h" in by_name["uni2-h"]["weights_expected"]
    assert by_name["conch"]["weights"] == "not buildable"
    assert by_name["exaslide"]["weights"] == "model file"
    assert by_name["uni"]["gated"] and not by_name["h-optimus-0"]["gated"]


def test_list_table_shows_licences_and_weights(tmp_path):
    _fake_uni(tmp_path)
    result = CliRunner().invoke(command, ["list", "--hf-cache", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "dim", "µm/px", "size", "embedding", "licence",
                                "weights"]
    uni = next(line for line in lines if line.startswith("uni "))
    assert "1024" in uni and "(gated)" in uni and "found:" in uni
    assert len(lines) == 1 + len(available_encoders())
