"""Catalogue: the disk cache of remote files only ever touches its own entries, and a
damaged whole-file copy in it is fetched again instead of being read.

A folder given as the cache (``EXASLIDE_CACHE_DIR`` / ``exaslide cache --dir``) that holds
other files is refused with one line; a cache folder into which other files were put
later keeps them through eviction and ``cache clear``; links planted in the cache are
never followed.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest
from harness import exaslide, snapshot

from http_server import RangeServer

USER_FILES = {"projects/thesis.pdf": b"%PDF-1.7 my thesis", "photos/a.jpg": b"\xff\xd8jpeg"}


@pytest.fixture
def server(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    srv = RangeServer(www).start()
    yield srv
    srv.stop()


def _user_files(folder: Path) -> dict[str, bytes]:
    """The user's files, last modified in 2020 (the first an LRU eviction would take)."""
    for rel, data in USER_FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
        os.utime(folder / rel, (1.6e9, 1.6e9))
    return USER_FILES


def _intact(folder: Path) -> None:
    for rel, data in USER_FILES.items():
        assert (folder / rel).read_bytes() == data, rel


def _env(cache: Path, size: str | None = None) -> dict:
    env = {"EXASLIDE_CACHE_DIR": str(cache)}
    if size is not None:
        env["EXASLIDE_CACHE_SIZE"] = size
    return env


def test_clear_refuses_a_folder_that_is_not_a_cache(tmp_path, watch):
    folder = tmp_path / "D"
    _user_files(folder)
    check = watch()
    for args in (("clear", "--yes"), ("info",), ("info", "--json")):
        result = exaslide("cache", "--dir", folder, *args)
        assert result.code == 2, (args, result.stdout, result.stderr)
        line = result.one_line_error()
        assert str(folder) in line and "empty or new folder" in line, line
        assert "thesis" not in result.stdout and "photos" not in result.stdout
    check()


def test_eviction_never_deletes_files_in_a_folder_that_is_not_a_cache(tmp_path, server,
                                                                       synth_slide, watch):
    folder = tmp_path / "D"
    _user_files(folder)
    url = server.publish(synth_slide.path)
    check = watch()
    result = exaslide("info", url, env=_env(folder, "1kB"))
    assert result.code == 2, result.stderr
    line = result.one_line_error()
    assert str(folder) in line and "empty or new folder" in line, line
    check()


def test_a_cache_keeps_files_it_did_not_write(tmp_path, server, synth_slide):
    """Files put into a cache folder after it was made survive eviction with a tiny
    limit, are not listed, and survive ``cache clear --yes``."""
    folder = tmp_path / "D"
    url = server.publish(synth_slide.path)
    assert exaslide("info", url, env=_env(folder)).code == 0  # makes the cache
    _user_files(folder)
    lookalike = folder / ("0" * 32) / "notes.txt"  # an entry-like name, but not an entry
    lookalike.parent.mkdir()
    lookalike.write_text("mine")
    os.utime(lookalike, (1.6e9, 1.6e9))
    other = server.publish(synth_slide.path, "other.tif")
    done = exaslide("info", other, "--json", env=_env(folder, "1kB"))  # evicts everything
    assert done.code == 0, done.stderr
    _intact(folder)
    assert lookalike.read_text() == "mine"
    assert exaslide("info", url, env=_env(folder)).code == 0  # cached again
    listed = exaslide("cache", "--dir", folder, "info", "--json")
    assert listed.code == 0, listed.stderr
    assert [e["url"] for e in json.loads(listed.stdout)["entries"]] == [url]
    assert "thesis" not in listed.stdout and "notes" not in listed.stdout
    cleared = exaslide("cache", "--dir", folder, "clear", "--yes")
    assert cleared.code == 0 and "1 entry" in cleared.stdout, cleared.stderr
    _intact(folder)
    assert lookalike.read_text() == "mine"
    assert json.loads(exaslide("cache", "--dir", folder, "info", "--json").stdout)["files"] == 0


def test_an_empty_or_new_folder_becomes_a_cache(tmp_path, server, synth_slide):
    url = server.publish(synth_slide.path)
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "new" / "deeper"):
        done = exaslide("info", url, env=_env(folder))
        assert done.code == 0, done.stderr
        tag = (folder / "CACHEDIR.TAG").read_text()
        assert tag.startswith("Signature: 8a477f597d28d172789f06886806bc55") and \
            "exaslide" in tag
        listed = json.loads(exaslide("cache", "--dir", folder, "info", "--json").stdout)
        assert [e["url"] for e in listed["entries"]] == [url]


def _legacy_entry(folder: Path, name: str, url: str) -> Path:
    """An entry as the previous release wrote it (no marker file in the cache)."""
    entry = folder / name
    version = entry / ("a" * 16) / "blocks-262144"
    version.mkdir(parents=True)
    (entry / "meta.json").write_text(json.dumps({"url": url, "size": 3, "etag": "e",
                                                 "last_modified": None,
                                                 "version": "a" * 16}))
    (version / "0").write_bytes(b"abc" + zlib.crc32(b"abc").to_bytes(4, "little"))
    return entry


def test_a_cache_of_the_previous_release_is_adopted_only_when_all_of_it_is_cache(tmp_path):
    old = tmp_path / "old"
    _legacy_entry(old, "1" * 32, "https://host/a.tif")
    listed = exaslide("cache", "--dir", old, "info", "--json")
    assert listed.code == 0, listed.stderr
    assert [e["url"] for e in json.loads(listed.stdout)["entries"]] == ["https://host/a.tif"]
    assert "exaslide" in (old / "CACHEDIR.TAG").read_text()
    mixed = tmp_path / "mixed"
    entry = _legacy_entry(mixed, "2" * 32, "https://host/b.tif")
    (entry / ("a" * 16) / "todo.txt").write_text("not the cache's")
    before = snapshot(mixed)
    done = exaslide("cache", "--dir", mixed, "clear", "--yes")
    assert done.code == 2, done.stderr
    assert str(mixed) in done.one_line_error()
    assert snapshot(mixed) == before


def test_links_planted_in_the_cache_are_never_followed(tmp_path, server, synth_slide):
    folder = tmp_path / "D"
    url = server.publish(synth_slide.path)
    assert exaslide("info", url, env=_env(folder)).code == 0
    outside = tmp_path / "outside"
    _user_files(outside)
    [entry] = [p for p in folder.iterdir() if p.is_dir()]
    [version] = [p for p in entry.iterdir() if p.is_dir()]
    [blocks] = list(version.glob("blocks-*"))
    os.symlink(outside / "projects" / "thesis.pdf", blocks / "999")  # a block "file"
    os.symlink(outside / "photos", folder / ("f" * 32))               # an "entry"
    os.symlink(outside / "photos", version / "blocks-4096")          # a "blocks" folder
    before = snapshot(outside)
    other = server.publish(synth_slide.path, "other.tif")
    done = exaslide("info", other, env=_env(folder, "1kB"))  # evicts all it can
    assert done.code == 0, done.stderr
    cleared = exaslide("cache", "--dir", folder, "clear", "--yes")
    assert cleared.code == 0, cleared.stderr
    assert snapshot(outside) == before
    assert os.path.islink(blocks / "999") and os.path.islink(folder / ("f" * 32))


def test_a_half_truncated_whole_file_copy_is_fetched_again(tmp_path, server):
    """A plain image is read from a whole-file copy; cut in half, the copy is noticed and
    fetched again (not blamed on the URL)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "figure.png")
    url = server.publish(tmp_path / "figure.png")
    folder = tmp_path / "D"
    first = exaslide("info", url, "--json", env=_env(folder))
    assert first.code == 0, first.stderr
    [copy] = list(folder.rglob("file/figure.png"))
    copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])
    gets = sum(1 for method, name, _ in server.requests if method == "GET"
               and name == "figure.png")
    again = exaslide("info", url, "--json", env=_env(folder))
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert "damaged" in again.stderr  # the warning
    assert sum(1 for method, name, _ in server.requests if method == "GET"
               and name == "figure.png") > gets  # the server saw the refetch
    assert copy.read_bytes() == (tmp_path / "figure.png").read_bytes()
