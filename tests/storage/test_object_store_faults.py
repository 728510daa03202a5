"""Reading from S3 (a local moto server) when it goes wrong: expired credentials and
throttling past the retries give one line; presigned URLs work and leave no signature in
anything exaslide writes or prints."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import fsspec
import pytest

from exaslide.manifest import write_manifest
from exaslide.synth import SynthSpec, write_synthetic_slide
from object_stores import S3_KEY_ID, client_env, grep_secrets


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault-slide")
    return write_synthetic_slide(folder / "slide.tif", SynthSpec(width=1024, height=768,
                                                                 tumours=1, seed=2))


@pytest.fixture
def uploaded(s3, slide):
    fs, root = fsspec.core.url_to_fs(s3)
    for path in (slide.path, slide.path.with_suffix(".xml")):
        fs.put_file(str(path), f"{root}/{path.name}")
    return s3


def run(server, tmp_path, *args, **env):
    return subprocess.run([sys.executable, "-m", "exaslide", *map(str, args)],
                          capture_output=True, text=True, timeout=180,
                          env=client_env(server, EXASLIDE_CACHE_DIR=str(tmp_path / "cache"),
                                         **env))


def one_line(done) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_expired_credentials_are_one_line(uploaded, s3_server, s3_proxy, tmp_path):
    """S3 answers an expired token with 400 (and the code ExpiredToken in the body, which
    a HEAD request has none of)."""
    s3_proxy.always.append(("HEAD", "/slide.tif", 400, "ExpiredToken"))
    done = run(s3_server, tmp_path, "info", f"{uploaded}/slide.tif",
               AWS_ENDPOINT_URL=s3_proxy.endpoint)
    line = one_line(done)
    assert f"{uploaded}/slide.tif" in line and "expired or malformed credentials" in line
    s3_proxy.always[:] = [("GET", "/slide.xml", 400, "ExpiredToken")]
    done = run(s3_server, tmp_path, "mask", f"{uploaded}/slide.tif", "--annotations",
               f"{uploaded}/slide.xml", "--mpp", 8, "--out", tmp_path / "mask",
               AWS_ENDPOINT_URL=s3_proxy.endpoint)
    line = one_line(done)
    assert f"{uploaded}/slide.xml" in line and "credentials have expired" in line


def test_throttling_past_the_retries_is_one_line_and_bounded(uploaded, s3_server, s3_proxy,
                                                              tmp_path):
    s3_proxy.always.append(("*", "/slide.tif", 503, "SlowDown"))
    started = time.monotonic()
    done = run(s3_server, tmp_path, "info", f"{uploaded}/slide.tif",
               AWS_ENDPOINT_URL=s3_proxy.endpoint, AWS_MAX_ATTEMPTS="3")
    line = one_line(done)
    assert f"{uploaded}/slide.tif" in line and "throttling" in line
    throttled = sum(status == 503 for _, _, status in s3_proxy.requests)
    assert 1 <= throttled <= 3 * 6  # a bounded number of tries (s3fs retries botocore's)
    assert time.monotonic() - started < 120


@pytest.mark.parametrize("version", ["s3v4", "s3"])  # V4 (X-Amz-*) and V2 (Signature)
def test_presigned_urls_read_and_leave_no_signature(uploaded, s3_server, slide, tmp_path,
                                                    version):
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                          config=Config(signature_version=version),
                          **{"aws_access_key_id": S3_KEY_ID,
                             "aws_secret_access_key": s3_server.secrets[0]})
    bucket = uploaded[len("s3://"):]
    signed = {name: client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": name}, ExpiresIn=3600)
        for name in ("slide.tif", "slide.xml")}
    query = dict(parse_qsl(urlsplit(signed["slide.tif"]).query))
    signature = query.get("X-Amz-Signature") or query["Signature"]
    manifest = write_manifest(tmp_path / "cohort.csv", [
        {"slide_id": "signed", "path": signed["slide.tif"],
         "annotation": signed["slide.xml"], "label": "tumour", "split": "train"}])
    out = tmp_path / "out"
    done = run(s3_server, tmp_path, "extract", manifest, "--out", out, "--patch-size", 64,
               "--min-tissue", "0.3", "--scheduler", "inline")
    assert done.returncode == 0, done.stderr
    again = run(s3_server, tmp_path, "extract", manifest, "--out", out, "--patch-size", 64,
                "--min-tissue", "0.3", "--scheduler", "inline")
    assert again.returncode == 0 and "1 already done" in again.stdout, again.stderr
    status = (out / "status" / "signed.json").read_text()
    assert f"http://127.0.0.1:{s3_server.port}/{bucket}/slide.tif" in status
    secrets = (signature, "X-Amz-Signature", "X-Amz-Credential", "AWSAccessKeyId", S3_KEY_ID,
               *s3_server.secrets)
    assert not grep_secrets([out, tmp_path / "cache"], done.stdout + done.stderr +
                            again.stdout + again.stderr, secrets)
    assert Path(tmp_path / "cache").is_dir()


def test_an_azure_sas_url_reads_and_leaves_no_signature(az, azure_server, slide, tmp_path):
    """A blob URL with a SAS token (Azurite) is read over HTTP like any URL; the token is
    in no file exaslide writes and no line it prints."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    from object_stores import AZURE_ACCOUNT, AZURE_KEY

    container = az[len("az://"):]
    client = azure_server.client()
    for path in (slide.path, slide.path.with_suffix(".xml")):
        with open(path, "rb") as fh:
            client.get_blob_client(container, path.name).upload_blob(fh)
    expiry = datetime.now(UTC) + timedelta(hours=1)
    signed = {}
    for name in ("slide.tif", "slide.xml"):
        token = generate_blob_sas(AZURE_ACCOUNT, container, name, account_key=AZURE_KEY,
                                  permission=BlobSasPermissions(read=True), expiry=expiry)
        signed[name] = f"{azure_server.endpoint}/{AZURE_ACCOUNT}/{container}/{name}?{token}"
    sig = dict(parse_qsl(urlsplit(signed["slide.tif"]).query))["sig"]
    manifest = write_manifest(tmp_path / "cohort.csv", [
        {"slide_id": "sas", "path": signed["slide.tif"], "annotation": signed["slide.xml"],
         "label": "tumour", "split": "train"}])
    out = tmp_path / "out"
    done = run(azure_server, tmp_path, "extract", manifest, "--out", out, "--patch-size", 64,
               "--min-tissue", "0.3", "--scheduler", "inline")
    assert done.returncode == 0, done.stderr
    assert "1 done" in done.stdout
    status = (out / "status" / "sas.json").read_text()
    assert f"/{container}/slide.tif" in status and "sig=" not in status
    assert not grep_secrets([out, tmp_path / "cache"], done.stdout + done.stderr,
                            (sig, AZURE_KEY))
