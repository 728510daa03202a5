"""DiskCache: sizes, layout, LRU eviction, damaged blocks, configuration."""

from __future__ import annotations

import os
import time

import pytest

from exaslide.errors import StorageError
from exaslide.storage import (
    DiskCache,
    RemoteInfo,
    default_cache,
    format_size,
    is_remote,
    join_url,
    parse_size,
    to_local,
    url_basename,
)


def test_parse_and_format_sizes():
    assert parse_size("50GB") == 50 * 10**9
    assert parse_size("500 MB") == 500 * 10**6
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("123") == parse_size(123) == 123
    assert parse_size("2gib") == 2 * 2**30 and parse_size("5k") == 5000
    assert format_size(12_345_678) == "11.77 MiB" and format_size(500) == "500 B"
    for bad in ("lots", "", "kb", "-5MB", "5 parsecs"):
        with pytest.raises(StorageError, match="not a size"):
            parse_size(bad)


def test_urls():
    assert is_remote("https://host/a.svs") and is_remote("s3://bucket/a.svs")
    assert not is_remote("/data/a.svs") and not is_remote("file:///data/a.svs")
    assert not is_remote("C:\\slides\\a.svs") and not is_remote("relative/a.svs")
    assert to_local("file:///data/my%20slide.svs") == "/data/my slide.svs"
    assert url_basename("https://h/x/tumor_001.tif?sig=abc") == "tumor_001.tif"
    assert join_url("s3://b/cohort/manifest.csv", "slides/a.tif") == "s3://b/cohort/slides/a.tif"
    assert join_url("https://h/c/m.csv", "../x.tif") == "https://h/x.tif"
    assert join_url("https://h/c/m.csv", "gs://other/y.tif") == "gs://other/y.tif"


def test_default_cache_follows_the_environment(cache_dir, monkeypatch):
    assert default_cache().root == cache_dir and default_cache().max_bytes == 50 * 10**9
    monkeypatch.setenv("EXASLIDE_CACHE_SIZE", "2MB")
    assert default_cache().max_bytes == 2 * 10**6
    monkeypatch.delenv("EXASLIDE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_dir / "xdg"))
    assert default_cache().root == cache_dir / "xdg" / "exaslide"


def _info(name: str, size: int = 10_000, etag: str = "a") -> RemoteInfo:
    return RemoteInfo(url=f"https://host/{name}", size=size, etag=etag)


def test_blocks_round_trip_and_damaged_blocks_are_dropped(tmp_path):
    cache = DiskCache(tmp_path / "c", max_bytes="1MB", block_size=1000)
    info = _info("a.tif")
    cache.validate(info)
    cache.write_block(info, 3, b"x" * 1000)
    assert cache.read_block(info, 3) == b"x" * 1000 and cache.read_block(info, 4) is None
    path = next(p for p in (tmp_path / "c").rglob("3"))
    assert path.parent.parent.name == info.version and path.parent.name == "blocks-1000"
    path.write_bytes(b"y" * 1004)  # a torn write: the checksum no longer matches
    assert cache.read_block(info, 3) is None and not path.exists()


def test_a_changed_version_drops_the_old_blocks(tmp_path):
    cache = DiskCache(tmp_path / "c", block_size=1000)
    old, new = _info("a.tif", etag="v1"), _info("a.tif", etag="v2")
    cache.validate(old)
    cache.write_block(old, 0, b"1" * 1000)
    assert cache.validate(new) is True
    assert cache.read_block(old, 0) is None and cache.read_block(new, 0) is None
    assert cache.validate(new) is False
    [entry] = cache.entries()
    assert entry.etag == "v2" and entry.cached_bytes == 0


def test_size_limit_evicts_least_recently_used(tmp_path):
    cache = DiskCache(tmp_path / "c", max_bytes=10_040, block_size=1000)  # ten blocks
    infos = [_info(f"{i}.tif") for i in range(3)]
    stamp = time.time() - 1000
    for k, info in enumerate(infos):
        cache.validate(info)
        for i in range(3):
            cache.write_block(info, i, bytes([k]) * 1000)
            block = cache._block_path(info, i)
            os.utime(block, (stamp, stamp))  # deterministic ages: file 0 oldest
            stamp += 10
    assert cache.read_block(infos[0], 0) == bytes([0]) * 1000  # a hit makes it the newest
    assert cache.total_bytes() == 9 * 1004
    cache.validate(_info("3.tif"))
    cache.write_block(_info("3.tif"), 0, b"n" * 1000)  # 10 blocks: still under the limit
    cache.write_block(_info("3.tif"), 1, b"n" * 1000)  # 11 blocks: prune to 90% (9 blocks)
    assert cache.total_bytes() == 9 * 1004 <= 0.9 * cache.max_bytes
    assert cache.read_block(infos[0], 0) is not None  # touched: kept
    assert cache.read_block(infos[0], 1) is None and cache.read_block(infos[0], 2) is None
    assert all(cache.read_block(info, i) is not None for info in infos[1:] for i in range(3))
    assert cache.read_block(_info("3.tif"), 1) is not None
    assert {e.url for e in cache.entries()} == {i.url for i in (infos[0], infos[1], infos[2],
                                                                _info("3.tif"))}


def test_whole_file_larger_than_the_limit_is_refused(tmp_path):
    cache = DiskCache(tmp_path / "c", max_bytes=1000)
    with pytest.raises(StorageError, match="larger than the disk cache limit"):
        cache.store_whole_file(_info("big.svs", size=5000), lambda tmp: None)


def test_clear_by_pattern(tmp_path):
    cache = DiskCache(tmp_path / "c", block_size=10)
    for name in ("a/1.tif", "a/2.tif", "b/3.tif"):
        cache.validate(_info(name, size=10))
        cache.write_block(_info(name, size=10), 0, b"0123456789")
    assert len(cache.clear("https://host/a/*")) == 2
    assert [e.url for e in cache.entries()] == ["https://host/b/3.tif"]
    assert len(cache.clear()) == 1 and cache.entries() == []


def _write(data: bytes):
    return lambda tmp: tmp.write_bytes(data)


def test_a_remote_file_named_meta_json_is_cached_counted_and_evicted(tmp_path):
    cache = DiskCache(tmp_path / "c", max_bytes=10_000, block_size=1000)
    info = _info("cohort/meta.json", size=3000)
    cache.validate(info)
    copy = cache.store_whole_file(info, _write(b"{" * 3000))
    assert copy.name == "meta.json" and cache.whole_file(info) == copy
    assert cache.total_bytes() == 3000
    [entry] = cache.entries()
    assert entry.whole_file and entry.cached_bytes == 3000
    cache._remove_empty_entries()  # the entry holds data: kept
    assert copy.is_file()
    assert cache.prune(0) == 3000 and not copy.exists()  # evictable like any file
    assert cache.entries() == [] and cache.total_bytes() == 0


def test_temporaries_being_written_count_but_are_not_evicted(tmp_path):
    cache = DiskCache(tmp_path / "c", max_bytes=10_000, block_size=1000)
    info = _info("a.tif")
    cache.validate(info)
    cache.write_block(info, 0, b"0" * 1000)
    tmp = cache.whole_file_path(info).parent / ".a.0123abcd.tmp.tif"
    tmp.parent.mkdir(parents=True)
    tmp.write_bytes(b"t" * 5000)  # another process's whole-file copy in progress
    assert cache.total_bytes() == 1004 + 5000
    assert cache.prune(0) == 1004 and tmp.exists()
    old = time.time() - 2 * 3600  # but a temporary left by a killed process is deleted
    os.utime(tmp, (old, old))
    assert cache.total_bytes() == 0 and not tmp.exists()


def test_the_running_total_subtracts_the_blocks_a_whole_copy_replaces(tmp_path):
    cache = DiskCache(tmp_path / "c", max_bytes=100_000, block_size=1000)
    info = _info("a.tif", size=5000)
    cache.validate(info)
    for i in range(5):
        cache.write_block(info, i, b"b" * 1000)
    cache.store_whole_file(info, _write(b"w" * 5000))
    assert cache.total_bytes() == 5000
    assert cache._estimate == 5000  # not 5000 + the 5 x 1004 bytes of deleted blocks


_HOLD_LOCK = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(lock, seconds: float):
    """A process that holds the whole-file lock ``lock`` for ``seconds``."""
    import subprocess
    import sys

    lock.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(lock), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    cache = DiskCache(tmp_path / "c", block_size=1000)
    info = _info("a.tif", size=100)
    cache.validate(info)
    lock = cache.whole_file_path(info).parent.parent / "whole.lock"
    holder = _holder(lock, 60)
    holder.kill()  # SIGKILL: no clean-up, the lock file stays
    holder.wait()
    assert lock.exists()
    started = time.monotonic()
    copy = cache.store_whole_file(info, _write(b"x" * 100))  # the OS released the lock
    assert copy.read_bytes() == b"x" * 100 and time.monotonic() - started < 5
    assert not lock.exists()


_OWNER = """
import sys, time
from exaslide.storage import DiskCache, RemoteInfo

def fill(tmp):
    print("filling", flush=True)
    time.sleep(1.0)
    tmp.write_bytes(b"z" * 100)

info = RemoteInfo(url="https://host/a.tif", size=100, etag="a")
print(DiskCache(sys.argv[1], block_size=1000).store_whole_file(info, fill), flush=True)
"""


def test_a_held_whole_file_lock_makes_others_wait_for_the_copy(tmp_path):
    import subprocess
    import sys
    import threading
    from pathlib import Path

    cache = DiskCache(tmp_path / "c", block_size=1000)
    info = _info("a.tif", size=100)
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, str(tmp_path / "c")],
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "filling"  # it holds the lock
    calls = []
    result = {}
    waiter = threading.Thread(target=lambda: result.update(
        path=cache.store_whole_file(info, lambda tmp: calls.append(tmp))))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and calls == []  # waiting for the lock's owner
    made = Path(owner.stdout.readline().strip())
    assert owner.wait(30) == 0
    waiter.join(10)
    assert result["path"] == made and calls == []  # the copy was not made twice
    assert made.read_bytes() == b"z" * 100 and not (made.parent.parent / "whole.lock").exists()


def test_a_whole_file_copy_is_verified_before_it_is_reused(tmp_path, caplog):
    cache = DiskCache(tmp_path / "c", block_size=1000)
    info = _info("a.tif", size=1000)
    cache.validate(info)
    copy = cache.store_whole_file(info, _write(bytes(range(250)) * 4))
    assert cache.whole_file(info) == copy
    data = bytearray(copy.read_bytes())
    data[500] ^= 0x80
    copy.write_bytes(data)
    assert DiskCache(tmp_path / "c").whole_file(info) is None  # another process
    assert "damaged" in caplog.text and not copy.exists()
    copy = cache.store_whole_file(info, _write(bytes(range(250)) * 4))
    copy.write_bytes(copy.read_bytes()[:10])
    assert cache.whole_file(info) is None  # this process, which made it


def test_a_folder_that_is_not_a_cache_is_refused(tmp_path):
    (tmp_path / "d" / "photos").mkdir(parents=True)
    (tmp_path / "d" / "photos" / "a.jpg").write_bytes(b"jpeg")
    cache = DiskCache(tmp_path / "d")
    for use in (lambda: cache.validate(_info("a.tif")), cache.entries, cache.clear,
                cache.prune, cache.total_bytes):
        with pytest.raises(StorageError, match="empty or new folder"):
            use()
    assert (tmp_path / "d" / "photos" / "a.jpg").read_bytes() == b"jpeg"
    assert DiskCache(tmp_path / "missing").entries() == []  # nothing made to list nothing
    assert not (tmp_path / "missing").exists()


def test_cache_key_drops_only_presigning_parameters():
    from exaslide.storage import cache_key

    s3 = ("https://b.s3.amazonaws.com/c/a.svs?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=K%2F20260101&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600"
          "&X-Amz-SignedHeaders=host&X-Amz-Signature=abc123")
    assert cache_key(s3) == "https://b.s3.amazonaws.com/c/a.svs"
    assert cache_key("https://h/a.svs?versionId=7&X-Goog-Signature=ff&x-goog-date=1") == \
        "https://h/a.svs?versionId=7"
    assert cache_key("https://h/a.svs?AWSAccessKeyId=K&Expires=99&Signature=s%3D") == \
        "https://h/a.svs"
    assert cache_key("https://acct.blob.core.windows.net/c/a.svs?sv=2022-11-02&ss=b&srt=o"
                     "&sp=r&se=2026-01-01T00%3A00%3A00Z&spr=https&sig=abc%3D") == \
        "https://acct.blob.core.windows.net/c/a.svs"
    # without their signature, short names such as sp / se / Expires are the file's own
    assert cache_key("https://h/api?sp=3&se=4&Expires=5") == "https://h/api?sp=3&se=4&Expires=5"
    assert cache_key("https://h/a.svs") == "https://h/a.svs"


def test_a_file_presigned_twice_is_cached_once(tmp_path):
    cache = DiskCache(tmp_path / "c", block_size=1000)
    first = RemoteInfo(url="https://h/a.svs?X-Amz-Date=1&X-Amz-Signature=aa", size=1000,
                       etag="e")
    second = RemoteInfo(url="https://h/a.svs?X-Amz-Date=2&X-Amz-Signature=bb", size=1000,
                        etag="e")
    cache.validate(first)
    cache.write_block(first, 0, b"1" * 1000)
    assert cache.validate(second) is False and cache.read_block(second, 0) == b"1" * 1000
    [entry] = cache.entries()
    assert entry.url == "https://h/a.svs"  # no signature written to the cache
    assert "Signature" not in (entry.path / "meta.json").read_text()
    other = RemoteInfo(url="https://h/a.svs?versionId=2", size=1000, etag="e")
    assert cache.entry_dir(other.url) != cache.entry_dir(first.url)


def test_local_path_follows_the_storage_url_rules(tmp_path, monkeypatch):
    from exaslide.errors import SlideOpenError
    from exaslide.slides.open import local_path

    odd = tmp_path / "scan:2026.svs"  # a colon, but no "://": a local name
    odd.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert local_path("scan:2026.svs") == "scan:2026.svs"
    assert local_path("file://" + str(odd).replace(":", "%3A")) == str(odd)
    with pytest.raises(SlideOpenError, match=r"remote URL \(s3://\)"):
        local_path("s3://bucket/a.svs")


def test_a_copy_this_process_just_wrote_is_not_read_again(tmp_path, monkeypatch):
    from exaslide.storage import whole_copy

    checks = []
    real = whole_copy.copy_problem
    monkeypatch.setattr(whole_copy, "copy_problem",
                        lambda *a, **k: checks.append(a[0]) or real(*a, **k))
    cache = DiskCache(tmp_path / "c", max_bytes=10_000, block_size=1000)
    info = _info("a.tif", size=3000)
    cache.validate(info)
    copy = cache.store_whole_file(info, _write(b"x" * 3000))
    assert cache.whole_file(info) == copy and cache.whole_file(info) == copy
    assert checks == []  # its CRC was computed while writing
    with open(copy, "r+b") as fh:  # a change in place: its stat changes, it is checked
        fh.write(b"y")
    assert cache.whole_file(info) is None and len(checks) == 1
