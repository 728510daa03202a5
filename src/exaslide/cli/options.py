"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

from exaslide.slides.open import BACKEND_NAMES

backend_option = click.option(
    "--backend", type=click.Choice(BACKEND_NAMES), default=None,
    help="Force a slide backend (default: the first that opens the file).",
)


def progress_bar(total: int, desc: str):
    """A tqdm progress bar on stderr (hidden when stderr is not a terminal)."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tile" if "tile" in desc else "it",
                disable=not sys.stderr.isatty(), file=sys.stderr, leave=False)


def field_option(cls, name: str, *decls: str, help: str, choices=None, **kwargs):
    """A click option whose default (and type, or ``choices``) come from the field
    ``name`` of the options dataclass ``cls``: the CLI and the library share one
    default, shown in ``--help``."""
    import dataclasses

    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    default = field.default if field.default is not dataclasses.MISSING else \
        field.default_factory()
    if choices is not None:
        kwargs["type"] = click.Choice(list(choices))
    elif "type" not in kwargs and default is not None:
        kwargs["type"] = type(default)
    kwargs.setdefault("show_default", default is not None)
    return click.option(*decls, default=default, help=help, **kwargs)


#: ``--decode`` settings (:data:`exaslide.infer.decoded.DECODE_MODES`, kept here so that
#: ``--help`` does not import torch).
DECODE_CHOICES = ("auto", "gpu", "cpu", "off")


def decode_option(where: str, same: str, auto: str):
    """``--decode``: where stored JPEG tiles are decoded (``where``: the processes that
    read; ``same``: what ``cpu`` gives the same as ``off``; ``auto``: when it picks gpu).
    Default ``off`` until bench/device.sh has measured nvJPEG on a GPU."""
    return click.option(
        "--decode", type=click.Choice(DECODE_CHOICES), default="off", show_default=True,
        help=f"Where stored JPEG tiles are decoded: off (in the {where}), cpu (they ship "
             "compressed tiles, libjpeg-turbo threads decode them here: the same "
             f"{same} as off), gpu (nvJPEG on the CUDA device); auto: gpu on CUDA {auto}, "
             "else off. Use auto on a GPU node; off is the default until the nvJPEG path "
             "is measured on a GPU (docs/decode.md). A rerun with another setting redoes "
             "finished slides.")


def workers_option(default_help: str):
    """``--workers N`` (Dask ``LocalCluster`` processes) with ``default_help`` saying what
    happens without it."""
    return click.option("--workers", type=click.IntRange(min=1), default=None,
                        help=f"Dask LocalCluster worker processes [{default_help}].")


scheduler_option = click.option(
    "--scheduler", default=None,
    help="Address of an existing Dask scheduler (e.g. tcp://host:8786), or 'inline' to "
         "run in this process.")

overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Redo slides already finished.")


def executor_choice(workers: int | None, scheduler: str | None,
                    default: str | None) -> tuple[int | None, str | None]:
    """``(workers, scheduler)`` for :func:`exaslide.jobs.run_stage`: ``--workers`` and
    ``--scheduler`` are exclusive; with neither, ``default`` (``"inline"`` or ``None``,
    a LocalCluster of one worker per core)."""
    if workers is not None and scheduler is not None:
        raise click.UsageError("give --workers or --scheduler, not both")
    if scheduler is not None:
        if scheduler != "inline":
            from exaslide.jobs.executors import check_scheduler_address

            check_scheduler_address(scheduler)
        return None, scheduler
    if workers is not None:
        return workers, "inline" if workers == 1 else None
    return None, default


class JobProgress:
    """One tqdm bar over a batch job: slides, or finer units (patches) when the stage
    announces them with ``("total", n)`` events; finished slides as postfix."""

    def __init__(self, slides: int, unit: str = "slides"):
        self.slides, self.finished, self.fine = slides, 0, False
        self.bar = progress_bar(slides, unit)

    def event(self, kind: str, value) -> None:
        if kind == "total":
            if not self.fine:
                self.fine, self.bar.total = True, 0
            self.bar.total += value
            self.bar.refresh()
        elif kind == "progress" and self.fine:
            self.bar.update(value)
        elif kind == "slide":
            self.finished += 1
            if not self.fine:
                self.bar.update(1)
            self.bar.set_postfix_str(f"slides {self.finished}/{self.slides}")

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def report_outcomes(outcomes, status: str, detail: str = "", prefix: str = "") -> None:
    """Print each failed slide and each warning as one line on stderr, then ``N slides: a
    done, b already done, c failed[; detail]; status in STATUS``; exit 1 when a slide
    failed (the others are done)."""
    failed = [o for o in outcomes if o.status == "failed"]
    done = sum(o.status == "done" for o in outcomes)
    for o in outcomes:
        for warning in getattr(o, "warnings", ()):
            click.echo(f"exaslide: warning: {o.slide_id}: {warning}", err=True)
    for o in failed:
        click.echo(f"exaslide: error: {o.slide_id}: {o.error}", err=True)
    click.echo(f"{prefix}{len(outcomes)} slides: {done} done, "
               f"{len(outcomes) - done - len(failed)} already done, {len(failed)} failed"
               f"{'; ' + detail if detail else ''}; status in {status}")
    if failed:
        raise SystemExit(1)


def check_config(config, dump) -> None:
    """``--check``: resolve the config's device (one-line error if unusable) and print the
    resolved YAML (``dump(config)``); nothing is written."""
    from exaslide.runtime import resolve_device

    resolve_device(config.device)
    click.echo(dump(config), nl=False)


def out_location(out_dir, *parts: str) -> str:
    """``out_dir`` joined with ``parts`` as shown to the user: a local path, or the URL of
    an object-store folder (without secrets)."""
    from exaslide.storage.urls import is_remote

    if is_remote(str(out_dir)):
        from exaslide.storage.errors import redact_url

        return "/".join([redact_url(str(out_dir)).rstrip("/"), *parts])
    return str(Path(out_dir, *parts))


def run_locked(out, run):
    """``run()`` holding ``out``'s output lock; the ranks of a torchrun job share it."""
    from exaslide.jobs import OutputLock
    from exaslide.runtime import distributed_context

    rank, world = distributed_context()
    with OutputLock(out, None if world == 1 else rank):
        return run()
