"""Small slides for the compressed-batch tests: an Aperio-like RGB-JPEG TIFF (shared
JPEGTables, no colour marker, component ids 0, 1, 2, optionally sparse tiles), TIFFs
that are not JPEG-tiled (LZW, deflate), and patch index tables."""

from __future__ import annotations

import numpy as np

from exaslide.data.tile_bytes import parse_jpeg


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish RGB test image (tissue-like colours, some detail)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([180 + 40 * np.sin(x / 17), 120 + 50 * np.cos(y / 23),
                     170 + 30 * np.sin((x + y) / 29)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def aperio_tile(pixels: np.ndarray, quality: int = 90) -> tuple[bytes, bytes]:
    """``(tables, tile)`` coded as Aperio does: R, G, B unconverted, the tables in a
    separate abbreviated stream, no Adobe/JFIF marker, component ids 0, 1, 2 (so a plain
    decoder would take the tile for YCbCr)."""
    import imagecodecs

    data = imagecodecs.jpeg8_encode(pixels, level=quality, colorspace="RGB",
                                    outcolorspace="RGB")
    header = parse_jpeg(data)
    tables, rest = [], []
    for marker, segment in header.segments:
        if marker in (0xDB, 0xC4):  # DQT, DHT
            tables.append(segment)
        elif marker == 0xEE:  # Adobe
            continue
        elif marker == 0xC0:  # SOF0: component ids 0, 1, 2
            segment = bytearray(segment)
            for i in range(segment[9]):
                segment[10 + 3 * i] = i
            rest.append(bytes(segment))
        else:
            rest.append(segment)
    scan = bytearray(data[header.scan_start :])
    for i in range(scan[4]):  # SOS component selectors
        scan[5 + 2 * i] = i
    return (b"\xff\xd8" + b"".join(tables) + b"\xff\xd9",
            b"\xff\xd8" + b"".join(rest) + bytes(scan))


def write_aperio_like(path, image: np.ndarray, tile: int = 64,
                      sparse: tuple[int, ...] = (), levels: int = 1) -> str:
    """A tiled TIFF of ``image`` with Aperio-style RGB JPEG tiles (``sparse``: tile
    indices of level 0 stored with no bytes), ``levels`` pyramid levels (halved)."""
    import tifffile

    with tifffile.TiffWriter(path) as writer:
        for level in range(levels):
            h, w = image.shape[:2]
            tiles, tables = [], None
            for y in range(0, h, tile):
                for x in range(0, w, tile):
                    block = np.full((tile, tile, 3), 255, np.uint8)
                    part = image[y : y + tile, x : x + tile]
                    block[: part.shape[0], : part.shape[1]] = part
                    tables, data = aperio_tile(block)
                    tiles.append(b"" if level == 0 and len(tiles) in sparse else data)
            writer.write(iter(tiles), shape=image.shape, dtype=np.uint8,
                         tile=(tile, tile), photometric="rgb", compression="jpeg",
                         compressionargs={"outcolorspace": "RGB"}, jpegtables=tables,
                         subfiletype=1 if level else 0, metadata=None,
                         resolution=(1e4 / (0.5 * 2**level),) * 2,
                         resolutionunit="CENTIMETER")
            image = image[::2, ::2]
    return str(path)


def write_plain_tiff(path, image: np.ndarray, compression: str, tile: int = 64,
                     levels: int = 2) -> str:
    """A tiled pyramidal TIFF of ``image`` in a lossless ``compression`` (lzw, zlib)."""
    import tifffile

    with tifffile.TiffWriter(path) as writer:
        for level in range(levels):
            writer.write(image, tile=(tile, tile), photometric="rgb",
                         compression=compression, subfiletype=1 if level else 0,
                         metadata=None, resolution=(1e4 / (0.5 * 2**level),) * 2,
                         resolutionunit="CENTIMETER")
            image = np.ascontiguousarray(image[::2, ::2])
    return str(path)


def index_table(xs, ys, *, slide_id: str = "s", size: int = 64, level: int = 0,
                mpp: float | None = None, labels=None):
    """A patch index table (the extraction's schema) for patches at ``(xs, ys)``."""
    from exaslide.patches.index import make_table

    n = len(xs)
    labels = labels if labels is not None else ["tumour" if i % 3 else "normal"
                                                for i in range(n)]
    return make_table({"key": [f"{slide_id}-{i}" for i in range(n)],
                       "slide_id": slide_id, "x": list(map(int, xs)),
                       "y": list(map(int, ys)), "level": level, "mpp": mpp, "size": size,
                       "label": labels, "split": "train"})
