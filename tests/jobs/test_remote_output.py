"""The job engine writing into an object store (S3 on a local moto server): outputs equal
a local run's, resume against the remote status, the lease, corruption detection, faults
(403, throttling, a store that goes away mid-upload), no secret anywhere, and a Dask
cluster whose workers share nothing with the driver but the bucket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exaslide.synth import SynthSpec, make_cohort
from object_stores import client_env, grep_secrets

EXTRACT = ["extract", "--patch-size", "64", "--materialize", "png", "--shard-size", "60",
           "--min-tissue", "0.3", "--scheduler", "inline"]


def exaslide(*args, env, timeout=180):
    return subprocess.run([sys.executable, "-m", "exaslide", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def files_of(folder: Path) -> dict[str, bytes]:
    """A local output folder's files (not status files, locks or hidden files)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.parts)
            and "status" not in p.name and p.parent.name != "status"}


def remote_files(url: str) -> dict[str, bytes]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    out = {}
    for path in sorted(fs.find(root)):
        name = path[len(root.rstrip("/")) + 1:]
        if name.startswith(".") or name.startswith("status/") or "status" in name:
            continue
        out[name] = fs.cat_file(path)
    return out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two synthetic slides with their manifest, and their local extraction."""
    root = tmp_path_factory.mktemp("remote-cohort")
    manifest = make_cohort(root / "cohort", 2, tumour_fraction=1.0, seed=5,
                           base=SynthSpec(width=1536, height=1024, tumours=2))
    env = dict(os.environ, EXASLIDE_CACHE_DIR=str(root / "cache"))
    done = exaslide(*EXTRACT, manifest, "--out", root / "local", env=env)
    assert done.returncode == 0, done.stderr
    return manifest, files_of(root / "local"), root / "local"


@pytest.fixture
def env(s3_server, tmp_path):
    """An exaslide process's environment for the S3 server, with its own cache."""
    return client_env(s3_server, EXASLIDE_CACHE_DIR=str(tmp_path / "cache"))


def test_extract_to_s3_equals_local_and_resumes_from_the_remote_status(s3, s3_server, env,
                                                                       cohort, tmp_path):
    manifest, local, _ = cohort
    out = f"{s3}/run"
    first = exaslide(*EXTRACT, manifest, "--out", out, env=env)
    assert first.returncode == 0, first.stderr
    assert f"index: {out}/index" in first.stdout
    assert remote_files(out) == local
    statuses = remote_files_raw(out, "status/")
    assert set(statuses) == {"status/synth_000.json", "status/synth_001.json"}
    status = json.loads(statuses["status/synth_000.json"])
    assert status["status"] == "done"
    assert set(status["checksums"]) == set(status["outputs"])
    assert all(len(c["sha256"]) == 64 and c["etag"] for c in status["checksums"].values())

    again = exaslide(*EXTRACT, manifest, "--out", out, env=env)
    assert again.returncode == 0, again.stderr
    assert "2 already done" in again.stdout
    # the staging folder is gone, and the disk cache is still a cache
    assert not (tmp_path / "cache-staging").exists()
    assert exaslide("cache", "info", env=env).returncode == 0
    leftovers = grep_secrets([tmp_path], first.stdout + first.stderr + again.stdout +
                             again.stderr + json.dumps(remote_files_raw(out, "").keys()
                                                       .__repr__()), s3_server.secrets)
    assert not leftovers
    assert not [k for k in remote_files_raw(out, "") if "secret" in k.lower()]
    for name, data in remote_files_raw(out, "").items():  # nothing written holds a secret
        assert not any(s.encode() in data for s in s3_server.secrets), name


def remote_files_raw(url: str, prefix: str) -> dict[str, bytes]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    root = root.rstrip("/")
    return {p[len(root) + 1:]: fs.cat_file(p) for p in sorted(fs.find(root))
            if p[len(root) + 1:].startswith(prefix)}


def test_an_object_corrupted_in_the_bucket_is_detected_and_redone(s3, env, cohort):
    import fsspec

    manifest, local, _ = cohort
    out = f"{s3}/run"
    assert exaslide(*EXTRACT, manifest, "--out", out, env=env).returncode == 0
    fs, root = fsspec.core.url_to_fs(out)
    shard = sorted(n for n in local if n.startswith("shards/synth_001"))[0]
    data = bytearray(fs.cat_file(f"{root}/{shard}"))
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    fs.pipe_file(f"{root}/{shard}", bytes(data))
    rerun = exaslide(*EXTRACT, manifest, "--out", out, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 done, 1 already done" in rerun.stdout
    assert remote_files(out) == local


def test_the_lease_refuses_a_second_run_and_expires_after_a_killed_one(s3, env, cohort):
    import fsspec

    manifest, *_ = cohort
    out = f"{s3}/run"
    fs, root = fsspec.core.url_to_fs(out)
    holder = {"owner": "someone", "host": "node7", "pid": 4242, "started": "now",
              "expires": time.time() + 600, "rank": None}
    fs.pipe_file(f"{root}/.exaslide.lock.json", json.dumps(holder).encode())
    done = exaslide(*EXTRACT, manifest, "--out", out, env=env)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "another exaslide run is writing here" in line and "pid 4242 on node7" in line
    assert not [p for p in fs.find(root) if "/status/" in p]  # nothing written
    holder["expires"] = time.time() - 1  # a killed run's lease, expired
    fs.pipe_file(f"{root}/.exaslide.lock.json", json.dumps(holder).encode())
    done = exaslide(*EXTRACT, manifest, "--out", out, env=env)
    assert done.returncode == 0, done.stderr
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/.exaslide.lock.json")  # released at the end


def test_two_runs_at_once_one_wins(s3, env, cohort, tmp_path):
    manifest, local, _ = cohort
    out = f"{s3}/run"
    runs = [subprocess.Popen([sys.executable, "-m", "exaslide", *EXTRACT, str(manifest),
                              "--out", out], env=dict(env, EXASLIDE_CACHE_DIR=str(
                                  tmp_path / f"cache{i}")), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [(r.wait(180), r.stderr.read()) for r in runs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # the loser stops; none corrupts the other
    if codes == [0, 2]:
        assert any("another exaslide run is writing here" in err for _, err in results)
    assert remote_files(out) == local


def test_missing_bucket_and_http_out_are_one_line_errors(s3, env, cohort):
    manifest, *_ = cohort
    done = exaslide(*EXTRACT, manifest, "--out", "s3://no-such-bucket-exaslide/run", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "s3://no-such-bucket-exaslide" in lines[0] and "does not exist" in lines[0]
    done = exaslide(*EXTRACT, manifest, "--out", "https://example.org/run", env=env)
    assert done.returncode == 2 and "cannot be an output folder" in done.stderr


def small_model(path: Path, size: int, level: int) -> Path:
    """A small-cnn with random weights saved for ``size``-px patches at ``level``."""
    from exaslide.models import create_model, save_model

    return save_model(path, create_model("small-cnn", num_classes=2),
                      {"classes": ["normal", "tumour"],
                       "patch": {"size": size, "level": level, "mpp": None},
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})


def test_access_denied_and_throttling_give_one_line_per_slide(s3, env, cohort, s3_proxy,
                                                              s3_server):
    manifest, local, _ = cohort
    out = f"{s3}/run"
    through = dict(env, AWS_ENDPOINT_URL=s3_proxy.endpoint)
    s3_proxy.always.append(("PUT", "/shards/synth_001", 403, "AccessDenied"))
    done = exaslide(*EXTRACT, manifest, "--out", out, env=through)
    assert done.returncode != 0
    failed = [line for line in done.stdout.splitlines() + done.stderr.splitlines()
              if "synth_001" in line and "access denied (403)" in line]
    assert failed, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert not grep_secrets([], done.stdout + done.stderr, s3_server.secrets)
    assert "1 done" in done.stdout  # the batch went on

    s3_proxy.always.clear()
    for _ in range(3):  # throttled three times, then served: the retries get through
        s3_proxy.fail.append(("PUT", "/shards/synth_001", 503, "SlowDown"))
    done = exaslide(*EXTRACT, manifest, "--out", out, env=through)
    assert done.returncode == 0, done.stderr
    assert sum(status == 503 for _, _, status in s3_proxy.requests) == 3
    assert remote_files(out) == local


def test_a_store_that_goes_away_mid_upload_then_a_rerun_equals_a_clean_run(
        s3, env, cohort, s3_proxy):
    manifest, local, _ = cohort
    out = f"{s3}/run"
    through = dict(env, AWS_ENDPOINT_URL=s3_proxy.endpoint, AWS_MAX_ATTEMPTS="2")
    s3_proxy.cut_after_bytes = 40_000  # the store stops answering part-way through the shards
    done = exaslide(*EXTRACT, manifest, "--out", out, env=through, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    s3_proxy.cut_after_bytes = None  # the store is back
    again = exaslide(*EXTRACT, manifest, "--out", out, env=through, timeout=300)
    assert again.returncode == 0, again.stderr
    assert remote_files(out) == local


def test_mask_to_s3_equals_local(s3, env, cohort, tmp_path):
    manifest, *_ = cohort
    done = exaslide("mask", "--manifest", manifest, "--mpp", "8", "--out",
                    tmp_path / "masks", env=env)
    assert done.returncode == 0, done.stderr
    done = exaslide("mask", "--manifest", manifest, "--mpp", "8", "--out", f"{s3}/masks",
                    env=env)
    assert done.returncode == 0, done.stderr
    remote, local = remote_files(f"{s3}/masks"), files_of(tmp_path / "masks")
    assert set(remote) == set(local) and len(local) >= 10
    for name in local:  # the summaries differ only by the time taken
        if name.endswith("_summary.json"):
            remote[name], local[name] = (dict(json.loads(x), seconds=0)
                                         for x in (remote[name], local[name]))
    assert remote == local


@contextlib.contextmanager
def isolated_cluster(tmp_path: Path, hidden: Path, env: dict, workers: int = 2):
    """A ``dask scheduler`` and ``dask worker`` processes, each worker with its own cache
    and scratch folders and, in its own mount namespace, an empty file system mounted over
    ``hidden`` (the driver's staging folder): the workers share nothing with the driver but the
    bucket."""
    dask = Path(sys.executable).with_name("dask")
    if os.geteuid() != 0 or subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "true"],
            capture_output=True).returncode != 0:
        pytest.skip("needs unshare --mount (root) to hide the driver's files from workers")
    info = tmp_path / "scheduler.json"
    base = dict(env, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
             "start_new_session": True}
    procs = [subprocess.Popen([str(dask), "scheduler", "--scheduler-file", str(info),
                               "--port", "0", "--no-dashboard"], env=base, **quiet)]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        hidden.mkdir(parents=True, exist_ok=True)
        for i in range(workers):
            own = tmp_path / f"worker{i}"
            (own / "tmp").mkdir(parents=True)
            script = (f"mount -t tmpfs none {hidden} && exec {dask} worker {address} "
                      f"--nthreads 1 --no-dashboard --local-directory {own / 'dask'}")
            procs.append(subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                env=dict(base, EXASLIDE_CACHE_DIR=str(own / "cache"), TMPDIR=str(own / "tmp")),
                **quiet))
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_dask_workers_that_share_only_the_bucket(s3, s3_server, cohort, tmp_path, s3_proxy):
    import fsspec

    manifest, local, _ = cohort
    fs, _ = fsspec.core.url_to_fs(s3)
    fs.put(str(Path(manifest).parent), f"{s3[5:]}/cohort", recursive=True)
    remote_manifest = f"{s3}/cohort/{Path(manifest).name}"
    driver_staging = tmp_path / "driver-staging"
    env = client_env(s3_server, EXASLIDE_CACHE_DIR=str(tmp_path / "driver-cache"),
                     EXASLIDE_STAGING_DIR=str(driver_staging))
    workers_env = dict(env, AWS_ENDPOINT_URL=s3_proxy.endpoint)  # to see what they upload
    with isolated_cluster(tmp_path, driver_staging, workers_env) as address:
        done = exaslide(*EXTRACT[:-2], remote_manifest, "--out", f"{s3}/run",
                        "--scheduler", address, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert remote_files(f"{s3}/run") == local
    assert not fs.exists(f"{s3[5:]}/run/.partial")
    # the workers could not see the driver's staging folder: they sent their files
    # through the bucket
    assert any(method == "PUT" and "/run/.partial/" in path
               for method, path, _ in s3_proxy.requests)


def test_extract_round_trip_on_every_store(object_store, cohort, tmp_path):
    """Write, resume and read back on S3, Azure Blob (Azurite) and GCS (fake-gcs-server)."""
    manifest, local, _ = cohort
    env = client_env(object_store.server, EXASLIDE_CACHE_DIR=str(tmp_path / "cache"))
    out = f"{object_store.url}/run"
    first = exaslide(*EXTRACT, manifest, "--out", out, env=env)
    assert first.returncode == 0, first.stderr
    assert remote_files(out) == local
    again = exaslide(*EXTRACT, manifest, "--out", out, env=env)
    assert again.returncode == 0 and "2 already done" in again.stdout, again.stderr
    assert not grep_secrets([tmp_path], first.stdout + first.stderr + again.stdout +
                            again.stderr, object_store.server.secrets)


def test_infer_with_a_model_in_s3_into_s3_equals_local(s3, env, tmp_path, synth_slide):
    import fsspec

    model = small_model(tmp_path / "model.pt", size=32, level=2)
    fs, _ = fsspec.core.url_to_fs(s3)
    for path in (model, Path(f"{model}.sha256")):
        fs.put_file(str(path), f"{s3[5:]}/models/{path.name}")
    args = ["--batch-size", 4, "--workers", 0]
    done = exaslide("infer", model, synth_slide.path, "--out", tmp_path / "local", *args,
                    env=env)
    assert done.returncode == 0, done.stderr
    done = exaslide("infer", f"{s3}/models/model.pt", synth_slide.path, "--out",
                    f"{s3}/heatmaps", *args, env=env)
    assert done.returncode == 0, done.stderr
    assert f"heatmaps in {s3}/heatmaps" in done.stdout
    remote, local = remote_files(f"{s3}/heatmaps"), files_of(tmp_path / "local")
    assert set(remote) == set(local) and local
    for name in local:
        if not name.endswith(".json"):  # .json: with the model's path and timings
            assert remote[name] == local[name], name
    again = exaslide("infer", f"{s3}/models/model.pt", synth_slide.path, "--out",
                     f"{s3}/heatmaps", *args, env=env)
    assert again.returncode == 0 and "1 already done" in again.stdout, again.stderr


def test_embed_from_an_s3_extraction_into_s3_equals_local(s3, env, extracted, tmp_path):
    import fsspec

    model = small_model(tmp_path / "model.pt", size=64, level=0)
    fs, _ = fsspec.core.url_to_fs(s3)
    fs.put(str(extracted), f"{s3[5:]}/extracted", recursive=True)
    args = ["--split", "val", "--workers", "0", "--batch-size", "64"]
    done = exaslide("embed", "patches", model, extracted, "--out", tmp_path / "local",
                    *args, env=env)
    assert done.returncode == 0, done.stderr
    done = exaslide("embed", "patches", model, f"{s3}/extracted", "--out",
                    f"{s3}/store", *args, env=env)
    assert done.returncode == 0, done.stderr
    remote, local = remote_files(f"{s3}/store"), files_of(tmp_path / "local")
    assert set(remote) == set(local) and any(n.startswith("parts/") for n in local)
    for name in local:
        if name != "embeddings.json" and not name.startswith("embeddings.json"):
            assert remote[name] == local[name], name
    again = exaslide("embed", "patches", model, f"{s3}/extracted", "--out",
                     f"{s3}/store", *args, env=env)
    assert again.returncode == 0 and "already done" in again.stdout, again.stderr


@pytest.mark.parametrize("source", ["slides", "shards"])
def test_training_on_an_s3_extraction_equals_training_on_the_local_one(s3, env, cohort,
                                                                      tmp_path, source):
    """``exaslide extract --out s3://...``, then SlidePatchDataset / ShardDataset on the
    bucket train the model exactly as on the local folder (same weights)."""
    pytest.importorskip("torch")
    from exaslide.train import TrainConfig, train

    manifest, _, local_dir = cohort
    out = f"{s3}/run"
    done = exaslide(*EXTRACT, manifest, "--out", out, env=env)
    assert done.returncode == 0, done.stderr
    results = []
    for data in (str(local_dir), out + "/"):
        config = TrainConfig(data=data, out=str(tmp_path / f"train-{len(results)}"),
                             model="small-cnn", patch_size=None, epochs=1, batch_size=16,
                             workers=0, max_steps=3, lr=0.001, seed=1, patience=None,
                             source=source, train_split="val", val_split="val")
        results.append(train(config, progress=False))
    assert results[0].weights_digest == results[1].weights_digest


def test_a_forged_remote_status_cannot_delete_objects_outside_the_slide(s3, env, cohort):
    """A status object lists the files a redo deletes: names that escape the folder, hide,
    belong to another slide or are status files are refused (and kept)."""
    import fsspec

    manifest, *_ = cohort
    out = f"{s3}/run"
    assert exaslide(*EXTRACT, manifest, "--out", out, env=env).returncode == 0
    fs, root = fsspec.core.url_to_fs(out)
    bucket = root.split("/")[0]
    fs.pipe_file(f"{bucket}/victim.txt", b"keep me")
    fs.pipe_file(f"{root}/.hidden", b"keep me")
    status = json.loads(fs.cat_file(f"{root}/status/synth_000.json"))
    status["status"] = "failed"  # so that the rerun redoes (and first clears) the slide
    status["outputs"] = {"../victim.txt": 7, ".hidden": 7, "status/synth_001.json": 1,
                         "index/synth_001.parquet": 1}
    fs.pipe_file(f"{root}/status/synth_000.json", json.dumps(status).encode())
    done = exaslide(*EXTRACT, manifest, "--out", out, env=env)
    assert done.returncode == 0, done.stderr
    assert "not deleting" in done.stderr
    fs.invalidate_cache()
    for kept in (f"{bucket}/victim.txt", f"{root}/.hidden", f"{root}/status/synth_001.json",
                 f"{root}/index/synth_001.parquet"):
        assert fs.exists(kept), kept
