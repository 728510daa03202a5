"""Running the viewer: a socket bound before the server starts (so a port in use is a
one-line error and ``port=0`` picks a free one), uvicorn serving the app on it, and a
background-thread variant for tests and notebooks."""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from exaslide.errors import ViewerError

DEFAULT_HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, token: str | None) -> None:
    """Refuse a host other than loopback without a token.

    Raises:
        ViewerError: ``host`` is reachable from other machines and no token was given.
    """
    if not is_loopback(host) and not token:
        raise ViewerError(f"--host {host} makes the viewer reachable from other machines: "
                          "give --token T too (every request must then carry it)")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    Raises:
        ViewerError: the port is in use or the address cannot be bound.
    """
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ViewerError(f"--host {host}: not an address of this machine ({exc})") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ViewerError(f"port {port} on {host} is in use: choose another --port "
                              "(0 picks a free one)") from exc
        raise ViewerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://HOST:PORT/`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _server(app, sock: socket.socket):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def serve(paths, *, host: str = DEFAULT_HOST, port: int = 0, token: str | None = None,
          on_ready: Callable[[str], None] | None = None, **app_options) -> None:
    """Serve the viewer for ``paths`` until interrupted (Ctrl-C).

    Args:
        paths: slides, manifests or output folders (see :func:`create_app`).
        host: address to bind (loopback by default; another one needs ``token``).
        port: TCP port (0: a free one).
        token: required on every request when given.
        on_ready: called with the URL once the socket is bound and the app built.
        app_options: passed to :func:`~exaslide.viewer.app.create_app`.

    Raises:
        ViewerError: a non-loopback host without token, a port in use, a bad path.
    """
    from exaslide.viewer.app import create_app

    check_host(host, token)
    sock = bind_socket(host, port)
    try:
        app = create_app(paths, token=token, **app_options)
    except BaseException:
        sock.close()
        raise
    try:
        if on_ready is not None:
            on_ready(url_of(sock))
        _server(app, sock).run(sockets=[sock])
    finally:
        sock.close()
        app.state.viewer.close()


@dataclass
class RunningServer:
    """A viewer served from a background thread: ``url``, ``app``, and :meth:`stop`."""

    url: str
    app: object
    server: object
    thread: threading.Thread
    sock: socket.socket

    def stop(self) -> None:
        """Stop serving, wait for the thread and close the slides."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        self.app.state.viewer.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_thread(paths_or_app, *, host: str = DEFAULT_HOST, port: int = 0,
                    token: str | None = None, timeout: float = 30.0,
                    **app_options) -> RunningServer:
    """Start the viewer (an app from :func:`create_app`, or the paths to build one) in a
    daemon thread and return once it accepts connections.

    Raises:
        ViewerError: as :func:`serve`, or the server did not start within ``timeout``.
    """
    from starlette.applications import Starlette

    from exaslide.viewer.app import create_app

    check_host(host, token)
    app = paths_or_app if isinstance(paths_or_app, Starlette) else \
        create_app(paths_or_app, token=token, **app_options)
    sock = bind_socket(host, port)
    server = _server(app, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="exaslide-viewer")
    thread.start()
    waited = threading.Event()
    while not server.started and thread.is_alive() and not waited.wait(0.02):
        timeout -= 0.02
        if timeout <= 0:
            break
    if not server.started:
        server.should_exit = True
        sock.close()
        raise ViewerError("the viewer did not start")
    return RunningServer(url_of(sock), app, server, thread, sock)
