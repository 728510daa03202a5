"""Entry point: the ``exaslide`` command group, logging set-up and error handling.

Every error exaslide raises on purpose (and file-system errors) is printed as one line,
``exaslide: error: <file>: <problem>``, with exit code 2. Anything else is a bug: one line
``exaslide: internal error: ...`` and exit code 1. ``--debug`` also prints the traceback
(same exit codes). Library warnings (tifffile, Pillow) are shown only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
import traceback
import warnings

import click

from exaslide import __version__
from exaslide.errors import ExaslideError

EXPECTED_ERRORS = (ExaslideError, OSError)


class ExaslideGroup(click.Group):
    """A click group that turns expected errors into one-line messages."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as exc:
            if ctx.meta.get("exaslide.debug"):
                traceback.print_exc()
                ctx.exit(2)
            message = str(exc)
            if isinstance(exc, OSError) and exc.filename:
                message = f"{exc.filename}: {exc.strerror}"
            click.echo(f"exaslide: error: {message}", err=True)
            ctx.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if ctx.meta.get("exaslide.debug"):
                raise
            click.echo(f"exaslide: internal error: {type(exc).__name__}: {exc} (run with "
                       "--debug for the traceback and please report it)", err=True)
            ctx.exit(1)


@click.group(cls=ExaslideGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="exaslide")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Show informational logs.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="YAML file of option defaults, one section per command (e.g. "
                   "'extract: {patch_size: 224, mpp: 0.5}'); command-line options win.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool, config_file: str | None) -> None:
    """exaslide: whole-slide images to tumour masks, patches and models."""
    ctx.meta["exaslide.debug"] = debug
    if config_file:
        ctx.default_map = load_config(config_file, ctx.command)
        apply_cache_config(ctx.default_map.get("cache", {}))
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if not debug:  # their complaints about damaged files become exaslide's own errors
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", module="PIL")


def apply_cache_config(section: dict) -> None:
    """A config file's ``cache: {dir, size}`` applies to every command (and to the Dask
    workers they start): it sets ``EXASLIDE_CACHE_DIR`` / ``EXASLIDE_CACHE_SIZE`` for this
    process, over values inherited from the environment."""
    import os

    for key, variable in (("dir", "EXASLIDE_CACHE_DIR"), ("size", "EXASLIDE_CACHE_SIZE")):
        if section.get(key) is not None:
            os.environ[variable] = str(section[key])


def load_config(path: str, group: click.Group) -> dict:
    """Read a YAML config: a mapping of command names to option defaults (keys are the
    option names with ``_`` or ``-``). Unknown commands or options are usage errors."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{path}: not valid YAML: {exc}",
                                 param_hint="--config") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected a mapping of command names",
                                 param_hint="--config")
    resolved = {}
    for name, options in data.items():
        command = group.commands.get(name)
        if command is None or not isinstance(options, dict):
            raise click.BadParameter(f"{path}: {name!r} is not a command with options "
                                     f"(commands: {', '.join(sorted(group.commands))})",
                                     param_hint="--config")
        known = {p.name for p in command.params}
        resolved[name] = {}
        for key, value in options.items():
            param = str(key).replace("-", "_")
            if param not in known:
                raise click.BadParameter(f"{path}: {name} has no option {key!r}",
                                         param_hint="--config")
            resolved[name][param] = value
    return resolved


def _register() -> None:
    from exaslide.cli import (
        balance,
        cache,
        demo,
        embed,
        evaluate,
        extract,
        figures,
        infer,
        info,
        mask,
        search,
        synth,
        train,
    )
    from exaslide.cli import index as index_cli

    for command in (info.command, mask.command, extract.command, balance.command,
                    synth.command, demo.command, cache.command, train.command,
                    evaluate.command, infer.command, embed.command, embed.slides_command,
                    index_cli.command, search.command, search.evaluate_command,
                    figures.command):
        cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="exaslide")
