"""`exaslide env --scheduler` on a real cluster (scheduler and workers as separate
processes): every worker listed with its exaslide version; workers that run another
version are flagged and the command exits 1."""

from __future__ import annotations

import json

from harness import cluster, exaslide

import exaslide as package


def test_env_lists_the_workers_and_flags_a_version_mismatch(tmp_path, monkeypatch):
    from exaslide.env import cluster_info

    with cluster(tmp_path, workers=2) as (address, _scheduler, _workers):
        done = exaslide("env", "--json", "--scheduler", address)
        assert done.code == 0, done.stderr
        found = json.loads(done.stdout)["cluster"]
        assert found["scheduler"] == address and found["mismatches"] == []
        assert len(found["workers"]) == 2
        for worker in found["workers"]:
            assert worker["exaslide"] == package.__version__ and not worker["mismatch"]
            assert worker["nthreads"] == 1 and worker["python"]
        text = exaslide("env", "--scheduler", address)
        assert text.code == 0 and "2 workers" in text.stdout
        monkeypatch.setattr(package, "__version__", "0.0.0-other")  # this side differs
        mismatched = cluster_info(address)
        assert len(mismatched["mismatches"]) == 2
        assert all(w["mismatch"] for w in mismatched["workers"])


OTHER_VERSION = """\
import importlib.metadata as metadata

_version = metadata.version


def version(name):  # this worker's environment holds another exaslide release
    return "0.0.1" if name == "exaslide" else _version(name)


metadata.version = version
"""


def test_workers_with_another_exaslide_are_flagged_and_exit_1(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(OTHER_VERSION)
    with cluster(tmp_path, workers=1, worker_env={"PYTHONPATH": str(site)}) as (
            address, _scheduler, _workers):
        done = exaslide("env", "--json", "--scheduler", address)
        assert done.code == 1, done.stderr
        found = json.loads(done.stdout)["cluster"]
        assert [w["exaslide"] for w in found["workers"]] == ["0.0.1"]
        assert found["mismatches"] == [found["workers"][0]["address"]]
        text = exaslide("env", "--scheduler", address)
        assert text.code == 1 and "exaslide version differs" in text.stdout
