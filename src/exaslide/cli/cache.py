"""``exaslide cache info|clear``: show and empty the disk cache of remote files."""

from __future__ import annotations

import json
import time

import click


@click.group("cache")
@click.option("--dir", "dir", default=None,
              help="Cache folder: an exaslide cache, or an empty or new folder (default: "
                   "$EXASLIDE_CACHE_DIR, else ~/.cache/exaslide).")
@click.option("--size", "size", default=None,
              help="Size limit, e.g. 50GB or 500MB (default: $EXASLIDE_CACHE_SIZE, else 50GB).")
@click.pass_context
def command(ctx: click.Context, dir: str | None, size: str | None) -> None:
    """Show or clear the disk cache of remote slides, annotations and manifests.

    Remote files (http(s)://, s3://, gs://... URLs) are cached block by block, or whole
    for readers that need a local path; see docs/storage.md. The cache only lists and
    deletes its own entries, and refuses a folder that holds other files."""
    from exaslide.storage import DiskCache

    ctx.obj = DiskCache(dir, size)


@command.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_obj
def info(cache, as_json: bool) -> None:
    """Location, size limit, total size and one line per cached file."""
    from exaslide.storage import format_size

    entries = cache.entries()
    total = sum(e.cached_bytes for e in entries)
    if as_json:
        click.echo(json.dumps({
            "location": str(cache.root), "limit_bytes": cache.max_bytes, "total_bytes": total,
            "block_size": cache.block_size, "files": len(entries),
            "entries": [e.to_dict() for e in entries]}, indent=2))
        return
    click.echo(f"{cache.root}")
    click.echo(f"  limit {format_size(cache.max_bytes)}, used {format_size(total)} "
               f"in {len(entries)} file{'s' if len(entries) != 1 else ''}")
    for e in entries:
        of = format_size(e.size) if e.size is not None else "?"
        kind = "whole file" if e.whole_file else "blocks"
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        click.echo(f"  {format_size(e.cached_bytes):>9} / {of:<9} {kind:<10} {used}  {e.url}")


@command.command("clear")
@click.argument("pattern", required=False)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def clear(cache, pattern: str | None, yes: bool) -> None:
    """Delete every cache entry, or those whose URL matches the glob PATTERN (e.g.
    's3://bucket/*'); files in the folder that are not the cache's stay."""
    from fnmatch import fnmatch

    from exaslide.storage import format_size

    if not yes:
        matching = [e for e in cache.entries() if pattern is None or fnmatch(e.url, pattern)]
        size = format_size(sum(e.cached_bytes for e in matching))
        click.confirm(f"Delete {len(matching)} cached file(s) ({size}) from {cache.root}?",
                      abort=True)
    removed = cache.clear(pattern)
    size = format_size(sum(e.cached_bytes for e in removed))
    click.echo(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} ({size}) "
               f"from {cache.root}")
