"""A small threaded HTTP server for tests: serves a folder on 127.0.0.1 with HEAD, single
byte ranges (``Range: bytes=a-b``, ``a-``, ``-n`` -> 206 + Content-Range, 416 when out of
range), Content-Length, ETag and Last-Modified (``If-Match`` -> 412 when the ETag differs),
and counts the body bytes sent per file.

Faults it can simulate:

- a file that changes: write new content with :meth:`RangeServer.replace` (new ETag and
  Last-Modified, as a real server would report);
- a server that truncates bodies: ``server.truncate[name] = n`` keeps advertising the full
  size (HEAD) but serves only the first ``n`` bytes of the file (ranges past ``n`` get
  416, ranges across it come back short);
- a connection cut mid-body: ``server.abort[name] = n`` announces the full Content-Length
  of every response but closes the connection after ``n`` body bytes;
- an authenticated server: ``RangeServer(folder, require_header=("Authorization",
  "Bearer x"))`` answers 401 to every request without that header and value;
- a server that reports no size: ``server.no_length.add(name)`` sends no Content-Length
  (HEAD and full GET; the body of a GET ends when the connection closes) and ignores
  ``Range``;
- a slow server: ``server.throttle[name] = bytes_per_second`` paces the body.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeServer(ThreadingHTTPServer):
    """``RangeServer(folder)``; ``url(name)``; counters ``bytes_sent`` and ``requests``."""

    daemon_threads = True

    def __init__(self, folder: str | os.PathLike,
                 require_header: tuple[str, str] | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.folder = Path(folder)
        self.require_header = require_header
        self.no_length: set[str] = set()
        self.throttle: dict[str, float] = {}
        self.bytes_sent: Counter[str] = Counter()
        self.requests: list[tuple[str, str, str]] = []  # (method, name, range header)
        self.truncate: dict[str, int] = {}
        self.abort: dict[str, int] = {}
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> RangeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def publish(self, source: str | os.PathLike, name: str | None = None) -> str:
        """Serve a file (hard-linked, or copied across file systems); return its URL."""
        name = name or os.path.basename(source)
        target = self.folder / name
        try:
            os.link(source, target)
        except OSError:
            target.write_bytes(Path(source).read_bytes())
        return self.url(name)

    def sent(self, name: str | None = None) -> int:
        """Body bytes sent so far (for one file, or in all)."""
        with self.lock:
            return self.bytes_sent[name] if name else sum(self.bytes_sent.values())

    def replace(self, name: str, data: bytes) -> None:
        """Give a file new content (and a later modification time)."""
        path = self.folder / name
        old = path.stat().st_mtime if path.exists() else 0
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(data)
        later = max(old + 2, tmp.stat().st_mtime)
        os.utime(tmp, (later, later))
        os.replace(tmp, path)  # a new file: a hard link to the old content stays intact


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RangeServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        name = self.path.lstrip("/").split("?")[0]
        path = self.server.folder / name
        header = self.headers.get("Range", "")
        with self.server.lock:
            self.server.requests.append((self.command, name, header))
        required = self.server.require_header
        if required and self.headers.get(required[0]) != required[1]:
            self._empty(401)
            return
        if not path.is_file():
            self._empty(404)
            return
        stat = path.stat()
        size = stat.st_size
        etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        if body and self.headers.get("If-Match", etag) not in (etag, "*"):
            self._empty(412)
            return
        if name in self.server.no_length:
            self._serve_without_length(name, path, body)
            return
        available = min(size, self.server.truncate.get(name, size))
        start, end, status = 0, size - 1, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
        if body and match and (match.group(1) or match.group(2)):
            a, b = match.groups()
            if a:
                start, end = int(a), min(int(b) if b else size - 1, size - 1)
            else:
                start, end = max(0, size - int(b)), size - 1
            if start > end or start >= available:
                self._empty(416, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        end = min(end, available - 1) if body else end
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", formatdate(stat.st_mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1 if body else size))
        self.end_headers()
        if not body:
            return
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start + 1)
        if name in self.server.abort:
            data = data[: self.server.abort[name]]
            self.close_connection = True
        self._send(name, data)

    def _send(self, name: str, data: bytes) -> None:
        rate = self.server.throttle.get(name)
        step = 64 << 10 if rate else max(1, len(data))
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            try:
                self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):  # the client hung up
                self.close_connection = True
                return
            with self.server.lock:
                self.server.bytes_sent[name] += len(chunk)
            if rate:
                time.sleep(len(chunk) / rate)

    def _serve_without_length(self, name: str, path: Path, body: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if body:
            self._send(name, path.read_bytes())

    def _empty(self, status: int, headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
