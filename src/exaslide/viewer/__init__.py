"""``exaslide view``: a web viewer for slides and what exaslide computed on them.

>>> from exaslide.viewer import serve
>>> serve(["demo_out"], port=8000)          # doctest: +SKIP

:func:`create_app` builds the Starlette application (Deep Zoom tiles, overlays, retrieval;
see :mod:`exaslide.viewer.app` for the HTTP API), :func:`serve` runs it on uvicorn until
interrupted, :func:`serve_in_thread` in a background thread.
"""

from exaslide.viewer.app import create_app
from exaslide.viewer.discovery import ViewerError, discover
from exaslide.viewer.server import serve, serve_in_thread

__all__ = ["ViewerError", "create_app", "discover", "serve", "serve_in_thread"]
