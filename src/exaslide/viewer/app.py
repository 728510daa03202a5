"""The viewer's ASGI application (Starlette): Deep Zoom slides, overlays, retrieval and the
front end's static files.

HTTP API (every endpoint reads; none writes):

- ``GET /``: the front end (``static/index.html``), or a page naming the missing build step.
- ``GET /static/{path}``: files under ``static/`` only.
- ``GET /api/slides``: ``[{"id", "name", "width", "height", "mpp", "levels", "dzi",
  "error"}]``; a slide that cannot be opened is listed with its error and not served.
- ``GET /slides/{id}.dzi`` and ``GET /slides/{id}_files/{level}/{col}_{row}.jpeg``: Deep
  Zoom, as OpenSlide's ``DeepZoomGenerator`` (see :mod:`exaslide.viewer.deepzoom`).
- ``GET /api/slides/{id}/overlays``: the slide's overlays, each ``{"id", "kind", "name",
  "url", ...}`` (heatmap and mask: a PNG and level-0 ``bounds``; annotations, patches and
  froc: GeoJSON).
- ``GET /api/slides/{id}/search?x=&y=&w=&h=&k=``: the ``k`` patches of the retrieval
  index most similar to a level-0 region of the slide.

Unknown ids, levels, tiles and anything malformed answer 404. With a token, every request
must carry ``?token=T`` or ``Authorization: Bearer T`` (else 401).
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from exaslide.errors import ExaslideError
from exaslide.extras import missing_extra
from exaslide.lru import LRU
from exaslide.slides.pool import DEFAULT_SHARED_MAX_OPEN, SharedHandlePool
from exaslide.viewer import overlays as ov
from exaslide.viewer.deepzoom import DeepZoom, dzi_document
from exaslide.viewer.discovery import Catalog, OverlaySource, SlideSource, discover

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The front end's files that must exist for ``/`` to serve it.
REQUIRED_ASSETS = ("index.html", "vendor/openseadragon/openseadragon.min.js")
MISSING_ASSETS_PAGE = (
    "<!doctype html><html><head><meta charset='utf-8'><title>exaslide viewer</title></head>"
    "<body><p id='missing-assets'>exaslide viewer: the front end is not built ({missing} "
    "missing): run <code>pip install -e .</code> in the source checkout (its build step "
    "runs <code>npm ci</code> and copies OpenSeadragon into "
    "src/exaslide/viewer/static/vendor/; needs npm).</p></body></html>")
DEFAULT_CACHE_BYTES = 256 * 2**20
REMOTE_TILE_THREADS = 16  # a remote slide's reads wait on the network, not on a CPU
PROBE_THREADS = 8  # slides opened at once when the viewer starts (remote ones wait on I/O)
MAX_K = 64
_TILE = re.compile(r"^(?P<id>[^/]+)_files/(?P<level>\d{1,3})/(?P<col>\d{1,9})_(?P<row>\d{1,9})"
                   r"\.(?P<fmt>jpeg|jpg)$")
_DZI = re.compile(r"^(?P<id>[^/]+)\.dzi$")
_OVERLAY = re.compile(r"^(?P<oid>[a-z]+-\d{1,6})(?P<legend>/legend)?\.(?P<ext>png|geojson)$")
_HIT = re.compile(r"^(?P<n>\d{1,4})/(?P<hit>\d{1,12})\.jpeg$")


@dataclass
class ServedSlide:
    """A discovered slide: what it is (``info``, read when the viewer starts) or the
    one-line ``error`` that kept it from opening. The open slide itself lives in the
    viewer's :class:`~exaslide.slides.pool.SharedHandlePool`."""

    source: SlideSource
    info: SlideInfo | None = None
    error: str | None = None


@dataclass(frozen=True)
class SlideInfo:
    """A slide's geometry, kept while the slide itself may be closed."""

    dimensions: tuple[int, int]
    mpp: tuple[float, float] | None
    level_count: int
    level_downsamples: tuple[float, ...]


@dataclass
class OpenSlide:
    """An open slide and its Deep Zoom tiler: what the viewer's
    :class:`~exaslide.slides.pool.SharedHandlePool` lends."""

    slide: Any
    deepzoom: DeepZoom


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity; a container's CPU set)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


class Viewer:
    """The state behind the app: the open slides, their overlays, the retrieval indexes
    and two byte-bounded caches (tiles, overlays)."""

    def __init__(self, catalog: Catalog, *, tile_size: int = 254, overlap: int = 1,
                 quality: int = 75, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 backend: str | None = None, max_open: int = DEFAULT_SHARED_MAX_OPEN,
                 tile_threads: int | None = None):
        from exaslide.storage.urls import is_remote

        self.catalog = catalog
        if tile_threads is None:  # one per usable CPU (more only fight over the GIL)
            tile_threads = usable_cpus()
            if any(is_remote(source.path) for source in catalog.slides.values()):
                tile_threads = max(tile_threads, REMOTE_TILE_THREADS)
        if tile_threads < 1:
            raise ValueError(f"tile_threads must be >= 1, got {tile_threads}")
        self.tile_threads = tile_threads
        self._tiling = (tile_size, overlap, quality)
        self._backend = backend
        self.pool = SharedHandlePool(catalog.slides, self._open, self._close_handle, max_open)
        self.slides: dict[str, ServedSlide] = {}
        ids = list(catalog.slides)
        with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, max(len(ids), 1))) as probes:
            for slide_id, served in zip(ids, probes.map(self._probe, ids), strict=True):
                self.slides[slide_id] = served
        self.tiles = LRU(cache_bytes, size_of=len)
        self.overlay_cache = LRU(max(cache_bytes // 4, 1), size_of=lambda v: len(v[0]))
        self._indexes: dict[int, Any] = {}
        self._index_lock = threading.Lock()
        self._search_lock = threading.Lock()
        self._tile_limiter: anyio.CapacityLimiter | None = None

    def _open(self, slide_id: str) -> OpenSlide:
        from exaslide.slides import open_slide

        slide = open_slide(self.catalog.slides[slide_id].path, backend=self._backend)
        try:
            return OpenSlide(slide, DeepZoom(slide, *self._tiling))
        except BaseException:
            slide.close()
            raise

    @staticmethod
    def _close_handle(handle: OpenSlide) -> None:
        handle.slide.close()

    def _probe(self, slide_id: str) -> ServedSlide:
        """Open a slide once to learn its geometry; keep it open while the pool has room."""
        source = self.catalog.slides[slide_id]
        served = ServedSlide(source)
        try:
            handle = self._open(slide_id)
        except (ExaslideError, OSError, ValueError) as exc:
            served.error = one_line(exc)
            logger.warning("%s: not served: %s", source.path, served.error)
            return served
        slide = handle.slide
        served.info = SlideInfo(tuple(slide.dimensions),
                                tuple(float(v) for v in slide.mpp) if slide.mpp else None,
                                slide.level_count, tuple(slide.level_downsamples))
        if not self.pool.adopt(slide_id, handle):
            self._close_handle(handle)
        return served

    def close(self) -> None:
        """Close every open slide."""
        self.pool.close_all()

    # ------------------------------------------------------------------------- slides
    def open_slide(self, slide_id: str) -> ServedSlide | None:
        """The served slide ``slide_id`` when it opened, else None."""
        served = self.slides.get(slide_id)
        return served if served is not None and served.error is None else None

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for slide_id, served in self.slides.items():
            entry: dict[str, Any] = {"id": slide_id, "name": served.source.name,
                                     "width": None, "height": None, "mpp": None,
                                     "levels": None, "dzi": f"/slides/{slide_id}.dzi",
                                     "error": served.error}
            if served.error is None:
                info = served.info
                width, height = info.dimensions
                entry.update(width=width, height=height, levels=info.level_count,
                             mpp=list(info.mpp) if info.mpp else None)
            out.append(entry)
        return out

    def tile(self, slide_id: str, level: int, col: int, row: int) -> bytes | None:
        """The JPEG of a Deep Zoom tile, from the cache or made; None for an unknown
        slide or tile."""
        data = self.tiles.get((slide_id, level, col, row))
        return data if data is not None else self.make_tile(slide_id, level, col, row)

    def make_tile(self, slide_id: str, level: int, col: int, row: int) -> bytes | None:
        """Make (and cache) a tile that is not in the cache."""
        if self.open_slide(slide_id) is None:
            return None
        with self.pool.use(slide_id) as handle:
            if not handle.deepzoom.has_tile(level, col, row):
                return None
            data = handle.deepzoom.tile_jpeg(level, col, row)
        self.tiles.put((slide_id, level, col, row), data)
        return data

    def tile_limiter(self) -> anyio.CapacityLimiter:
        """At most ``tile_threads`` tiles made at a time (created in the event loop on
        first use)."""
        if self._tile_limiter is None:
            self._tile_limiter = anyio.CapacityLimiter(self.tile_threads)
        return self._tile_limiter

    def dzi(self, slide_id: str) -> str | None:
        """The slide's ``.dzi`` document (from its geometry: no slide is opened), None
        for an id not served."""
        served = self.open_slide(slide_id)
        if served is None:
            return None
        tile_size, overlap, _quality = self._tiling
        return dzi_document(served.info.dimensions, tile_size, overlap)

    # ----------------------------------------------------------------------- overlays
    def overlay_sources(self, slide_id: str) -> list[tuple[str, OverlaySource]]:
        """``(overlay id, source)`` of a slide's overlays, ids ``<kind>-<n>``."""
        counts: dict[str, int] = {}
        out = []
        for source in self.catalog.overlays.get(slide_id, []):
            n = counts.get(source.kind, 0)
            counts[source.kind] = n + 1
            out.append((f"{source.kind}-{n}", source))
        return out

    def overlays(self, slide_id: str) -> list[dict[str, Any]]:
        served = self.open_slide(slide_id)
        out = []
        for oid, source in self.overlay_sources(slide_id):
            base = f"/api/slides/{slide_id}/overlays/{oid}"
            entry: dict[str, Any] = {"id": oid, "kind": source.kind, "name": source.name,
                                     "error": None}
            try:
                if source.kind == "heatmap":
                    heatmap = ov.read_heatmap_file(source.path)
                    entry.update(ov.heatmap_info(heatmap), url=f"{base}.png",
                                 legend_url=f"{base}/legend.png")
                elif source.kind == "mask":
                    entry["url"] = f"{base}.png"
                    if served is not None:
                        entry["bounds"] = self._overlay_bytes(slide_id, oid, source)[1]
                    entry["values"] = {"1": "normal", "2": "tumour"}
                else:
                    entry["url"] = f"{base}.geojson"
            except (ExaslideError, OSError, ValueError, KeyError) as exc:
                entry["error"] = one_line(exc)
            out.append(entry)
        return out

    def overlay_file(self, slide_id: str, oid: str, legend: bool,
                     ext: str) -> tuple[bytes, str] | None:
        source = dict(self.overlay_sources(slide_id)).get(oid)
        if source is None or self.open_slide(slide_id) is None:
            return None
        if ext == "png" and source.kind not in ("heatmap", "mask"):
            return None
        if ext == "geojson" and source.kind in ("heatmap", "mask"):
            return None
        if legend:
            if source.kind != "heatmap":
                return None
            info = ov.heatmap_info(ov.read_heatmap_file(source.path))
            return ov.colorbar_png(info["colormap"]), "image/png"
        data = self._overlay_bytes(slide_id, oid, source)[0]
        return data, "image/png" if ext == "png" else "application/geo+json"

    def _overlay_bytes(self, slide_id: str, oid: str, source: OverlaySource):
        key = (slide_id, oid)
        cached = self.overlay_cache.get(key)
        if cached is not None:
            return cached
        served = self.slides[slide_id]
        import json

        if source.kind == "heatmap":
            heatmap = ov.read_heatmap_file(source.path)
            value = (ov.heatmap_png(heatmap, ov.heatmap_info(heatmap)), None)
        elif source.kind == "mask":
            value = ov.mask_overlay(source.path, served.info.dimensions)
        elif source.kind == "annotations":
            value = (ov.annotations_geojson(source.path).encode(), None)
        elif source.kind == "patches":
            value = (json.dumps(ov.patches_geojson(source.path, source.extra.get("predictions"),
                                                   served.source.source_id)).encode(), None)
        else:
            value = (json.dumps(ov.froc_geojson(source.path, served.source.source_id))
                     .encode(), None)
        self.overlay_cache.put(key, value)
        return value

    # ---------------------------------------------------------------------- retrieval
    def index_for(self, slide_id: str) -> tuple[int, Any] | None:
        """``(n, index)``: the first discovered index that names the slide, else the
        first one; None without an index."""
        if not self.catalog.indexes:
            return None
        source_id = self.slides[slide_id].source.source_id
        chosen = 0
        for n in range(len(self.catalog.indexes)):
            if source_id in (self.load_index(n).info.get("slides") or {}):
                chosen = n
                break
        return chosen, self.load_index(chosen)

    def load_index(self, n: int):
        from exaslide.retrieval.index import load_index

        with self._index_lock:
            if n not in self._indexes:
                self._indexes[n] = load_index(self.catalog.indexes[n])
            return self._indexes[n]

    def search(self, slide_id: str, x: int, y: int, w: int, h: int, k: int) -> dict:
        import numpy as np

        from exaslide.retrieval.search import embed_region

        n, index = self.index_for(slide_id)
        served = self.slides[slide_id]
        with self._search_lock:  # one query model, one query at a time
            vector = embed_region(index, served.source.path, x, y, w, h)
            hits = index.search(np.asarray(vector)[None, :], k)[0]
        results = []
        for hit in hits:
            meta = hit.meta
            source_id = None if meta.get("slide_id") is None else str(meta["slide_id"])
            here = self.catalog.source_ids.get(source_id) if source_id else None
            results.append({"slide_id": source_id, "slide": here,
                            "x": meta.get("x"), "y": meta.get("y"),
                            "size": self._hit_size(index, meta, here),
                            "label": meta.get("label"), "score": float(hit.score),
                            "thumbnail": f"/api/hits/{n}/{hit.id}.jpeg"})
        return {"results": results}

    def _hit_size(self, index, meta: dict, here: str | None) -> float | None:
        """A hit's side in level-0 pixels of its slide."""
        patch = index.info.get("store", {}).get("patch") or {}
        size = meta.get("footprint") or None
        if size:
            return float(size)
        size = meta.get("size") or patch.get("size")
        if size is None:
            return None
        served = self.open_slide(here) if here else None
        level, mpp = meta.get("level"), patch.get("mpp")
        if served is not None:
            info = served.info
            if mpp is not None and level is None and info.mpp:
                return float(size) * mpp / info.mpp[0]
            level = int(level or 0)
            if level < info.level_count:
                return float(size) * info.level_downsamples[level]
        return float(size) * 2 ** int(level or 0)

    def hit_thumbnail(self, n: int, hit_id: int) -> bytes | None:
        from exaslide.retrieval.gallery import hit_image
        from exaslide.retrieval.index import Hit

        if not 0 <= n < len(self.catalog.indexes):
            return None
        index = self.load_index(n)
        if not 0 <= hit_id < index.table.num_rows:
            return None
        meta = index.table.slice(hit_id, 1).to_pylist()[0]
        pixels = hit_image(index, Hit(0.0, hit_id, meta))
        if pixels is None:
            return None
        import io

        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=85)
        return out.getvalue()


# ----------------------------------------------------------------------------- routes
def _not_found(message: str = "not found") -> JSONResponse:
    return JSONResponse({"error": message}, status_code=404)


def _asset_problem() -> str | None:
    missing = [name for name in REQUIRED_ASSETS if not (STATIC_DIR / name).is_file()]
    return ", ".join(f"static/{name}" for name in missing) or None


def _index_page(request: Request) -> Response:
    missing = _asset_problem()
    if missing:
        return HTMLResponse(MISSING_ASSETS_PAGE.format(missing=missing), status_code=503)
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def _static(request: Request) -> Response:
    relative = request.path_params["path"]
    if "\x00" in relative or relative.startswith(("/", "\\")) or "\\" in relative:
        return _not_found()
    root = os.path.realpath(STATIC_DIR)
    full = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, full]) != root or not os.path.isfile(full):
        return _not_found()
    return FileResponse(full)


def _viewer(request: Request) -> Viewer:
    return request.app.state.viewer


def _api_slides(request: Request) -> Response:
    return JSONResponse(_viewer(request).listing())


async def _slides(request: Request) -> Response:
    viewer = _viewer(request)
    rest = request.path_params["rest"]
    match = _DZI.match(rest)
    if match:
        document = viewer.dzi(match["id"])
        if document is None:
            return _not_found("unknown slide")
        return Response(document, media_type="application/xml")
    match = _TILE.match(rest)
    if not match:
        return _not_found()
    where = (match["id"], int(match["level"]), int(match["col"]), int(match["row"]))
    data = viewer.tiles.get(where)  # a cached tile is answered without a thread
    if data is None:
        try:
            data = await anyio.to_thread.run_sync(viewer.make_tile, *where,
                                                  limiter=viewer.tile_limiter())
        except (ExaslideError, OSError) as exc:
            return JSONResponse({"error": one_line(exc)}, status_code=500)
    if data is None:
        return _not_found("unknown slide or tile")
    return Response(data, media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


def _api_overlays(request: Request) -> Response:
    viewer = _viewer(request)
    slide_id = request.path_params["slide_id"]
    if viewer.open_slide(slide_id) is None:
        return _not_found("unknown slide")
    return JSONResponse(viewer.overlays(slide_id))


def _api_overlay_file(request: Request) -> Response:
    viewer = _viewer(request)
    match = _OVERLAY.match(request.path_params["name"])
    if not match:
        return _not_found()
    try:
        found = viewer.overlay_file(request.path_params["slide_id"], match["oid"],
                                    bool(match["legend"]), match["ext"])
    except (ExaslideError, OSError, ValueError, KeyError) as exc:
        return JSONResponse({"error": one_line(exc)}, status_code=500)
    if found is None:
        return _not_found("unknown overlay")
    data, media_type = found
    return Response(data, media_type=media_type)


def _int_params(request: Request, names, defaults) -> dict[str, int] | None:
    out = {}
    for name in names:
        value = request.query_params.get(name, defaults.get(name))
        try:
            out[name] = int(float(value))
        except (TypeError, ValueError, OverflowError):
            return None
    return out


def _api_search(request: Request) -> Response:
    viewer = _viewer(request)
    slide_id = request.path_params["slide_id"]
    if viewer.open_slide(slide_id) is None:
        return _not_found("unknown slide")
    if not viewer.catalog.indexes:
        return _not_found("no retrieval index: give exaslide view a folder with one "
                          "(index.json + index.faiss)")
    params = _int_params(request, ("x", "y", "w", "h", "k"), {"k": 8})
    if params is None or params["w"] < 1 or params["h"] < 1 or not 1 <= params["k"] <= MAX_K:
        return JSONResponse({"error": f"give integer x, y, w >= 1, h >= 1 (level-0 pixels) "
                                      f"and 1 <= k <= {MAX_K}"}, status_code=400)
    try:
        result = viewer.search(slide_id, params["x"], params["y"], params["w"], params["h"],
                               params["k"])
    except ExaslideError as exc:
        return JSONResponse({"error": one_line(exc)}, status_code=400)
    except ImportError as exc:
        return _missing_extra_response(exc)
    return JSONResponse(result)


def _missing_extra_response(exc: ImportError) -> Response:
    """501 naming the extra to install (a viewer installed without exaslide[retrieval]);
    any other import error is re-raised."""
    missing = missing_extra(exc)
    if missing is None:
        raise exc
    return JSONResponse({"error": one_line(missing)}, status_code=501)


def _api_hit(request: Request) -> Response:
    match = _HIT.match(request.path_params["name"])
    if not match:
        return _not_found()
    try:
        data = _viewer(request).hit_thumbnail(int(match["n"]), int(match["hit"]))
    except ImportError as exc:
        return _missing_extra_response(exc)
    if data is None:
        return _not_found("unknown hit")
    return Response(data, media_type="image/jpeg")


class TokenMiddleware:
    """Refuses (401) every HTTP request without ``?token=T`` or ``Authorization: Bearer
    T``."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self._allowed(scope):
            response = JSONResponse({"error": "a token is required (?token= or "
                                              "Authorization: Bearer)"}, status_code=401)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope) -> bool:
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        candidates = [g.encode() for g in given]
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                candidates.append(value[7:].strip())
        return any(hmac.compare_digest(c, self.token) for c in candidates)


def create_app(paths, *, token: str | None = None, tile_size: int = 254, overlap: int = 1,
               quality: int = 75, cache_bytes: int = DEFAULT_CACHE_BYTES,
               backend: str | None = None, max_open: int = DEFAULT_SHARED_MAX_OPEN,
               tile_threads: int | None = None) -> Starlette:
    """The viewer's Starlette app for slides and outputs found under ``paths``.

    Args:
        paths: slides (files or URLs), manifests or exaslide output folders (see
            :mod:`exaslide.viewer.discovery`).
        token: when given, every request must carry it (``?token=`` or a Bearer header).
        tile_size, overlap: the Deep Zoom tiling (254 and 1, as OpenSlide's).
        quality: JPEG quality of the tiles.
        cache_bytes: bound of the in-memory tile cache (encoded JPEG bytes).
        backend: force a slide backend (openslide, tifffile, image).
        max_open: most slides kept open at once (the least recently used idle one is
            closed first and reopened when asked for).
        tile_threads: most tiles made at once (default: one per usable CPU, at least
            16 when a slide is remote).

    Raises:
        ViewerError: a path that is not a slide, manifest or output folder.
    """
    if tile_size < 1 or overlap < 0:
        raise ValueError(f"tile_size must be >= 1 and overlap >= 0, got {tile_size}, "
                         f"{overlap}")
    viewer = Viewer(discover(paths), tile_size=tile_size, overlap=overlap, quality=quality,
                    cache_bytes=cache_bytes, backend=backend, max_open=max_open,
                    tile_threads=tile_threads)
    routes = [
        Route("/", _index_page),
        Route("/static/{path:path}", _static),
        Route("/api/slides", _api_slides),
        Route("/api/slides/{slide_id}/overlays", _api_overlays),
        Route("/api/slides/{slide_id}/overlays/{name:path}", _api_overlay_file),
        Route("/api/slides/{slide_id}/search", _api_search),
        Route("/api/hits/{name:path}", _api_hit),
        Route("/slides/{rest:path}", _slides),
    ]
    app = Starlette(routes=routes)
    app.state.viewer = viewer
    if token:
        app.add_middleware(TokenMiddleware, token=token)
    return app
