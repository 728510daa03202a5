"""Catalogue: forged or lying slide headers are refused at open, quickly, in bounded memory.

A TIFF header is a few bytes that can claim any size: 2^31 x 2^31 pixels, tiles of 65536 x
65536, a tile table that covers a sliver of the claimed image or points past the end of
the file. Every reader must refuse such a file at open with one line (never size a buffer
from it), and every read must bound its memory from the requested output. The CLI runs
below are limited to 4 GB of address space, so a regression fails here instead of eating
the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest
from forge import (
    forge_huge_tiff,
    forge_huge_tiles,
    forge_tile_count_mismatch,
    forge_tiles_past_eof,
    write_small_tiff,
)
from harness import Result

from exaslide.errors import SlideOpenError, SlideReadError
from exaslide.slides import base, open_slide

ADDRESS_SPACE = 4 << 30
FORGERIES = {
    "2^31 a side": (forge_huge_tiff, "implausible"),
    "65536-px tiles": (forge_huge_tiles, "segments"),
    "16 tiles for 40000^2": (forge_tile_count_mismatch, "tiles"),
    "tile past EOF": (forge_tiles_past_eof, "end of the file"),
}
BACKENDS = [None, "tifffile", "openslide"]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def limited_exaslide(*args, timeout: float = 120) -> tuple[Result, float]:
    """Run the CLI in a process limited to 4 GB of address space; ``(result, seconds)``."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "exaslide", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ), preexec_fn=_limit_memory)
    return Result(done.returncode, done.stdout, done.stderr), time.monotonic() - start


@pytest.fixture(params=list(FORGERIES), ids=list(FORGERIES))
def forged(request, tmp_path):
    """``(path, words of the expected message)`` of one forged TIFF."""
    make, words = FORGERIES[request.param]
    return make(tmp_path / "forged.tif"), words


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b or "auto")
def test_forged_header_is_refused_at_open_by_every_backend(forged, backend):
    path, words = forged
    start = time.monotonic()
    with pytest.raises(SlideOpenError) as info:
        open_slide(path, backend=backend).close()
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert words in message, message


def test_the_forger_writes_a_slide_both_backends_open(tmp_path):
    path = write_small_tiff(tmp_path / "good.tif")
    for backend in ("tifffile", "openslide"):
        with open_slide(path, backend=backend) as slide:
            assert slide.level_dimensions == ((1024, 1024), (512, 512))
            assert slide.read_region((1000, 1000), (24, 24)).std() > 10


def test_info_on_a_forged_header_is_one_quick_line(forged, tmp_path, watch):
    path, words = forged
    check = watch()
    result, seconds = limited_exaslide("info", path)
    assert result.code == 2, result.stderr
    line = result.one_line_error()
    assert str(path) in line and words in line, line
    assert seconds < 10
    check()


def test_mask_on_a_forged_header_is_one_quick_line(forged, tmp_path, watch):
    path, words = forged
    out = tmp_path / "O"
    check = watch()
    result, seconds = limited_exaslide("mask", path, "--level", 0, "--out", out)
    assert result.code == 2, result.stderr
    line = result.one_line_error()
    assert str(path) in line and words in line, line
    assert seconds < 10
    check(out)


def test_a_manifest_with_a_forged_slide_finishes_the_good_one(tmp_path, watch):
    forge_huge_tiff(tmp_path / "forged.tif")
    write_small_tiff(tmp_path / "good.tif")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,path,annotation,label,split\n"
                        f"forged,{tmp_path / 'forged.tif'},,,test\n"
                        f"good,{tmp_path / 'good.tif'},,,test\n")
    out = tmp_path / "O"
    check = watch()
    result, seconds = limited_exaslide("mask", "--manifest", manifest, "--level", 1,
                                       "--out", out)
    assert result.code == 1, result.stderr
    assert "1 done" in result.stdout + result.stderr and "1 failed" in \
        result.stdout + result.stderr
    assert (out / "good_mask.png").is_file() and not (out / "forged_mask.png").exists()
    assert "implausible" in (out / "status" / "forged.json").read_text()
    assert seconds < 60
    check(out)


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_an_absurd_read_is_refused_before_allocating(tmp_path, backend):
    path = write_small_tiff(tmp_path / "good.tif")
    with open_slide(path, backend=backend) as slide:
        for size, kwargs in [((10**6, 10**6), {"level": 0}), ((10**6, 10**6), {"mpp": 4.0}),
                             ((2**40, 1), {"level": 1}), ((1e30, 1e30), {"level": 0})]:
            with pytest.raises(SlideReadError, match="too large for one read"):
                slide.read_region((0, 0), size, **kwargs)
        for bad in [(float("nan"), 0), (0, float("inf")), (-float("inf"), 0)]:
            with pytest.raises(SlideReadError, match="finite"):
                slide.read_region(bad, (10, 10))
        with pytest.raises(SlideReadError, match=r"finite|positive"):
            slide.read_region((0, 0), (float("nan"), 10))


def test_resampled_reads_decode_in_bounded_blocks(tmp_path, monkeypatch):
    """Thumbnails and mpp reads of a single-level slide decode at most
    ``RESAMPLE_CHUNK_PIXELS`` source pixels at a time, whatever the downsample, and the
    result does not depend on the block size."""
    import tifffile

    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8).repeat(32, 0).repeat(32, 1)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb")  # 2048^2, 1 level
    with open_slide(path, backend="tifffile") as slide:
        expected = slide.thumbnail(32)
        calls = []
        read = slide._read_pixels

        def spy(level, x, y, width, height):
            calls.append(width * height)
            return read(level, x, y, width, height)

        monkeypatch.setattr(slide, "_read_pixels", spy)
        monkeypatch.setattr(base, "RESAMPLE_CHUNK_PIXELS", 4096)
        thumb = slide.thumbnail(32)  # 64 x 64 source pixels per output pixel
        assert max(calls) <= 4096
        np.testing.assert_array_equal(thumb, expected)
        with pytest.raises(SlideReadError, match="source pixels"):
            slide.thumbnail(4)  # 512 x 512 source pixels for one output pixel
