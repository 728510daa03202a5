"""The light core: a fresh virtual environment with `pip install exaslide` (no extra) from
this checkout runs `info`, `synth` (CAMELYON17 patients too), `mask` and `extract`
without torch, starts in well under a second, and a command that needs an extra says
which one (exit code 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: what the core must not pull in
HEAVY = ("torch", "torchvision", "faiss", "timm", "sklearn", "scipy", "matplotlib",
         "starlette", "uvicorn", "tensorboard", "pydantic")
#: the checkout's own files, copied so that the build writes nothing into the checkout
IGNORED = shutil.ignore_patterns(".git", ".venv*", "node_modules", "build", "dist",
                                 "*.egg-info", "__pycache__", ".pytest_cache",
                                 ".ruff_cache", "demo_out", "demo-out", "out")


@pytest.fixture(scope="module")
def core(tmp_path_factory) -> Path:
    """The ``bin`` folder of a virtual environment holding exaslide's core only."""
    if not (REPO / "src/exaslide/viewer/static/vendor/openseadragon/VERSION.txt").is_file() \
            and shutil.which("npm") is None:
        pytest.fail("the checkout has no bundled OpenSeadragon and there is no npm to "
                    "build it (pip install -e . bundles it)")
    root = tmp_path_factory.mktemp("core")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=IGNORED)
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    done = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", str(source)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return bin_dir


def run(bin_dir: Path, *args, cwd=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / "exaslide"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


def test_core_has_no_torch_and_runs_the_cpu_pipeline(core, tmp_path):
    python = str(core / "python")
    found = subprocess.run([python, "-c", "import importlib.util as u, json; print(json.dumps("
                            f"[m for m in {HEAVY!r} if u.find_spec(m) is not None]))"],
                           capture_output=True, text=True, timeout=60)
    assert json.loads(found.stdout) == [], "the core install pulled in heavy packages"
    where = subprocess.run([python, "-c", "import exaslide; print(exaslide.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert str(core.parent) in where.stdout  # the installed copy, not the checkout's src

    done = run(core, "synth", tmp_path / "slides", "--width", 2048, "--height", 1536,
               "--tumours", 1, "--seed", 3)
    assert done.returncode == 0, done.stderr
    slide, xml = tmp_path / "slides" / "synth_3.tif", tmp_path / "slides" / "synth_3.xml"
    assert slide.is_file() and xml.is_file()
    info = run(core, "info", slide, "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["dimensions"] == [2048, 1536]
    mask = run(core, "mask", slide, "--annotations", xml, "--level", 1, "--out",
               tmp_path / "masks")
    assert mask.returncode == 0, mask.stderr
    assert (tmp_path / "masks" / "synth_3_mask.tif").is_file()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_id,path,annotation,label,split\n"
                        f"s3,{slide},{xml},tumour,train\n")
    extract = run(core, "extract", manifest, "--out", tmp_path / "patches", "--sampler",
                  "grid", "--patch-size", 128, "--materialize", "jpeg", "--workers", 1)
    assert extract.returncode == 0, extract.stderr
    assert "1 done" in extract.stdout and list((tmp_path / "patches" / "index").iterdir())
    assert list((tmp_path / "patches" / "shards").iterdir())

    patients = run(core, "synth", tmp_path / "patients", "--cohort", 1, "--patients",
                   "--width", 2048, "--height", 2048)
    assert patients.returncode == 0, patients.stderr
    assert (tmp_path / "patients" / "stage.csv").is_file()

    report = json.loads(run(core, "env", "--json").stdout)
    assert report["torch"] is None and not any(report["extras"].values())
    assert report["codecs"]["works"]["jpeg"] is True


def test_core_cli_starts_fast(core):
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        done = run(core, "--help")
        best = min(best, time.perf_counter() - start)
        assert done.returncode == 0 and "extract" in done.stdout
    assert best < 1.0, f"exaslide --help took {best:.2f} s without torch"


@pytest.mark.parametrize("args, extra", [
    (("train", "CONFIG"), "train"),
    (("view", "SLIDE"), "viewer"),
    (("search", "INDEX", "--text", "tumour"), "retrieval"),
    (("encoders", "list"), "encoders"),
    (("demo", "--out", "OUT"), "eval"),
])
def test_a_command_whose_extra_is_missing_names_it(core, tmp_path, args, extra):
    (tmp_path / "CONFIG").write_text("model: {}\n")
    synth = run(core, "synth", tmp_path, "--width", 512, "--height", 512, "--tumours", 0,
                "--seed", 1)
    assert synth.returncode == 0, synth.stderr
    names = {"CONFIG": tmp_path / "CONFIG", "SLIDE": tmp_path / "synth_1.tif",
             "INDEX": tmp_path, "OUT": tmp_path / "demo"}
    done = run(core, *[names.get(a, a) for a in args], cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'exaslide[{extra}]'" in lines[0], lines
    assert not (tmp_path / "demo").exists()  # refused before any work


def test_core_install_size_is_reported(core):
    """Not a limit: the size goes into docs/install.md (printed with -s)."""
    site = next((core.parent / "lib").glob("python3*/site-packages"))
    total = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
    print(f"core install: {total / 2**20:.0f} MiB in {site}")
    assert total < 1.5 * 2**30  # the whole of [all] is several GiB
    assert sys.version_info >= (3, 11)
