"""WebDataset-compatible tar shards: ``<key>.png`` (or ``.jpg``) + ``<key>.json`` per patch.

Shards are byte-for-byte deterministic (GNU tar format, so keys may be longer than 100
characters; fixed member order, mtime 0, uid/gid 0, no user names), hold at most
``max_samples`` samples, and are written to a temporary name and renamed when complete,
so a killed run never leaves a truncated shard under its final name.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from exaslide.atomic import commit, temporary_sibling

FORMATS = ("png", "jpeg")


def encode(patch: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """Encode an RGB patch as PNG (lossless, fast zlib level 1) or JPEG (``quality``)."""
    import cv2

    bgr = cv2.cvtColor(patch, cv2.COLOR_RGB2BGR)
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    elif fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        raise ValueError(f"unknown image format {fmt!r}; choose one of {FORMATS}")
    if not ok:
        raise ValueError(f"cannot encode a {patch.shape} patch as {fmt}")
    return buf.tobytes()


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


class ShardWriter:
    """Writes samples into ``<prefix>-NNNNN.tar`` shards of at most ``max_samples`` each.

    Args:
        directory: the shard folder.
        prefix: shard name prefix (e.g. ``<slide_id>-<chunk>``).
        fmt: ``"png"`` or ``"jpeg"``.
        quality: JPEG quality.
        max_samples: samples per shard.
    """

    def __init__(self, directory: str | Path, prefix: str, fmt: str = "png",
                 quality: int = 90, max_samples: int = 1000):
        if fmt not in FORMATS:
            raise ValueError(f"unknown image format {fmt!r}; choose one of {FORMATS}")
        self.directory, self.prefix = Path(directory), prefix
        self.fmt, self.quality, self.max_samples = fmt, quality, max_samples
        self.extension = "png" if fmt == "png" else "jpg"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shards: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0

    def add(self, key: str, patch: np.ndarray, metadata: dict[str, Any]) -> str:
        """Add one sample; returns the name of the shard that holds it."""
        if self._tar is None or self._count >= self.max_samples:
            self._finish()
            self._open()
        image = encode(patch, self.fmt, self.quality)
        meta = json.dumps(metadata, sort_keys=True).encode()
        for name, data in ((f"{key}.{self.extension}", image), (f"{key}.json", meta)):
            self._tar.addfile(*_member(name, data))
        self._count += 1
        return self.shards[-1]

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):05d}.tar"
        self.shards.append(name)
        self._tmp = temporary_sibling(self.directory / name)
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.GNU_FORMAT)  # noqa: SIM115
        self._count = 0

    def _finish(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        commit(self._tmp, self.directory / self.shards[-1])
        self._tar = self._tmp = None

    def close(self) -> list[str]:
        """Finish the last shard; returns every shard name written."""
        self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (on error)."""
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = self._tmp = None
