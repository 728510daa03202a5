"""Reading from the three object stores through exaslide's public API: S3 (moto), Azure
Blob (Azurite) and Google Cloud Storage (fake-gcs-server), each a real server on
127.0.0.1 (``object_store`` in tests/object_stores.py; a store whose server cannot start
skips). A synthetic slide, its ASAP XML and a manifest are uploaded with the store's
fsspec file system, then read back by URL and compared with the local files."""

from __future__ import annotations

import subprocess
import sys

import fsspec
import numpy as np
import pytest

from exaslide.annotations import read_annotations
from exaslide.manifest import read_manifest, write_manifest
from exaslide.slides import open_slide
from exaslide.synth import SynthSpec, write_synthetic_slide
from object_stores import client_env, grep_secrets


@pytest.fixture(scope="module")
def local_slide(tmp_path_factory):
    """A 1024 x 768 synthetic slide (2 levels, 2 tumours), its XML and a manifest naming
    both by relative paths."""
    folder = tmp_path_factory.mktemp("local")
    written = write_synthetic_slide(folder / "slide.tif",
                                    SynthSpec(width=1024, height=768, tumours=2, seed=11))
    assert written.path == folder / "slide.tif" and written.path.is_file()
    assert written.annotation_path == folder / "slide.xml"
    assert written.annotation_path.is_file()
    assert written.level_dimensions == [(1024, 768), (256, 192)]
    xml = written.annotation_path.read_text(encoding="utf-8")
    assert xml.startswith("<?xml") and "<ASAP_Annotations>" in xml
    labels = [a.label for a in read_annotations(written.annotation_path).annotations]
    assert xml.count("<Annotation ") == len(labels) and labels.count("tumour") == 2, labels
    write_manifest(folder / "cohort.csv", [
        {"slide_id": "s1", "path": "slide.tif", "annotation": "slide.xml",
         "label": "tumour", "split": "train"}])
    return written


def _upload(url: str, written) -> dict[str, str]:
    """Put the slide, its XML and the manifest under the bucket ``url``; their URLs."""
    fs, root = fsspec.core.url_to_fs(url)
    urls = {}
    for name in ("slide.tif", "slide.xml", "cohort.csv"):
        fs.put_file(str(written.path.parent / name), f"{root}/{name}")
        urls[name] = f"{url}/{name}"
    fs.invalidate_cache()
    assert fs.info(f"{root}/slide.tif")["size"] == written.path.stat().st_size
    return urls


def _shapes(annotations) -> list[tuple[str, str, str]]:
    return [(a.label, a.name, a.geometry.wkt) for a in annotations.annotations]


def test_slide_annotation_and_manifest_round_trip(object_store, local_slide):
    urls = _upload(object_store.url, local_slide)
    with open_slide(urls["slide.tif"]) as remote, open_slide(local_slide.path) as local:
        assert remote.path == urls["slide.tif"]
        assert remote.level_dimensions == local.level_dimensions
        assert len(remote.level_dimensions) == 2
        for level, location, size in ((0, (300, 200), (400, 300)), (1, (0, 0), (256, 192))):
            np.testing.assert_array_equal(remote.read_region(location, size, level=level),
                                          local.read_region(location, size, level=level))
    remote_xml = read_annotations(urls["slide.xml"])
    local_xml = read_annotations(local_slide.annotation_path)
    assert remote_xml.path == urls["slide.xml"]
    assert _shapes(remote_xml) == _shapes(local_xml) and len(_shapes(local_xml)) >= 2
    [entry] = read_manifest(urls["cohort.csv"])
    assert (entry.slide_id, entry.path, entry.annotation, entry.label) == \
        ("s1", urls["slide.tif"], urls["slide.xml"], "tumour")
    with open_slide(entry.path) as again:  # the manifest's URL opens the same slide
        assert again.dimensions == (1024, 768)


def test_abfs_is_the_same_container_as_az(az, local_slide):
    urls = _upload(az, local_slide)
    abfs = urls["slide.tif"].replace("az://", "abfs://", 1)
    with open_slide(abfs) as remote, open_slide(local_slide.path) as local:
        np.testing.assert_array_equal(remote.read_region((100, 100), (256, 256)),
                                      local.read_region((100, 100), (256, 256)))


def _cli(server, cache, *args):
    return subprocess.run([sys.executable, "-m", "exaslide", *args], capture_output=True,
                          text=True, timeout=120,
                          env=client_env(server, EXASLIDE_CACHE_DIR=str(cache)))


def test_cli_info_prints_no_secret(object_store, local_slide, tmp_path):
    urls = _upload(object_store.url, local_slide)
    cache = tmp_path / "cli-cache"
    done = _cli(object_store.server, cache, "info", urls["slide.tif"])
    assert done.returncode == 0, done.stderr
    assert urls["slide.tif"] in done.stdout
    assert "size 1024 x 768" in done.stdout and "level 1: 256 x 192" in done.stdout
    assert not grep_secrets([cache], done.stdout + done.stderr, object_store.server.secrets)


def test_missing_object_and_missing_bucket_are_one_line_errors(object_store, tmp_path):
    scheme = object_store.scheme
    missing_object = f"{object_store.url}/no-such-slide.tif"
    missing_bucket = f"{scheme}://exaslide-no-such-bucket-0000/slide.tif"
    for url in (missing_object, missing_bucket):
        done = _cli(object_store.server, tmp_path / "cache", "info", url)
        assert done.returncode == 2, (url, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and url in lines[0], (url, done.stderr)
        why = "no such remote file" if url == missing_object else "bucket (or container)"
        assert why in lines[0], lines[0]
        assert not grep_secrets([], done.stdout + done.stderr, object_store.server.secrets)


def test_multipart_upload_then_ranged_reads(object_store):
    """A file written in 5 MiB parts (S3 multipart, Azure blocks, GCS resumable upload)
    reads back through exaslide's block cache, across part boundaries."""
    from exaslide.storage import open_file

    data = np.random.default_rng(3).integers(0, 256, 11 << 20, dtype=np.uint8).tobytes()
    fs, root = fsspec.core.url_to_fs(object_store.url)
    with fs.open(f"{root}/big.bin", "wb", block_size=5 << 20) as out:
        for start in range(0, len(data), 3 << 20):
            out.write(data[start:start + (3 << 20)])
    with open_file(f"{object_store.url}/big.bin") as remote:
        assert remote.size == len(data)
        for offset in (0, (5 << 20) - 7, (10 << 20) + 3, len(data) - 100):
            assert remote.pread(4096, offset) == data[offset:offset + 4096]
