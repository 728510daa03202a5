"""`exaslide env`: the JSON keys a bug report and a cluster admin rely on, GPU fields null
without a GPU, nothing created (not even the cache folder), one-line errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

TOP_KEYS = {"schema", "exaslide", "python", "platform", "openslide", "codecs", "extras",
            "packages", "torch", "dask", "cluster", "cache", "machine"}


def exaslide(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "exaslide", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    import os

    cache = tmp_path / "never" / "cache"
    return dict(os.environ, EXASLIDE_CACHE_DIR=str(cache)), cache


def test_json_has_every_documented_key(clean_env):
    env, cache = clean_env
    done = exaslide("env", "--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == TOP_KEYS and report["schema"] == 1
    import exaslide as package

    assert report["exaslide"]["version"] == package.__version__
    assert report["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert report["openslide"]["library"] and report["openslide"]["error"] is None
    works = report["codecs"]["works"]
    assert works["jpeg"] is True and works["lzw"] is True and works["deflate"] is True
    assert set(works) >= {"jpeg", "jpeg2000", "jpegxl", "lzw", "deflate", "zstd", "webp"}
    from exaslide.extras import installed_extras

    assert report["extras"] == installed_extras()  # make test: all True (exaslide[all])
    assert set(report["extras"]) == {"eval", "train", "retrieval", "encoders", "viewer",
                                     "cloud"}
    torch = report["torch"]
    assert set(torch) == {"version", "cuda_build", "cuda_available", "cudnn", "nccl", "gpus",
                          "error"}
    if not torch["cuda_available"]:  # no GPU: the GPU fields are null, the list empty
        assert torch["cudnn"] is None and torch["nccl"] is None and torch["gpus"] == []
    else:
        assert all(gpu["memory_bytes"] > 0 for gpu in torch["gpus"])
    assert report["dask"]["distributed"] and report["cluster"] is None
    assert report["cache"] == {"dir": str(cache), "exists": False, "bytes": 0, "files": 0,
                               "limit_bytes": report["cache"]["limit_bytes"],
                               "free_bytes": report["cache"]["free_bytes"], "error": None}
    assert report["cache"]["free_bytes"] > 0
    assert not cache.parent.exists()  # reporting creates nothing
    machine = report["machine"]
    assert machine["cpus"] >= 1 and machine["memory_bytes"] > machine["memory_available_bytes"] > 0
    assert report["packages"]["numpy"] and report["packages"]["tifffile"]


def test_text_form_and_a_cache_with_files(clean_env):
    env, cache = clean_env
    (cache / "blocks").mkdir(parents=True)
    (cache / "blocks" / "a").write_bytes(b"x" * 1000)
    done = exaslide("env", env=env)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for needle in ("exaslide ", "python ", "openslide library ", "jpeg yes", "extras: ",
                   "torch ", "dask ", f"cache {cache}: 0.98 kiB in 1 file,", "machine: "):
        assert needle in text, (needle, text)
    report = json.loads(exaslide("env", "--json", env=env).stdout)
    assert report["cache"]["bytes"] == 1000 and report["cache"]["files"] == 1


@pytest.mark.parametrize("address", ["silent", "bogus://x:1", "127.0.0.1"])
def test_a_scheduler_that_does_not_answer_is_one_line_not_a_hang(clean_env, address):
    env, _ = clean_env
    with socket.socket() as sock:  # listens, accepts, never speaks Dask
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        if address == "silent":
            address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        done = exaslide("env", "--scheduler", address, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0], lines


def test_a_bad_cache_setting_is_reported_not_raised(clean_env):
    env, _ = clean_env
    done = exaslide("env", "--json", env={**env, "EXASLIDE_CACHE_SIZE": "banana"})
    assert done.returncode == 0, done.stderr
    cache = json.loads(done.stdout)["cache"]
    assert cache["limit_bytes"] is None and "banana" in cache["error"]
