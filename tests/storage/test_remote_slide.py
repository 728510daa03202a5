"""Slides over HTTP: byte-range reads through the disk cache, whole-file fallback, change
and truncation detection (against a real threaded server on 127.0.0.1)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from exaslide.errors import SlideOpenError, StorageError
from exaslide.slides import open_slide
from exaslide.storage import DiskCache, io_stats, reset_io_stats
from exaslide.synth import SynthSpec, write_synthetic_slide


def _tumour_corner(slide_info) -> tuple[int, int]:
    cx, cy = slide_info.layout.tumours[0].centroid.coords[0]
    return int(cx) // 256 * 256 + 100, int(cy) // 256 * 256 + 60  # unaligned: 4+ tiles


def test_one_region_fetches_a_few_blocks_then_nothing(server, big_slide):
    url = server.publish(big_slide.path)
    size = os.path.getsize(big_slide.path)
    location = _tumour_corner(big_slide)
    reset_io_stats()
    with open_slide(url) as slide:
        assert slide.backend == "tifffile" and slide.path == url
        assert slide.dimensions == (8192, 8192)
        opened = server.sent()
        region = slide.read_region(location, (512, 512))
        first = server.sent()
        again = slide.read_region(location, (512, 512))
        second = server.sent()
        stats = slide.tile_cache.stats()
    print(f"\nremote read: file {size} bytes; open fetched {opened}, open + one 512x512 "
          f"region {first} ({first / size:.1%}); second read {second - first} new bytes")
    assert first < 0.10 * size
    assert second == first  # the second read hits the tile cache: no new bytes
    assert stats["hits"] >= 4 and stats["misses"] >= 4
    assert io_stats()["bytes_fetched"] == first
    with open_slide(big_slide.path, backend="tifffile") as local, \
            open_slide(big_slide.path, backend="openslide") as reference:
        np.testing.assert_array_equal(region, local.read_region(location, (512, 512)))
        np.testing.assert_array_equal(region, reference.read_region(location, (512, 512)))
    np.testing.assert_array_equal(region, again)
    with open_slide(url) as fresh:  # a new handle: empty tile cache, full disk cache
        np.testing.assert_array_equal(fresh.read_region(location, (512, 512)), region)
    assert server.sent() == first


def test_another_process_reads_from_the_disk_cache(server, synth_slide, cache_dir):
    url = server.publish(synth_slide.path)
    code = ("import sys; from exaslide.slides import open_slide\n"
            "with open_slide(sys.argv[1]) as s:\n"
            "    print(int(s.read_region((1024, 768), (300, 200)).sum()))\n")
    env = dict(os.environ, EXASLIDE_CACHE_DIR=str(cache_dir))

    def run() -> str:
        done = subprocess.run([sys.executable, "-c", code, url], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    checksum = run()
    fetched = server.sent()
    assert 0 < fetched < os.path.getsize(synth_slide.path)
    assert run() == checksum
    assert server.sent() == fetched  # the second process hit the disk cache only
    with open_slide(synth_slide.path) as local:
        assert str(int(local.read_region((1024, 768), (300, 200)).sum())) == checksum.strip()


def test_changed_remote_file_is_detected(server, synth_slide, tmp_path, caplog):
    url = server.publish(synth_slide.path, "slide.tif")
    with open_slide(url) as slide:
        before = slide.read_region((0, 0), (768, 576), level=1)
        other = write_synthetic_slide(tmp_path / "other.tif",
                                      SynthSpec(width=3072, height=2304, tumours=1, seed=11))
        server.replace("slide.tif", other.path.read_bytes())
        with pytest.raises(StorageError, match="changed while it was open"):
            slide.read_region((0, 0), (3072, 2304))  # an open handle never mixes versions
    with caplog.at_level(logging.WARNING, logger="exaslide.storage"), open_slide(url) as slide:
        after = slide.read_region((0, 0), (768, 576), level=1)
    assert "changed since it was cached" in caplog.text
    with open_slide(other.path) as local:
        np.testing.assert_array_equal(after, local.read_region((0, 0), (768, 576), level=1))
    assert not np.array_equal(before, after)
    entries = DiskCache().entries()
    assert len(entries) == 1 and entries[0].size == os.path.getsize(other.path)


def test_truncated_bodies_and_truncated_files_are_errors(server, big_slide, tmp_path):
    url = server.publish(big_slide.path)
    size = os.path.getsize(big_slide.path)
    with open_slide(url) as slide:
        server.truncate["big.tif"] = size // 2  # HEAD says 44 MB, GET serves half of it
        with pytest.raises(StorageError, match=r"big\.tif: truncated .*remote file"):
            slide.read_region((0, 7000), (512, 512))  # level 0's last rows: past the cut
    with pytest.raises(StorageError, match=r"big\.tif: truncated"):
        open_slide(url, backend="openslide")  # the whole-file copy is refused too
    assert all(not e.whole_file for e in DiskCache().entries())
    # a file that really is cut short (its size says so) is refused like a local one
    cut = tmp_path / "cut.tif"
    cut.write_bytes(big_slide.path.read_bytes()[: int(size * 0.9)])
    with pytest.raises(SlideOpenError, match=r"http://.*/cut\.tif: truncated or damaged TIFF"):
        open_slide(server.publish(cut))


@pytest.mark.parametrize("fault", ["truncate", "abort"])
def test_truncated_body_at_open_is_an_error(server, synth_slide, fault):
    url = server.publish(synth_slide.path)
    getattr(server, fault)["slide.tif"] = 100_000  # short body / connection closed early
    with pytest.raises(StorageError, match=r"slide\.tif: truncated"):
        open_slide(url)
    assert DiskCache().total_bytes() == 0  # nothing short was cached


def test_forced_openslide_uses_a_whole_file_copy(server, synth_slide):
    url = server.publish(synth_slide.path)
    size = os.path.getsize(synth_slide.path)
    with open_slide(url, backend="openslide", tile_cache=32 << 20) as slide:
        assert slide.backend == "openslide" and slide.path == url
        assert slide.tile_cache is None and slide.openslide_cache_bytes == 32 << 20
        region = slide.read_region((1000, 700), (256, 256))
    assert server.sent() == size
    with open_slide(url, backend="openslide") as again, open_slide(synth_slide.path) as local:
        np.testing.assert_array_equal(again.read_region((1000, 700), (256, 256)), region)
        np.testing.assert_array_equal(local.read_region((1000, 700), (256, 256)), region)
    assert server.sent() == size  # the cached copy served the second open
    [entry] = DiskCache().entries()
    assert entry.whole_file and entry.url == url
    # the tifffile backend reads the whole-file copy too, without the network
    with open_slide(url, backend="tifffile") as tiles:
        np.testing.assert_array_equal(tiles.read_region((1000, 700), (256, 256)), region)
    assert server.sent() == size


def test_plain_image_over_http_and_bad_urls(server, tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "figure.png")
    with open_slide(server.publish(tmp_path / "figure.png")) as slide:
        assert slide.backend == "image"
        np.testing.assert_array_equal(slide.read_region((0, 0), (60, 40)), pixels)
    with pytest.raises(StorageError, match=r"missing\.svs: no such remote file"):
        open_slide(server.url("missing.svs"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SlideOpenError, match=r"http://.*/notes\.txt: not a recognised"):
        open_slide(server.publish(tmp_path / "notes.txt"))


def test_cache_cli_info_and_clear(server, synth_slide, cache_dir):
    url = server.publish(synth_slide.path)
    with open_slide(url) as slide:
        slide.read_region((0, 0), (256, 256))

    def cli(*args, rc=0):
        done = subprocess.run([sys.executable, "-m", "exaslide", "cache", *args],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, EXASLIDE_CACHE_DIR=str(cache_dir)))
        assert done.returncode == rc, done.stderr
        return done

    info = json.loads(cli("info", "--json").stdout)
    assert info["location"] == str(cache_dir) and info["files"] == 1
    assert info["limit_bytes"] == 50 * 10**9 and info["total_bytes"] > 0
    [entry] = info["entries"]
    assert entry["url"] == url and entry["size"] == os.path.getsize(synth_slide.path)
    assert 0 < entry["cached_bytes"] < entry["size"] and not entry["whole_file"]
    text = cli("info").stdout
    assert url in text and "limit 46.57 GiB" in text
    assert "0 entries" in cli("clear", "--yes", "http://elsewhere/*").stdout
    assert "1 entry" in cli("clear", "--yes").stdout
    assert json.loads(cli("info", "--json").stdout)["files"] == 0
    assert "cache size" in cli("--size", "lots", "info", rc=2).stderr


def test_a_config_files_cache_section_applies_to_every_command(server, synth_slide,
                                                               tmp_path):
    url = server.publish(synth_slide.path)
    config = tmp_path / "exaslide.yaml"
    config.write_text(f"cache:\n  dir: {tmp_path / 'from-config'}\n  size: 1GB\n")
    done = subprocess.run([sys.executable, "-m", "exaslide", "--config", str(config), "info",
                           url, "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["level_count"] >= 2
    assert any((tmp_path / "from-config").rglob("meta.json"))
