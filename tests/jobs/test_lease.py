"""The output lease on an object store (S3 on a local moto server)."""

from __future__ import annotations

import json
import time

import fsspec
import pytest

from exaslide.jobs.lease import ObjectLease, ttl_seconds
from exaslide.jobs.lock import OutputLockedError
from exaslide.jobs.stage import JobError


def lease(url: str, rank=None) -> ObjectLease:
    fs, root = fsspec.core.url_to_fs(url)
    return ObjectLease(fs, root, url, rank)


def test_one_plain_run_or_the_ranks_of_one_job(s3):
    out = f"{s3}/run"
    with lease(out):
        with pytest.raises(OutputLockedError, match="another exaslide run is writing"):
            lease(out).__enter__()
        with pytest.raises(OutputLockedError):
            lease(out, rank=0).__enter__()
    with lease(out, rank=0), lease(out, rank=1):  # ranks share the folder
        with pytest.raises(OutputLockedError, match="rank 1"):
            lease(out, rank=1).__enter__()  # not the same rank twice
        with pytest.raises(OutputLockedError):
            lease(out).__enter__()  # nor a plain run beside them
    fs, root = fsspec.core.url_to_fs(out)
    fs.invalidate_cache()
    assert not fs.find(root)  # every lease deleted at the end


def test_renewal_keeps_it_and_a_takeover_is_noticed(s3, monkeypatch):
    monkeypatch.setenv("EXASLIDE_LEASE_SECONDS", "3")
    out = f"{s3}/run"
    fs, root = fsspec.core.url_to_fs(out)
    with lease(out) as held:
        first = json.loads(fs.cat_file(f"{root}/.exaslide.lock.json"))["expires"]
        time.sleep(2.5)  # renewed every second
        assert json.loads(fs.cat_file(f"{root}/.exaslide.lock.json"))["expires"] > first
        held.check()
        # another run took the folder (as after this one stalled past its expiry)
        fs.pipe_file(f"{root}/.exaslide.lock.json", json.dumps(
            {"owner": "other", "host": "h", "pid": 1, "started": "s",
             "expires": time.time() + 60, "rank": None}).encode())
        deadline = time.monotonic() + 5
        while not held.lost and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(JobError, match="lost its output lease"):
            held.check()
    # the other run's lease is left alone
    assert json.loads(fs.cat_file(f"{root}/.exaslide.lock.json"))["owner"] == "other"


def test_a_bad_lease_time_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("EXASLIDE_LEASE_SECONDS", "soon")
    with pytest.raises(JobError, match="not a number"):
        ttl_seconds()
    monkeypatch.setenv("EXASLIDE_LEASE_SECONDS", "0.1")
    with pytest.raises(JobError, match="2 to 86400"):
        ttl_seconds()


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2]", b'{"owner": "x", "expires": "tomorrow"}',
    b'{"owner": "x", "expires": NaN}', b'{"owner": "x", "expires": 1e308}',
    b'{"owner": "x", "expires": {"a": 1}}',
])
def test_a_forged_or_garbled_lease_is_replaced_not_trusted(s3, body):
    out = f"{s3}/run"
    fs, root = fsspec.core.url_to_fs(out)
    fs.pipe_file(f"{root}/.exaslide.lock.json", body)
    with lease(out) as held:
        assert json.loads(fs.cat_file(f"{root}/.exaslide.lock.json"))["owner"] == held.token
