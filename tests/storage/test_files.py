"""open_file / local_copy / RemoteFile, and URLs in manifests, annotations and the
resume fingerprint (over the test HTTP server)."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from exaslide.errors import StorageError
from exaslide.storage import (
    DiskCache,
    RemoteFile,
    io_stats,
    local_copy,
    open_file,
    reset_io_stats,
)


@pytest.fixture
def blob(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    (tmp_path / "blob.bin").write_bytes(data)
    return tmp_path / "blob.bin", data


def test_remote_file_reads_like_a_local_file(server, blob):
    path, data = blob
    url = server.publish(path)
    with open_file(url) as fh:
        assert isinstance(fh, RemoteFile) and fh.size == len(data)
        fh.seek(1_000_000)
        assert fh.read(10) == data[1_000_000:1_000_010] and fh.tell() == 1_000_010
        fh.seek(-5, io.SEEK_END)
        assert fh.read() == data[-5:] and fh.read(10) == b""
        assert fh.pread(600_000, 100_000) == data[100_000:700_000]  # across three blocks
        buffer = bytearray(7)
        fh.seek(42)
        assert fh.readinto(buffer) == 7 and bytes(buffer) == data[42:49]
        fetched = fh.bytes_fetched
        assert fetched == server.sent() and fetched < len(data)
        fh.pread(10, 100_005)  # cached
        assert fh.bytes_fetched == fetched
    with open_file(path) as local:  # local paths: a plain file
        assert local.read(3) == data[:3]


def test_threads_share_one_remote_file(server, blob):
    path, data = blob
    with RemoteFile(server.publish(path)) as fh:
        offsets = list(range(0, len(data) - 5000, 37_000))
        with ThreadPoolExecutor(8) as pool:
            chunks = list(pool.map(lambda o: fh.pread(5000, o), offsets))
        assert all(c == data[o : o + 5000] for c, o in zip(chunks, offsets, strict=True))
        assert server.sent() == len(data)  # each block fetched once, whatever the threads
        fh.prefetch([(0, len(data))])
        assert server.sent() == len(data)


def test_local_copy_reuses_cached_blocks(server, blob):
    path, data = blob
    url = server.publish(path)
    with open_file(url) as fh:
        fh.pread(10, 0)
    first = server.sent()
    copy = local_copy(url)
    assert copy.read_bytes() == data and copy.name == "blob.bin"
    assert server.sent() == len(data)  # the block already cached was not fetched again
    assert first > 0 and local_copy(url) == copy and server.sent() == len(data)
    assert local_copy(path) == path
    [entry] = DiskCache().entries()
    assert entry.whole_file and entry.cached_bytes == len(data)  # blocks dropped


def test_remote_files_are_read_only(server, blob):
    with pytest.raises(StorageError, match="read-only"):
        open_file(server.publish(blob[0]), "wb")


def test_manifest_annotations_and_fingerprint_from_urls(server, synth_slide, tmp_path):
    from exaslide.annotations import read_annotations
    from exaslide.manifest import read_manifest
    from exaslide.masks.run import input_fingerprint

    server.publish(synth_slide.path)
    xml_url = server.publish(synth_slide.annotation_path, "slide.xml")
    (server.folder / "manifest.csv").write_text(
        "slide_id,path,annotation,label,split\n"
        "s1,slide.tif,slide.xml,tumour,train\n"
        "s2,https://elsewhere.org/b.svs,,normal,test\n")
    entries = read_manifest(server.url("manifest.csv"))
    assert entries[0].path == server.url("slide.tif") and entries[0].annotation == xml_url
    assert entries[1].path == "https://elsewhere.org/b.svs" and entries[1].annotation is None
    remote = read_annotations(xml_url)
    local = read_annotations(synth_slide.annotation_path)
    assert remote.path == xml_url and len(remote) == len(local) > 0
    assert [a.geometry.wkb for a in remote] == [a.geometry.wkb for a in local]
    sent = server.sent()
    fingerprint = input_fingerprint(entries[0].path, entries[0].annotation)
    assert server.sent() == sent  # HEAD requests only
    assert fingerprint["slide"]["size"] == os.path.getsize(synth_slide.path)
    assert fingerprint["slide"]["etag"] and fingerprint["slide"]["path"] == entries[0].path
    server.replace("slide.xml", synth_slide.annotation_path.read_bytes() + b"\n")
    assert input_fingerprint(entries[0].path, entries[0].annotation) != fingerprint
    (tmp_path / "bad.xml").write_text("<ASAP_Annotations><Annotations>")
    from exaslide.errors import AnnotationError

    with pytest.raises(AnnotationError, match=r"http://127\.0\.0\.1:\d+/bad\.xml"):
        read_annotations(server.publish(tmp_path / "bad.xml"))


def test_storage_options_headers_reach_every_request(tmp_path, blob, synth_slide):
    """The caller's headers (credentials) are sent with the range requests too, merged
    with the If-Match header, not replaced by it."""
    from exaslide.slides import open_slide
    from exaslide.slides.tifffile_backend import TiffFileSlide
    from http_server import RangeServer

    (tmp_path / "private").mkdir()
    server = RangeServer(tmp_path / "private", require_header=("Authorization", "Bearer x"))
    server.start()
    try:
        path, data = blob
        url = server.publish(path)
        options = {"headers": {"Authorization": "Bearer x"}}
        with pytest.raises(StorageError):
            open_file(url)  # no credentials: 401
        with open_file(url, storage_options=options) as fh:
            assert fh.pread(600_000, 100_000) == data[100_000:700_000]
        slide_url = server.publish(synth_slide.path)
        source = RemoteFile(slide_url, storage_options=options)
        with TiffFileSlide(slide_url, source=source) as slide, \
                open_slide(synth_slide.path) as local:
            np.testing.assert_array_equal(slide.read_region((1000, 700), (300, 200)),
                                          local.read_region((1000, 700), (300, 200)))
        assert local_copy(url, storage_options=options).read_bytes() == data
    finally:
        server.stop()


def test_pread_refuses_negative_offsets_and_sizes(server, blob):
    path, data = blob
    with open_file(server.publish(path)) as fh:
        with pytest.raises(ValueError, match="offset >= 0"):
            fh.pread(10, -5)
        with pytest.raises(ValueError, match="offset >= 0"):
            fh.pread(-1, 100)
        assert fh.pread(0, 100) == b"" and fh.pread(10, len(data)) == b""
    assert server.sent() == 0  # no request with a nonsense Range went out


def _descriptors_of(path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            continue
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_whole_file_copy_is_opened_once_per_handle(server, blob):
    path, data = blob
    url = server.publish(path)
    fh = RemoteFile(url)
    copy = local_copy(url)  # another handle makes the copy: this one switches on a miss
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda _: fh._use_whole_file(), range(32)))
    offsets = range(0, len(data) - 1000, 250_000)
    with ThreadPoolExecutor(8) as pool:
        chunks = list(pool.map(lambda o: fh.pread(1000, o), offsets))
    assert chunks == [data[o : o + 1000] for o in offsets]
    assert _descriptors_of(copy.resolve()) == 1
    fh.close()
    assert _descriptors_of(copy.resolve()) == 0  # no descriptor leaked


def test_a_server_that_reports_no_size_is_streamed_whole(server, blob):
    path, data = blob
    url = server.publish(path)
    server.no_length.add("blob.bin")
    reset_io_stats()
    with open_file(url) as fh:
        assert fh.size == len(data) and fh.stats()["bytes_fetched"] == len(data)
        assert fh.pread(1000, 2_000_000) == data[2_000_000:2_001_000]
        fh.seek(-10, io.SEEK_END)
        assert fh.read() == data[-10:]
    # (fsspec asks for the size by HEAD, then by a GET it drops after the headers, at
    # every open: the test server counts what it wrote to that socket too, so bytes are
    # counted on the client's side)
    assert io_stats()["bytes_fetched"] == len(data)  # one streaming download
    with open_file(url) as again:  # the copy in the cache serves a new handle
        assert again.read(100) == data[:100]
    assert local_copy(url).read_bytes() == data
    assert io_stats()["bytes_fetched"] == len(data)
    [entry] = DiskCache().entries()
    assert entry.whole_file and entry.size is None


_COPY_AT = """
import sys, time
from exaslide.storage import local_copy
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(local_copy(sys.argv[1]))
"""


def test_processes_copying_one_file_download_it_once(server, cache_dir, tmp_path):
    import subprocess
    import sys
    import time

    data = np.random.default_rng(1).integers(0, 256, 6_000_000, dtype=np.uint8).tobytes()
    (tmp_path / "six.bin").write_bytes(data)
    url = server.publish(tmp_path / "six.bin")
    server.throttle["six.bin"] = 4e6  # 1.5 s per download: the copies overlap
    start = time.time() + 3.0  # all four begin at once
    env = dict(os.environ, EXASLIDE_CACHE_DIR=str(cache_dir))
    procs = [subprocess.Popen([sys.executable, "-c", _COPY_AT, url, str(start)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    assert Path(paths.pop()).read_bytes() == data
    assert server.sent("six.bin") == len(data)  # fetched once, not four times
    assert not list(cache_dir.rglob("whole.lock"))


def test_a_presigned_url_hits_the_cache_after_its_signature_changes(server, blob):
    path, data = blob
    url = server.publish(path)
    with open_file(f"{url}?X-Amz-Date=1&X-Amz-Signature=aa") as fh:
        assert fh.pread(1000, 5000) == data[5000:6000]
    sent = server.sent()
    with open_file(f"{url}?X-Amz-Date=2&X-Amz-Signature=bb") as fh:
        assert fh.pread(1000, 5000) == data[5000:6000]
    assert server.sent() == sent  # the block cached under the first signature served it
    [entry] = DiskCache().entries()
    assert entry.url == url


def _gets(server, name: str) -> int:
    """GET requests the server has seen for ``name``."""
    return sum(1 for method, seen, _ in server.requests if method == "GET" and seen == name)


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":  # one byte, in place, modification time kept
        stat = path.stat()
        data[len(data) // 3] ^= 0x01
        with open(path, "r+b") as fh:
            fh.write(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # a copy left by an earlier exaslide: no record of its checksum
        (path.parent.parent / "whole.json").unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "no record"])
def test_a_damaged_whole_file_copy_is_fetched_again(server, blob, how, caplog):
    path, data = blob
    url = server.publish(path)
    copy = local_copy(url)
    assert copy.read_bytes() == data
    _damage(copy, how)
    gets = _gets(server, "blob.bin")
    with caplog.at_level("WARNING", logger="exaslide.storage"):
        again = local_copy(url)
    assert again.read_bytes() == data
    assert _gets(server, "blob.bin") > gets  # the server saw the refetch
    assert "damaged" in caplog.text and "blob.bin" in caplog.text
    gets = _gets(server, "blob.bin")
    assert local_copy(url).read_bytes() == data and _gets(server, "blob.bin") == gets


def test_an_open_handle_never_reads_a_damaged_copy(server, blob):
    path, data = blob
    url = server.publish(path)
    _damage(local_copy(url), "flip")
    with open_file(url) as fh:  # a new handle: the copy is checked before it is used
        assert fh.read() == data


def test_a_damaged_annotation_copy_is_fetched_again(server, synth_slide):
    from exaslide.annotations import read_annotations

    url = server.publish(synth_slide.annotation_path, "slide.xml")
    first = read_annotations(url)
    [copy] = list(DiskCache().root.rglob("file/slide.xml"))
    text = copy.read_bytes()
    at = text.index(b'X="') + 3  # a coordinate's first digit: 1 -> 0, 5 -> 4, ...
    copy.write_bytes(text[:at] + bytes([text[at] ^ 0x01]) + text[at + 1 :])
    again = read_annotations(url)
    assert [a.geometry.wkb for a in again] == [a.geometry.wkb for a in first]


def test_a_link_in_the_cache_is_never_read_as_a_copy(server, blob, tmp_path):
    path, _ = blob
    url = server.publish(path)
    with open_file(url) as fh:
        fh.pread(10, 0)  # makes the entry and its version folder
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "blob.bin").write_bytes(b"not the remote file")
    [version] = [p for p in DiskCache().entry_dir(url).iterdir() if p.is_dir()]
    os.symlink(outside, version / "file")
    with pytest.raises(StorageError, match=r"file: .*link"):
        local_copy(url)
    assert (outside / "blob.bin").read_bytes() == b"not the remote file"
    assert sorted(p.name for p in outside.iterdir()) == ["blob.bin"]
