"""``exaslide env``: what this environment holds, for bug reports and cluster admins."""

from __future__ import annotations

import json

import click


@click.command("env")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON (stable keys, documented in docs/install.md).")
@click.option("--scheduler", metavar="ADDR",
              help="A Dask scheduler (tcp://host:8786): list its workers and their exaslide "
                   "versions, flagging those that differ from this one.")
def command(as_json: bool, scheduler: str | None) -> None:
    """Versions (exaslide, Python, OpenSlide, codecs that work, extras, torch, CUDA,
    cuDNN, NCCL, GPUs, Dask), the cache folder and free disk, CPUs and memory.

    Paste its output into a bug report (see the repository's issue template). Exit code
    1 when a --scheduler worker runs another exaslide version."""
    from exaslide.env import collect, format_text

    env = collect(scheduler)
    click.echo(json.dumps(env, indent=2) if as_json else format_text(env))
    if env["cluster"] is not None and env["cluster"]["mismatches"]:
        raise click.exceptions.Exit(1)
