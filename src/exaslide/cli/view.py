"""``exaslide view``: serve slides and exaslide outputs to a web browser."""

from __future__ import annotations

import click


@click.command("view")
@click.argument("paths", nargs=-1, required=True, metavar="PATHS...")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="TCP port (0: a free one).")
@click.option("--token", help="Secret every request must carry (?token=T or "
                              "'Authorization: Bearer T'); required off loopback.")
@click.option("--tile-size", type=click.IntRange(1, 4096), default=254, show_default=True,
              help="Deep Zoom tile size.")
@click.option("--overlap", type=click.IntRange(0, 64), default=1, show_default=True,
              help="Deep Zoom tile overlap.")
@click.option("--cache-mb", type=click.IntRange(0, None), default=256, show_default=True,
              help="In-memory cache of encoded tiles, in MiB.")
@click.option("--max-open", type=click.IntRange(1, None), default=64, show_default=True,
              help="Most slides kept open at once (idle ones are closed, least recently "
                   "used first, and reopened when asked for).")
@click.option("--tile-threads", type=click.IntRange(1, 256),
              help="Most tiles made at once (default: one per usable CPU, at least 16 "
                   "when a slide is remote).")
@click.option("--backend", type=click.Choice(["openslide", "tifffile", "image"]),
              help="Force a slide backend.")
def command(paths, host, port, token, tile_size, overlap, cache_mb, max_open,
            tile_threads, backend) -> None:
    """Serve PATHS (slides, URLs, manifests or exaslide output folders) in a web viewer.

    Prints the URL and serves until interrupted (Ctrl-C).
    """
    from exaslide.viewer import serve

    def ready(url: str) -> None:
        shown = f"{url}?token={token}" if token else url
        click.echo(f"exaslide viewer: {shown}  (Ctrl-C to stop)")

    serve(list(paths), host=host, port=port, token=token, on_ready=ready,
          tile_size=tile_size, overlap=overlap, cache_bytes=cache_mb * 2**20,
          max_open=max_open, tile_threads=tile_threads, backend=backend)
